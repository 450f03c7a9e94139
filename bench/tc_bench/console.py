"""Section 4 (and 7): console speed at volume — millions of calls through the recorder with
`console-fill`, then each console call timed over HTTP."""

import contextlib
import json
import resource
import subprocess
import time
from pathlib import Path

from .common import FILL, http_json, log
from .loadgen import loadgen
from .pg import PgCpuSampler
from .systems import start_tc


def console_volume(ctx, pg=None):
    """Fills a store with ctx.calls calls through the recorder, then times the console API on it.
    The store is a SQLite file, or with `pg` (a PgScratch) that PostgreSQL database."""
    if pg is None:
        db = Path(ctx.work) / "console.db"
        where, url = ["--db", str(db)], f"sqlite://{db}"
    else:
        where, url = ["--database-url", pg.url], pg.url
    log(f"  filling {ctx.calls:,} calls through the recorder (max_logs 1,000,000) into "
        f"{'SQLite' if pg is None else 'PostgreSQL'} …")
    # Not pinned: the producer (standing in for the gateway's handlers) and the recorder's writer
    # thread run side by side, as they do in the gateway.
    sampler = PgCpuSampler(pg) if pg else contextlib.nullcontext()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with sampler:
        fill = subprocess.run([str(FILL), *where, "--calls", str(ctx.calls), "--max-logs", "1000000"],
                              capture_output=True, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    fill_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if fill.returncode != 0:
        raise RuntimeError(f"console-fill failed: {fill.stderr}")
    filled = json.loads(fill.stdout)
    min_seg = filled.get("min_segment_records_per_s")
    log(f"  recorder: {filled['records_per_s']:,.0f} records/s sustained over {filled['calls']:,} "
        f"({filled['seconds']:.1f} s; slowest 1M segment {f'{min_seg:,.0f}/s' if min_seg else '-'}), "
        f"dropped {filled['dropped']}")
    tc = start_tc(ctx, "tc-console" if pg is None else "tc-console-pg",
                  f"host: 127.0.0.1\ndatabase_url: {url}\ntimezone: UTC\n"
                  "console:\n  max_logs: 1000000\n  max_keys: 1000\n", timeout=300)
    retained = min(ctx.calls, 1_000_000)
    try:
        passes = [console_queries(ctx, tc, retained, "as filled")]
        if pg is not None:
            # Trimming to max_logs leaves the deleted rows dead in `calls` until a vacuum, and the
            # planner has no statistics until an analyze; autovacuum may not have caught up (and it
            # is off on some servers: see the environment). Time the same calls again after what
            # it would have done.
            t0 = time.monotonic()
            pg.sql("VACUUM ANALYZE")
            vacuum_s = time.monotonic() - t0
            log(f"  VACUUM ANALYZE: {vacuum_s:.1f} s")
            passes.append(console_queries(ctx, tc, retained, "after VACUUM ANALYZE"))
            passes[-1]["vacuum_s"] = round(vacuum_s, 1)
    finally:
        tc.stop()
    out = {"fill": filled, "queries": passes[0]["queries"], "exports": passes[0]["exports"],
           "retained_rows": retained, "passes": passes, "fill_client_cpu_s": round(fill_cpu, 1)}
    if pg is not None:
        out["database"] = "postgres"
        out["fill_db_cpu_s"] = round(sampler.cpu_s, 1)
    return out


def console_queries(ctx, tc, retained, label):
    log(f"  console calls ({label}):")
    newest = http_json(f"{tc.url}/api/console/logs?limit=1")["data"][0]["id"]
    deep = newest - int(retained * 0.95)
    key_id = 7
    api = "/api/console"
    queries = [
        ("stats", f"{api}/stats"),
        ("stats ?key_id", f"{api}/stats?key_id={key_id}"),
        ("usage-trend days=90", f"{api}/usage-trend?days=90"),
        ("usage-trend days=7", f"{api}/usage-trend?days=7"),
        ("logs (newest 100)", f"{api}/logs"),
        ("logs q=kimi", f"{api}/logs?q=kimi"),
        ("logs q=no-such-text (scans all)", f"{api}/logs?q=no-such-text"),
        ("logs model=kimi-k2", f"{api}/logs?model=kimi-k2"),
        ("logs status=4xx", f"{api}/logs?status=4xx"),
        ("logs status=2xx", f"{api}/logs?status=2xx"),
        ("logs status=500", f"{api}/logs?status=500"),
        ("logs key_id", f"{api}/logs?key_id={key_id}"),
        ("logs before_id (deep page)", f"{api}/logs?before_id={deep}"),
        ("logs combined", f"{api}/logs?q=gpt&model=gpt-4o&status=2xx&key_id={key_id}"),
        ("logs combined + deep page",
         f"{api}/logs?q=gpt&model=gpt-4o&status=2xx&key_id={key_id}&before_id={deep}"),
        ("logs limit=1000", f"{api}/logs?limit=1000"),
        # /usage reads the rollups: end users (5,000 in console-fill's calls) by day (a row of
        # user_total_day per user and day, read in the order asked), by user over a window, and
        # the other dimensions.
        ("usage user,day days=7", f"{api}/usage?group_by=user,day&days=7"),
        ("usage user,day days=30", f"{api}/usage?group_by=user,day&days=30"),
        ("usage user,day days=90", f"{api}/usage?group_by=user,day&days=90"),
        ("usage day,user days=90", f"{api}/usage?group_by=day,user&days=90"),
        ("usage user,day cost days=90", f"{api}/usage?group_by=user,day&days=90&order_by=cost"),
        ("usage user,day ?user days=90", f"{api}/usage?group_by=user,day&days=90&user=user-00042"),
        ("usage user days=7", f"{api}/usage?group_by=user&days=7"),
        ("usage user days=30", f"{api}/usage?group_by=user&days=30"),
        ("usage user days=90", f"{api}/usage?group_by=user&days=90"),
        ("usage user,key ?key_id", f"{api}/usage?group_by=user,key&key_id={key_id}&days=30"),
        ("usage model,day days=90", f"{api}/usage?group_by=model,day&days=90"),
        ("usage client,provider", f"{api}/usage?group_by=client,provider"),
        ("usage key,model (all time)", f"{api}/usage?group_by=key,model"),
        ("usage source,hour (one day)", f"{api}/usage?group_by=source,hour&days=1"),
    ]
    timings = []
    for name, path in queries:
        r = loadgen(["get", "--url", tc.url + path, "--reps", ctx.reps, "--warmup-reps", 2,
                     "--timeout", 60], ctx.cpu_load)
        timings.append({"query": name, "path": path, "latency_ms": r["latency_ms"],
                        "failures": r["failures"], "response_bytes": r["response_bytes"]})
        log(f"  {name:34} p50 {r['latency_ms'].get('p50'):>8} p99 {r['latency_ms'].get('p99'):>8} ms"
            f"  ({r['response_bytes']:,} bytes, failures {r['failures']})")
    exports = []
    for name, path in (("export json", f"{api}/export"), ("export csv", f"{api}/export?format=csv")):
        tc.reset_hwm()
        before = tc.rss_kb()
        r = loadgen(["get", "--url", tc.url + path, "--reps", ctx.export_reps, "--warmup-reps", 0,
                     "--timeout", 600], ctx.cpu_load)
        exports.append({"query": name, "latency_ms": r["latency_ms"], "failures": r["failures"],
                        "response_bytes": r["response_bytes"], "rss_before_kb": before,
                        "rss_peak_kb": tc.hwm_kb()})
        log(f"  {name:34} {r['latency_ms'].get('p50')} ms for {r['response_bytes']:,} bytes; "
            f"RSS {before / 1024:.1f} MB before, peak {tc.hwm_kb() / 1024:.1f} MB")
    return {"label": label, "queries": timings, "exports": exports}
