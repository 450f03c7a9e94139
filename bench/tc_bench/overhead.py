"""Section 1, gateway overhead: the same chat completion through every target, open-loop rates
and closed-loop saturation with the project's load generator, interleaved rate by rate."""

from .common import BENCH, MOCK_KEY, SLO_P99_MS, log
from .loadgen import loadgen
from .lost import nothing_lost, run_records, store_counts
from .nginx import start_nginx
from .pg import PgScratch
from .procs import RssSampler, settle
from .systems import create_key, gateway_config, key_limits, start_litellm, start_tc

LIMITED = "tc-budget-rpm"  # token-console with the key that has a token budget and an RPM limit


def overhead(ctx, targets):
    """Every rate through every target, interleaved so that noise hits them alike. A target's
    `counts` (token-console's) adds up what the load generator sent and got back (targets served by
    one process share one); a target with a `db` (PgScratch) also has its PostgreSQL backends' CPU
    measured."""
    runs, skip = [], set()
    body = BENCH / "request.json"

    def one(name, rate, connections, duration, warmup):
        t = targets[name]
        args = ["rate", "--url", t["url"] + "/v1/chat/completions", "--body-file", body,
                "--rate", rate, "--duration", duration, "--warmup", warmup,
                "--connections", connections, "--timeout", 10, "--drain", 10]
        for h in t["headers"]:
            args += ["--header", h]
        proc = t["proc"]
        for other in targets.values():
            settle(other["proc"])
        db = t.get("db")
        before = store_counts(proc) if "counts" in t else None
        cpu0 = proc.cpu()
        db0 = db.cpu_snapshot() if db else None
        with RssSampler(proc) as rss:
            r = loadgen(args, ctx.cpu_load)
        cpu = proc.cpu() - cpu0
        db_cpu = db.cpu_since(db0) if db else None
        sent = r["all"]["sent"]
        if "counts" in t:
            t["counts"]["sent"] += sent
            t["counts"]["ok"] += r["all"]["ok"]
        lat = r["latency_ms"]
        sustained = r["measured"]["errors"] == 0 and lat.get("p99", 1e9) < SLO_P99_MS
        run = {"target": name, "rate": rate, "connections": connections, "duration_s": duration,
               "latency_ms": lat, "service_ms": r["service_ms"], "achieved_rate": r["achieved_rate"],
               "measured": r["measured"], "all": r["all"], "response_bytes": r["response_bytes"],
               "cpu_s": round(cpu, 3), "cpu_us_per_req": round(cpu / sent * 1e6, 1) if sent else None,
               "rss_peak_kb": rss.peak_kb, "sustained": sustained}
        if before is not None:
            run["records"] = run_records(before, store_counts(proc), sent, r["all"]["ok"])
        if db:
            run["db_cpu_s"] = round(db_cpu, 3)
            run["db_cpu_us_per_req"] = round(db_cpu / sent * 1e6, 1) if sent else None
        log(f"  {name:14} rate {rate or 'max':>5}: p50 {lat.get('p50')} p99 {lat.get('p99')} ms, "
            f"{r['achieved_rate']:.0f} req/s, errors {r['measured']['errors']}, cpu {run['cpu_us_per_req']} µs/req"
            + (f" + PostgreSQL {run['db_cpu_us_per_req']} µs/req" if db else "")
            + (f"; records {run['records']['calls']} of {sent} sent -> {'OK' if run['records']['ok'] else 'MISMATCH'}"
               if before is not None else ""))
        return run

    def series(names, rates):
        for rate in rates:
            for name in names:
                if name in skip:
                    runs.append({"target": name, "rate": rate, "skipped": "not sustained at a lower rate"})
                    continue
                run = one(name, rate, 64, ctx.duration, ctx.warmup)
                runs.append(run)
                if not run["sustained"]:
                    skip.add(name)

    fast = [name for name in targets if name != "litellm"]
    series(fast, ctx.rates)
    saturation = [one(name, 0, ctx.sat_connections, ctx.duration, ctx.warmup) for name in fast]
    if "litellm" in targets:
        # Last, and on its own: an overloaded LiteLLM keeps working through abandoned requests
        # for a while, which must not steal the shared core from the other targets' runs.
        series(["litellm"], [100, 200] + ctx.rates)
        saturation.append(one("litellm", 0, ctx.sat_connections, ctx.duration, ctx.warmup))
    return runs, saturation


