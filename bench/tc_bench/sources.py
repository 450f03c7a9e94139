"""Section 8, usage sources: how fast token-console ingests CLIProxyAPI's usage export, against
tools/mock-upstream's fake-cliproxyapi (release build): N records popped (`mode: pop`, all queued
at once, so every pop is a full batch of 1,000 committed before the next) and N records published
to the subscription (`mode: subscribe`, offered at 6,000/s and at 10,000/s, paced by the clock: a
late tick emits a burst, and a burst over the fake's 256-record subscriber buffer, like
CLIProxyAPI's, drops the reader). The figure is the
records stored (counted by the console) over the time from the first record emitted to the last
stored; every record must be stored exactly once."""

import time
import urllib.request
from pathlib import Path

from .common import RELEASE, http_json, log
from .procs import Proc
from .systems import start_tc

FAKE = RELEASE / "fake-cliproxyapi"
KEY = "bench-management-key"


def _post(url):
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=600) as r:
        return r.read()


def _config(ctx, fake_url, mode, db):
    return f"""host: 127.0.0.1
database_url: sqlite://{db}
timezone: UTC
console:
  max_logs: 1000
sources:
  - name: cpa
    kind: cliproxyapi
    url: {fake_url}
    management_key: {KEY}
    mode: {mode}
    poll_interval_ms: 100
"""


def _wait(tc, predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"{tc.name}: not done in {timeout} s")


def ingest_run(ctx, mode, n, per_ms=0):
    label = mode if mode == "pop" else f"{mode}-{per_ms}k"
    fake = Proc(f"fake-cliproxyapi-{label}", [FAKE, "--key", KEY, "--retention-seconds", "3600"],
                cpus=ctx.cpu_aux, ready=r"listening on (http://\S+)", logdir=ctx.work)
    fake_url = fake.match.group(1)
    tc = start_tc(ctx, f"tc-sources-{label}", _config(ctx, fake_url, mode, Path(ctx.work) / f"sources-{label}.db"))
    try:
        want = "polling" if mode == "pop" else "subscribed"
        _wait(tc, lambda: True if http_json(f"{tc.url}/api/console/sources")["data"]["sources"][0]["state"] == want
              else None, timeout=60)
        t0 = time.time()
        _post(f"{fake_url}/_fake/emit?from=0&count={n}&per_ms={per_ms}&keys=a,b,")
        emitted_s = time.time() - t0

        def stored():
            fs = http_json(f"{fake_url}/_fake/stats")
            calls = http_json(f"{tc.url}/api/console/stats")["data"]["api_call_count"]
            done = fs["delivered"] == n and calls >= fs["delivered"] - fs["lost_to_slow_subscribers"]
            return (calls, fs) if done else None

        calls, fs = _wait(tc, stored)
        seconds = time.time() - t0
        health = http_json(f"{tc.url}/api/console/sources")["data"]["sources"][0]
        result = {"mode": label, "offered_per_s": per_ms * 1000 or None, "records": n, "stored": calls, "seconds": round(seconds, 3),
                  "emit_seconds": round(emitted_s, 3), "records_per_s": round(calls / seconds),
                  "lost_to_slow_subscribers": fs["lost_to_slow_subscribers"],
                  "bad_records": health["bad_records"], "ok": calls == n}
        log(f"  {label}: {calls} of {n} records stored in {seconds:.2f} s -> {calls / seconds:,.0f} records/s"
            f" (emitting took {emitted_s:.2f} s; lost to a slow subscriber: {fs['lost_to_slow_subscribers']})")
        return result
    finally:
        tc.stop()
        fake.stop()


def sources_section(ctx):
    n = 50_000 if ctx.quick else 200_000
    return {"runs": [ingest_run(ctx, "pop", n), ingest_run(ctx, "subscribe", n, 6),
                     ingest_run(ctx, "subscribe", n, 10)]}
