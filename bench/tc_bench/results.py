"""The results file: what machine and which commit a run measured (with the machine's load, since
a shared machine makes noisy figures), written as JSON under bench/results/."""

import json
import os
import subprocess
from pathlib import Path

from .common import BENCH, LITELLM_VERSION, ROOT
from . import wrk


def git(*args):
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def commit():
    """The commit measured, and whether the tree had changes to tracked files (then the figures
    are not those of that commit alone)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "subject": git("log", "-1", "--format=%s"), "dirty": bool(status) if status is not None else None}


def machine(ctx, litellm):
    """CPUs, memory, kernel, the tools' versions, the placement, and the load when the run began."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_model = next((l.split(":", 1)[1].strip() for l in info if l.startswith("model name")), "unknown")
    mem_kb = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal:")), None)
    pinning = (f"pinned with taskset: system under test (nginx 1 worker / token-console / LiteLLM) on CPU 0; "
               f"mock upstream and load generator (1 thread) on CPU {ctx.cpu_aux}") if ctx.pin else \
        "not pinned (--no-pin): all processes share all cores"
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "memory_mb": mem_kb // 1024 if mem_kb else None,
            "pinning": pinning, "kernel": os.uname().release,
            "load_average_at_start": list(os.getloadavg()),
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
            "wrk": wrk.version(), "litellm": LITELLM_VERSION if litellm else None}


def write(res, started, quick):
    """Writes bench/results/<UTC timestamp>[-quick].json and returns its path relative to the repository."""
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if quick else ''}.json"
    res["results_file"] = str(out.relative_to(ROOT))
    out.write_text(json.dumps(res, indent=1))
    return res["results_file"]
