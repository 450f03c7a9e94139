"""token-console's benchmarks, side by side in one run (see README "Performance").

Started by `bench/run`, which builds the release binaries and installs what is missing first.
Everything listens on loopback with ports chosen by the OS (nginx gets a port picked by binding
port 0 first). Sections:

1. gateway overhead: the same non-stream chat completion through the mock upstream directly
   (the floor), nginx (reverse proxy, upstream keep-alive), token-console (every call recorded) with
   a plain key and with a key that has a token budget and an RPM limit, and, with --litellm,
   LiteLLM's proxy; open-loop constant rates and closed-loop saturation (tools/loadgen);
1b. the independent generator: wrk (one thread, 32 connections, 6 s) and loadgen beside it,
   nginx (a worker per core) against token-console (both keys), an nginx mock upstream behind both;
2. streaming: 1,000 concurrent streams of 200 chunks 10 ms apart, through the gateway and direct;
3. nothing lost: the store's records against the load generator's counts, after every run;
4. console speed at volume: 10M calls (1M with --quick) through the recorder, then the console API;
5. profile of the gateway under load (perf cpu-clock sampling, and callgrind);
1c. pricing: the time to price one call (tools/loadgen price-bench) over the gateway's CPU per call
   at saturation in section 1, as a share and as the ratio with/without;
8. usage sources: records of the fake CLIProxyAPI ingested per second, popped and subscribed;
with --postgres, on scratch databases of the PostgreSQL server of TC_TEST_POSTGRES_URL (default
postgres://postgres@127.0.0.1:5432/postgres; made and dropped by `pg-scratch hold`):
   section 1 gains a target, token-console recording into PostgreSQL ("tc-postgres");
6. two token-console instances on one PostgreSQL database behind nginx against one instance
   behind the same nginx, closed-loop saturation rounds interleaved, CPU of every process;
7. console speed at volume in PostgreSQL, as in 4.

Prints tables and writes bench/results/<timestamp>.json (machine, commit, every measurement with
its same-run baseline). This is a measurement, not a test: it asserts nothing about time.
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import results
from .common import MOCK_KEY, log
from .console import console_volume
from .goals import evaluate
from .independent import independent, mock_answer
from .lost import nothing_lost
from .overhead import overhead_section
from .pg import PgScratch, pg_environment
from .pricing import pricing_share
from .profile import callgrind_profile, perf_profile
from .report import print_report
from .scale import pg_scale
from .sources import sources_section
from .streaming import streaming
from .systems import create_key, gateway_config, start_mock, start_tc

SECTIONS = {"overhead", "wrk", "stream", "console", "profile", "sources", "pg-overhead", "pg-scale",
            "pg-console"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs and 1M calls: a few minutes")
    ap.add_argument("--litellm", action="store_true", help="also measure LiteLLM's proxy (installs it)")
    ap.add_argument("--no-pin", action="store_true", help="let the OS place processes on any core")
    ap.add_argument("--postgres", action="store_true",
                    help="also the PostgreSQL runs: pg-overhead (a target in section 1), pg-scale, pg-console "
                         "(server: TC_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: overhead,wrk,stream,console,sources,"
                                               "profile and, with --postgres, pg-overhead,pg-scale,pg-console")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if skip - SECTIONS:
        ap.error(f"unknown section(s) for --skip: {','.join(sorted(skip - SECTIONS))}; "
                 f"known: {','.join(sorted(SECTIONS))}")
    if not a.postgres:
        skip |= {"pg-overhead", "pg-scale", "pg-console"}
    if "overhead" in skip:
        skip.add("pg-overhead")
    if "wrk" not in skip and shutil.which("wrk") is None:
        log("wrk is not installed (bench/run installs it): skipping section 1b")
        skip.add("wrk")
    return a, skip


class Ctx:
    """Where processes go and how long each run lasts."""

    def __init__(self, a):
        ncpu = os.cpu_count() or 1
        self.quick = a.quick
        self.pin = not a.no_pin and ncpu >= 2
        self.cpu_sut = "0" if self.pin else None
        self.cpu_aux = (str(ncpu - 1) if ncpu == 2 else f"1-{ncpu - 1}") if self.pin else None
        self.cpu_load = self.cpu_aux
        self.rates = [500, 1000, 2000, 5000]
        self.duration = 3 if a.quick else 10
        self.warmup = 1 if a.quick else 2
        self.sat_connections = 32
        self.scale_connections = 64
        self.scale_rounds = 2 if a.quick else 3
        self.scale_cap = 0.25
        self.streams = 1000
        self.chunks = 200
        self.calls = 1_000_000 if a.quick else 10_000_000
        self.reps = 50
        self.export_reps = 1 if a.quick else 3
        self.profile_secs = 5 if a.quick else 10
        self.work = tempfile.mkdtemp(prefix="tc-bench-")


def main():
    a, skip = parse_args()
    ctx = Ctx(a)
    started = datetime.datetime.now(datetime.timezone.utc)
    res = {"started": started.isoformat(timespec="seconds"), "quick": a.quick, "command": "bench/run "
           + " ".join(sys.argv[1:]), "commit": results.commit(), "environment": results.machine(ctx, a.litellm),
           "overhead": None, "independent": None, "streaming": None, "console": None, "nothing_lost": [],
           "profile": {}, "pg_scale": None, "pg_console": None, "pricing": None, "sources": None}
    if a.postgres:
        pg_env = pg_environment()
        res["environment"]["postgres"] = pg_env
        if "error" in pg_env:
            log(f"PostgreSQL at {pg_env['server']} cannot be used ({pg_env['error']}): "
                "skipping the PostgreSQL runs")
            res["environment"]["postgres"]["skipped"] = True
            skip |= {"pg-overhead", "pg-scale", "pg-console"}
    procs = []
    try:
        mock = start_mock(ctx)
        procs.append(mock)
        tc = start_tc(ctx, "token-console", gateway_config(ctx, mock, Path(ctx.work) / "gateway.db"))
        procs.append(tc)
        keys = {"plain": create_key(tc), "limited": create_key(tc, "bench-budget-rpm", limited=True)}
        tc_counts = {"token-console": {"sent": 0, "ok": 0}}
        if "overhead" not in skip:
            log("1. gateway overhead")
            res["overhead"], lost = overhead_section(ctx, mock, tc, keys, tc_counts, procs, skip, a.litellm)
            res["nothing_lost"] += lost
        log("1c. pricing")
        res["pricing"] = pricing_share(ctx, res["overhead"])
        if "wrk" not in skip:
            log("1b. independent generator (wrk) against nginx")
            res["independent"] = independent(ctx, mock_answer(mock, MOCK_KEY))
        if "stream" not in skip:
            log("2. streaming")
            s = streaming(ctx, mock, tc, keys["plain"], tc_counts["token-console"])
            d, g = s["direct"], s["token_console"]
            s["added"] = {k: g[m].get(q, 0) - d[m].get(q, 0) for k, m, q in (
                ("ttft_p50", "ttft_ms", "p50"), ("ttft_p99", "ttft_ms", "p99"),
                ("gap_p50", "gap_ms", "p50"), ("gap_p99", "gap_ms", "p99"))}
            res["streaming"] = s
            res["nothing_lost"].append(nothing_lost(tc, tc_counts["token-console"], "streaming"))
        if "profile" not in skip:
            log("5. profile")
            res["profile"]["perf"] = perf_profile(ctx, tc, keys["plain"])
        tc.stop()
        if "profile" not in skip:
            res["profile"]["callgrind"] = callgrind_profile(ctx, mock)
        if "sources" not in skip:
            log("8. usage sources: CLIProxyAPI records ingested per second")
            res["sources"] = sources_section(ctx)
        if "pg-scale" not in skip:
            log("6. PostgreSQL: two instances behind nginx against one")
            res["pg_scale"] = pg_scale(ctx, mock)
            res["nothing_lost"].append(res["pg_scale"]["nothing_lost"])
        if "console" not in skip:
            log("4. console speed at volume")
            res["console"] = console_volume(ctx)
        if "pg-console" not in skip:
            log("7. PostgreSQL: console speed at volume")
            pg_con = PgScratch(ctx, "pg-console")
            procs.append(pg_con.proc)
            res["pg_console"] = console_volume(ctx, pg_con)
            pg_con.stop()
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(ctx.work, ignore_errors=True)
    res["environment"]["load_average_at_end"] = list(os.getloadavg())
    res["targets"] = evaluate(res)
    results.write(res, started, a.quick)
    print_report(res)
