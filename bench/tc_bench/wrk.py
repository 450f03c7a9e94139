"""wrk, the independent load generator (Debian's package, installed by `bench/run`): one closed-loop
run of a POST with the bench request, its figures read from a JSON line printed by wrk's `done`
hook."""

import json
import shutil
import subprocess
from pathlib import Path

from .common import BENCH

# wrk calls `done` once after the run; it prints one line that this module parses. No per-request
# hook is defined, so the script costs wrk nothing while it runs.
SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open({body_path}, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'TC_BENCH_WRK {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def version():
    """wrk's version line, or None when it is not installed."""
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer": the name and version
    return " ".join(text.split()[:2]) if text else "wrk"


def script(work):
    """Writes the Lua script (once per bench run) and returns its path."""
    path = Path(work) / "wrk-post.lua"
    if not path.exists():
        body = str(BENCH / "request.json")
        path.write_text(SCRIPT.format(body_path=json.dumps(body)))
    return path


def run(work, url, headers, connections, duration_s, threads=1, cpus=None, timeout_s=2):
    """One closed-loop wrk run against `url` (the full endpoint); a dict with the requests it saw
    answered, the rate, the errors by kind and latency percentiles in ms (from actual send: wrk is
    closed loop). `errors` counts socket errors, timeouts and non-2xx/3xx answers."""
    argv = ([] if cpus is None else ["taskset", "-c", cpus]) + [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
        "--timeout", f"{timeout_s}s", "-s", str(script(work))]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("TC_BENCH_WRK ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    r = json.loads(line.split(" ", 1)[1])
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout")}
    seconds = r["duration_us"] / 1e6
    return {
        "generator": "wrk", "threads": threads, "connections": connections, "duration_s": round(seconds, 3),
        "answered": r["requests"], "ok": r["requests"] - r["status"],
        "achieved_rate": round(r["requests"] / seconds, 1) if seconds else 0.0,
        "errors": sum(errors.values()), "errors_by_kind": errors,
        "latency_ms": {"p50": r["p50_us"] / 1000, "p90": r["p90_us"] / 1000, "p99": r["p99_us"] / 1000,
                       "max": r["max_us"] / 1000, "mean": round(r["mean_us"] / 1000, 3)},
        "bytes": r["bytes"],
    }
