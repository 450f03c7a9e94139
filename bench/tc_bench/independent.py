"""Section 1b, the independent generator: wrk (one thread, 32 connections, 6 s) and, beside it, the
project's loadgen (closed loop, the same connections and time) against nginx as a plain proxy (a
worker per core) and token-console — with a plain key and with a key that has a token budget and an
RPM limit — all in front of the same upstream, an nginx mock with one worker; the mock alone is the
floor. Not pinned: every process shares every core, as in issue 14's measurement. Rounds alternate
the order of the targets; the ratios to nginx are taken round by round, so both sides of each
ratio come from the same minute of the same machine."""

import resource
import time
import urllib.request
from pathlib import Path

from . import wrk
from .common import BENCH, log, median
from .loadgen import loadgen
from .lost import run_records, store_counts
from .nginx import start_nginx, start_nginx_mock
from .procs import cpu_busy_since, cpu_ticks, settle
from .systems import create_key, gateway_config, key_limits, start_tc

CONNECTIONS = 32
DURATION_S = 6
LIMITED = "tc-budget-rpm"


def mock_answer(mock, key):
    """The mock upstream's answer to the bench request: what the nginx mock will answer with."""
    req = urllib.request.Request(f"{mock.url}/v1/chat/completions", data=(BENCH / "request.json").read_bytes(),
                                 method="POST", headers={"authorization": f"Bearer {key}",
                                                         "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def independent(ctx, answer):
    """Runs the section; returns its results (runs, per-target summary, the nginx baseline)."""
    rounds = 1 if ctx.quick else 3
    procs = []
    try:
        nmock = start_nginx_mock(ctx, answer)
        procs.append(nmock)
        proxy = start_nginx(ctx, nmock, name="nginx-proxy", workers="auto", cpus=None)
        procs.append(proxy)
        tc = start_tc(ctx, "tc-independent", gateway_config(ctx, nmock, Path(ctx.work) / "independent.db"),
                      cpus=None)
        procs.append(tc)
        plain = create_key(tc, "bench-plain")
        limited = create_key(tc, "bench-budget-rpm", limited=True)
        targets = {
            "direct": {"url": nmock.url, "proc": nmock, "headers": []},
            "nginx": {"url": proxy.url, "proc": proxy, "headers": ["Authorization: Bearer sk-client"]},
            "token-console": {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {plain}"], "tc": tc},
            LIMITED: {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {limited}"], "tc": tc},
        }
        rss_idle = tc.rss_kb()
        log("  warm-up: 1 s of wrk per target")
        for t in targets.values():
            wrk.run(ctx.work, t["url"] + "/v1/chat/completions", t["headers"], CONNECTIONS, 1)
        runs = []
        for rnd in range(1, rounds + 1):
            order = list(targets) if rnd % 2 else list(reversed(targets))
            for gen in ("wrk", "loadgen"):
                for name in order:
                    runs.append(one_run(ctx, gen, name, targets, nmock, rnd))
        rss_after = tc.rss_kb()
        hwm = tc.hwm_kb()
    finally:
        for p in reversed(procs):
            p.stop()
    return {
        "generators": {"wrk": wrk.version(), "loadgen": "tools/loadgen (this repository), closed loop"},
        "connections": CONNECTIONS, "duration_s": DURATION_S, "wrk_threads": 1, "rounds": rounds,
        "placement": "not pinned: the generator, nginx (proxy: a worker per core; mock: 1 worker) and "
                     "token-console share every core",
        "upstream": f"nginx mock (1 worker) answering {len(answer)} B of JSON with usage",
        "limited_key": key_limits(),
        "runs": runs, "summary": summarise(runs, targets),
        "token_console_rss_kb": {"idle": rss_idle, "after_runs": rss_after, "hwm": hwm},
        "nothing_lost_ok": all(r["records"]["ok"] for r in runs if "records" in r),
    }


def one_run(ctx, gen, name, targets, nmock, rnd):
    t = targets[name]
    procs = list({id(x["proc"]): x["proc"] for x in targets.values()}.values())
    for other in procs:
        settle(other)
    tc = t.get("tc")
    before = store_counts(tc) if tc else None
    served0 = nmock.served()
    cpu0 = t["proc"].cpu()
    ours0 = sum(p.cpu() for p in procs)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0 = cpu_ticks()
    t0 = time.monotonic()
    url = t["url"] + "/v1/chat/completions"
    if gen == "wrk":
        r = wrk.run(ctx.work, url, t["headers"], CONNECTIONS, DURATION_S)
        sent = None
    else:
        args = ["rate", "--url", url, "--body-file", BENCH / "request.json", "--rate", 0,
                "--duration", DURATION_S, "--warmup", 0, "--connections", CONNECTIONS,
                "--timeout", 10, "--drain", 10]
        for h in t["headers"]:
            args += ["--header", h]
        lg = loadgen(args, None)
        sent = lg["all"]["sent"]
        r = {"generator": "loadgen", "connections": CONNECTIONS, "duration_s": DURATION_S,
             "answered": lg["all"]["ok"] + sum(lg["all"]["status_errors"].values()), "ok": lg["all"]["ok"],
             "sent": sent, "achieved_rate": lg["achieved_rate"], "errors": lg["all"]["errors"],
             "errors_by_kind": {k: lg["all"][k] for k in ("io_errors", "timeouts", "unsent")}
             | {"status": lg["all"]["status_errors"]},
             "latency_ms": lg["latency_ms"]}
    wall = time.monotonic() - t0
    machine = cpu_busy_since(ticks0)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu = t["proc"].cpu() - cpu0
    forwarded = nmock.served() - served0 - 1  # less the first of the two status reads
    ours = sum(p.cpu() for p in procs) - ours0 + gen_cpu
    run = dict(r, target=name, round=rnd, forwarded_upstream=forwarded if name != "direct" else None,
               error_free_rps=r["achieved_rate"] if r["errors"] == 0 else 0.0,
               cpu_s=round(cpu, 3), cpu_us_per_call=round(cpu / r["answered"] * 1e6, 1) if r["answered"] else None,
               generator_cpu_s=round(gen_cpu, 3), wall_s=round(wall, 2), machine_busy_by_cpu=machine,
               # every other process on the machine (other agents' builds, say): what makes a run noisy
               other_processes_cores=round(max(0.0, sum(machine.values()) - ours / wall), 2))
    if tc:
        rec = run_records(before, store_counts(tc), sent, r["ok"])
        if sent is None:
            # wrk stops with up to one request in flight per connection, which the gateway records
            # (answered, or 499) but wrk does not count: records = answers + in flight.
            calls = rec["calls"]
            rec["rule"] = f"answers <= records <= answers + {CONNECTIONS} (wrk's in flight at its stop)"
            rec["ok"] = (r["answered"] <= calls <= r["answered"] + CONNECTIONS and rec["successes"] >= r["ok"]
                         and rec["written"] == calls and rec["dropped"] == 0)
        rec["ok"] = rec["ok"] and forwarded <= rec["calls"]
        run["records"] = rec
        run["rss_after_kb"] = tc.rss_kb()
    log(f"  {gen:7} {name:14} round {rnd}: {r['achieved_rate']:.0f} req/s, errors {r['errors']}, "
        f"p99 {r['latency_ms'].get('p99')} ms, cpu {run['cpu_us_per_call']} µs/call"
        + (f"; records {run['records']['calls']} for {r['answered']} answers"
           f"{'' if sent is None else f' of {sent} sent'}, upstream saw {forwarded} -> "
           f"{'OK' if run['records']['ok'] else 'MISMATCH'}" if tc else ""))
    return run


def summarise(runs, targets):
    """Per generator and target: the error-free rate of each round, its median, and the median of
    the round-by-round ratios to nginx (the baseline, measured in the same round)."""
    out = {}
    for gen in ("wrk", "loadgen"):
        mine = [r for r in runs if r["generator"] == gen]
        base = {r["round"]: r for r in mine if r["target"] == "nginx"}
        out[gen] = {}
        for name in targets:
            rs = [r for r in mine if r["target"] == name]
            ratios = [r["error_free_rps"] / base[r["round"]]["error_free_rps"] for r in rs
                      if base.get(r["round"]) and base[r["round"]]["error_free_rps"]]
            out[gen][name] = {
                "error_free_rps_each": [round(r["error_free_rps"]) for r in rs],
                "error_free_rps_median": median([r["error_free_rps"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "p99_ms_median": median([r["latency_ms"].get("p99", 0) for r in rs]),
                "cpu_us_per_call_median": median([r["cpu_us_per_call"] or 0 for r in rs]),
                "vs_nginx_each": [round(x, 3) for x in ratios],
                "vs_nginx": round(median(ratios), 3) if ratios else None,
                "baseline": "nginx, same generator, same round",
            }
    return out
