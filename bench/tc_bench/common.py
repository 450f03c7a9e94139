"""Paths, constants and small helpers every section uses: where the release binaries are, free
ports, waiting for a port, JSON over HTTP, the median."""

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
LOADGEN = RELEASE / "loadgen"
MOCK = RELEASE / "mock-upstream"
TC = RELEASE / "token-console"
FILL = RELEASE / "console-fill"
PG_SCRATCH = RELEASE / "pg-scratch"
MOCK_KEY = "sk-mock-upstream-bench"
LITELLM_VERSION = "1.74.9"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLO_P99_MS = 100.0  # an offered rate counts as sustained only with p99 below this (no backlog)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def http_json(url, method="GET", body=None, headers=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else 0.0
