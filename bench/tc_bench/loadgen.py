"""The project's own load generator (`tools/loadgen`), run as a child process; its JSON report."""

import json
import resource
import subprocess
import time

from .common import LOADGEN


def loadgen(args, cpus):
    argv = ([] if cpus is None else ["taskset", "-c", cpus]) + [str(LOADGEN)] + [str(a) for a in args]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def loadgen_measured(args, cpus):
    """loadgen, with its own CPU seconds (its rusage, once reaped) and the wall time of the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = loadgen(args, cpus)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r, cpu, wall