def overhead_section(ctx, mock, tc, keys, tc_counts, procs, skip, litellm):
    """Section 1 with its targets: the floor, nginx, token-console with a plain key and with a key
    that has a token budget and an RPM limit (same process), and optionally tc-postgres and
    LiteLLM. Returns the section's results and its nothing-lost checks."""
    nginx = start_nginx(ctx, mock)
    procs.append(nginx)
    targets = {"direct": {"url": mock.url, "proc": mock, "headers": [f"Authorization: Bearer {MOCK_KEY}"]},
               "nginx": {"url": nginx.url, "proc": nginx, "headers": ["Authorization: Bearer sk-client"]},
               "token-console": {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {keys['plain']}"],
                                 "counts": tc_counts["token-console"]},
               LIMITED: {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {keys['limited']}"],
                         "counts": tc_counts["token-console"]}}
    pg_tc = pg_over = None
    if "pg-overhead" not in skip:
        pg_over = PgScratch(ctx, "pg-overhead")
        procs.append(pg_over.proc)
        pg_tc = start_tc(ctx, "tc-postgres", gateway_config(ctx, mock, url=pg_over.url))
        procs.append(pg_tc)  # stopped (procs in reverse) before its database is dropped
        tc_counts["tc-postgres"] = {"sent": 0, "ok": 0}
        targets["tc-postgres"] = {"url": pg_tc.url, "proc": pg_tc, "db": pg_over, "counts": tc_counts["tc-postgres"],
                                  "headers": [f"Authorization: Bearer {create_key(pg_tc)}"]}
    if litellm:
        lite = start_litellm(ctx, mock)
        procs.append(lite)
        targets["litellm"] = {"url": lite.url, "proc": lite, "headers": []}
    idle = {name: t["proc"].rss_kb() for name, t in targets.items()}
    runs, sat = overhead(ctx, targets)
    summary = {}
    for name, t in targets.items():
        mine = [r for r in runs if r["target"] == name and "latency_ms" in r]
        s = next(x for x in sat if x["target"] == name)
        summary[name] = {
            "saturation_rps": s["achieved_rate"] if s["measured"]["errors"] == 0 else 0.0,
            "saturation_errors": s["measured"]["errors"],
            "highest_sustained_open_loop": max([r["rate"] for r in mine if r["sustained"]], default=0),
            "rss_idle_kb": idle[name],
            "rss_load_peak_kb": max([r["rss_peak_kb"] for r in mine + [s]], default=0),
            "rss_hwm_kb": t["proc"].hwm_kb(),
        }
    for name in summary:
        if "nginx" in summary and summary["nginx"]["saturation_rps"]:
            summary[name]["vs_nginx"] = summary[name]["saturation_rps"] / summary["nginx"]["saturation_rps"]
    out = {"request_bytes": (BENCH / "request.json").stat().st_size,
           "response_bytes": next(r["response_bytes"] for r in runs if "response_bytes" in r),
           "limited_key": key_limits(), "runs": runs, "saturation": sat, "summary": summary,
           "baseline": "nginx (plain reverse proxy) and direct (the floor), same run, interleaved rate by rate"}
    lost = [nothing_lost(tc, tc_counts["token-console"], "overhead (plain and budget+RPM keys)")]
    if pg_tc is not None:
        lost.append(nothing_lost(pg_tc, tc_counts["tc-postgres"], "overhead (PostgreSQL)"))
        pg_tc.stop()
        pg_over.stop()
    nginx.stop()
    return out, lost
