"""Processes this bench starts and what /proc says about them: CPU seconds, resident memory,
per-CPU busy time, waiting until a process tree is idle."""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .common import CLK_TCK, log


def children_of(pid):
    """pid and all its descendants (from /proc/*/stat)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sorted(tree)


def cpu_seconds(pids):
    """utime + stime of the processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def status_kb(pids, field):
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Proc:
    """A process this bench started; stopped by its own pid only."""

    def __init__(self, name, argv, cpus=None, env=None, ready=None, timeout=60, cwd=None, logdir=None,
                 stdin=subprocess.DEVNULL):
        self.name = name
        if cpus is not None:
            argv = ["taskset", "-c", cpus] + [str(a) for a in argv]
        self.argv = [str(a) for a in argv]
        self.log_path = Path(logdir or tempfile.gettempdir()) / f"{name}.log"
        self.lines = []
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "w"),
            stdin=stdin,
            env=env,
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
        self.match = None
        self._ready = threading.Event()
        self._regex = re.compile(ready) if ready else None
        threading.Thread(target=self._pump, daemon=True).start()
        if self._regex and not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{name} did not become ready in {timeout} s; see {self.log_path}")

    def _pump(self):
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._regex and self.match is None:
                m = self._regex.search(line)
                if m:
                    self.match = m
                    self._ready.set()

    @property
    def pid(self):
        return self.popen.pid

    def pids(self):
        return children_of(self.pid)

    def cpu(self):
        return cpu_seconds(self.pids())

    def rss_kb(self):
        return status_kb(self.pids(), "VmRSS")

    def hwm_kb(self):
        return status_kb(self.pids(), "VmHWM")

    def reset_hwm(self):
        for pid in self.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout=40):
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def cpu_ticks():
    """Per CPU (busy, total) jiffies from /proc/stat; busy excludes idle and iowait."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+)\s+(.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            out[int(m.group(1))] = (sum(v) - v[3] - v[4], sum(v))
    return out


def cpu_busy_since(before):
    """Per CPU busy fraction since a cpu_ticks() snapshot: what every process on the machine used,
    this bench's and everyone else's."""
    now = cpu_ticks()
    return {cpu: round((b - before[cpu][0]) / max(1, t - before[cpu][1]), 3)
            for cpu, (b, t) in now.items() if cpu in before}


class RssSampler:
    """Samples a process tree's resident memory every 50 ms while in use; keeps the peak."""

    def __init__(self, proc):
        self.proc, self.peak_kb, self._stop = proc, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.proc.rss_kb())
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self.proc.rss_kb())


def settle(proc, timeout=60):
    """Waits until a process tree is idle (under 3% of a core over half a second)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        before = proc.cpu()
        time.sleep(0.5)
        if proc.cpu() - before < 0.015:
            return
    log(f"  ({proc.name} still busy after {timeout} s)")
