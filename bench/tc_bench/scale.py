"""Section 6: two token-console instances on one PostgreSQL database behind nginx against one,
pinned and then each capped (CFS quota) to a fraction of a core."""

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from .common import BENCH, free_port, log, median, wait_port
from .loadgen import loadgen_measured
from .lost import nothing_lost
from .nginx import NGINX_SCALE_CONF
from .pg import PgScratch
from .procs import Proc, cpu_busy_since, cpu_ticks, settle
from .systems import create_key, gateway_config, start_tc


def scale_placement(ctx):
    """CPU sets for instance A, instance B and the front (nginx, mock upstream, load generator).
    Each instance gets a core of its own; the front gets the others, or on two cores shares
    instance B's. PostgreSQL is the machine's service and is not pinned."""
    n = os.cpu_count() or 1
    if not ctx.pin:
        return None, None, None, "not pinned (--no-pin): all processes share all cores"
    if n >= 4:
        front = f"2-{n - 1}"
        return "0", "1", front, (f"instance A on CPU 0, instance B on CPU 1, nginx ({ctx.scale_workers} workers), "
                                 f"mock upstream and load generator on CPUs {front}; PostgreSQL not pinned")
    return "0", "1", "1", ("instance A on CPU 0, instance B on CPU 1; nginx (1 worker), mock upstream and "
                           "load generator also on CPU 1 (only 2 cores); PostgreSQL not pinned")


def post_chat(url, key, timeout=10):
    """One chat completion (the bench request) through url; its HTTP status (0: no answer)."""
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=(BENCH / "request.json").read_bytes(),
                                 method="POST", headers={"authorization": f"Bearer {key}",
                                                         "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class CpuCap:
    """A CPU bandwidth limit (CFS quota) on one process this bench started, through a cgroup of
    its own, so that a gateway instance is bounded by its own CPU as it would be on a machine with
    enough cores; the cgroup is removed at the end. `make` answers None where no cpu controller
    can be used without changing the machine's cgroup set-up."""

    PERIOD_US = 10_000

    def __init__(self, path, v2):
        self.path, self.v2 = path, v2

    @classmethod
    def make(cls, name, pid):
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            base, is_v2 = v1, False
        elif (v2 / "cgroup.subtree_control").exists() and "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            base, is_v2 = v2, True
        else:
            return None
        path = base / f"tc-bench-{os.getpid()}-{name}"
        try:
            path.mkdir()
            (path / "cgroup.procs").write_text(str(pid))
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
            return None
        cap = cls(path, is_v2)
        cap.set(None)
        return cap

    def set(self, cores):
        """Limits the process to `cores` of CPU time (None: no limit)."""
        if self.v2:
            quota = "max" if cores is None else str(int(cores * self.PERIOD_US))
            (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (self.path / "cpu.cfs_quota_us").write_text("-1")
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            if cores is not None:
                (self.path / "cpu.cfs_quota_us").write_text(str(int(cores * self.PERIOD_US)))

    def remove(self):
        """Moves what is left in the cgroup back to its parent, then removes it."""
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    (self.path.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            self.path.rmdir()
        except OSError as e:
            log(f"  (cannot remove the cgroup {self.path}: {e})")


def pg_scale(ctx, mock):
    """Two token-console instances on one PostgreSQL database behind nginx, against one instance
    behind the same nginx (a second `server` block whose upstream has only instance A):
    closed-loop saturation, the two set-ups alternating round after round. Then the same with each
    instance capped at ctx.scale_cap of a core (CFS quota), so that the instances, not this
    machine's two cores, are what limits the rate — as a core per instance would on a larger one."""
    ctx.scale_workers = 1 if (os.cpu_count() or 1) <= 2 or not ctx.pin else 2
    cpu_a, cpu_b, cpu_front, placement = scale_placement(ctx)
    pg = PgScratch(ctx, "pg-scale")
    procs, caps = [], []
    try:
        text = gateway_config(ctx, mock, url=pg.url)
        a = start_tc(ctx, "tc-pg-a", text, cpus=cpu_a)
        procs.append(a)
        b = start_tc(ctx, "tc-pg-b", text, cpus=cpu_b)
        procs.append(b)
        caps = [c for c in (CpuCap.make("a", a.pid), CpuCap.make("b", b.pid)) if c]
        if len(caps) != 2:
            log("  (no usable cgroup cpu controller: the capped rounds are skipped)")
        key = create_key(a)
        counts = {"sent": 0, "ok": 0}
        # The key was made through A's console; B learns it from the database within a second.
        t0, status = time.monotonic(), 0
        while time.monotonic() - t0 < 10 and status != 200:
            status = post_chat(b.url, key)
            counts["sent"] += 1
            counts["ok"] += status == 200
            if status != 200:
                time.sleep(0.05)
        key_sync_ms = round((time.monotonic() - t0) * 1000)
        log(f"  key made on A answered by B after {key_sync_ms} ms (status {status})")
        ports = free_port(), free_port()
        conf = Path(ctx.work) / "nginx-scale.conf"
        conf.write_text(NGINX_SCALE_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "", name="nginx-scale",
            workers=ctx.scale_workers if ctx.pin else "auto",
            dir=ctx.work, a=a.url.split("://", 1)[1], b=b.url.split("://", 1)[1],
            port_one=ports[0], port_two=ports[1]))
        nginx = Proc("nginx-scale", ["nginx", "-c", conf, "-p", ctx.work], cpus=cpu_front, logdir=ctx.work)
        procs.append(nginx)
        for port in ports:
            wait_port(port)
        fronts = {"one": f"http://127.0.0.1:{ports[0]}", "two": f"http://127.0.0.1:{ports[1]}"}
        others = {"nginx": nginx, "mock": mock}
        runs = []

        def one_run(mode, setup, rnd):
            for proc in (a, b, nginx, mock):
                settle(proc)
            args = ["rate", "--url", fronts[setup] + "/v1/chat/completions", "--body-file", BENCH / "request.json",
                    "--rate", 0, "--duration", ctx.duration, "--warmup", ctx.warmup,
                    "--connections", ctx.scale_connections, "--timeout", 10, "--drain", 10,
                    "--header", f"Authorization: Bearer {key}"]
            cpu0 = {"A": a.cpu(), "B": b.cpu(), **{n: p.cpu() for n, p in others.items()}}
            db0 = pg.cpu_snapshot()
            ticks0 = cpu_ticks()
            r, lg_cpu, wall = loadgen_measured(args, cpu_front)
            machine = cpu_busy_since(ticks0)
            cpu = {"A": a.cpu() - cpu0["A"], "B": b.cpu() - cpu0["B"],
                   **{n: p.cpu() - cpu0[n] for n, p in others.items()},
                   "postgres": pg.cpu_since(db0), "loadgen": lg_cpu}
            sent = r["all"]["sent"]
            counts["sent"] += sent
            counts["ok"] += r["all"]["ok"]
            errors = r["measured"]["errors"]
            run = {"mode": mode, "setup": setup, "round": rnd, "achieved_rate": r["achieved_rate"], "errors": errors,
                   "error_free_rps": r["achieved_rate"] if errors == 0 else 0.0,
                   "latency_ms": r["latency_ms"], "measured": r["measured"], "all": r["all"],
                   "wall_s": round(wall, 2),
                   "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
                   "cores_busy": {k: round(v / wall, 3) for k, v in cpu.items()},
                   "cpu_us_per_req": {k: round(v / sent * 1e6, 1) if sent else None for k, v in cpu.items()}}
            run["cores_busy_total"] = round(sum(run["cores_busy"].values()), 3)
            run["machine_busy_by_cpu"] = machine
            run["machine_cores_busy"] = round(sum(machine.values()), 3)
            run["other_processes_cores"] = round(max(0.0, run["machine_cores_busy"] - run["cores_busy_total"]), 3)
            log(f"  {mode}: {setup} instance{'s' if setup == 'two' else ''} (round {rnd}): "
                f"{r['achieved_rate']:.0f} req/s, errors {errors}, p99 {r['latency_ms'].get('p99')} ms; cores busy "
                + ", ".join(f"{k} {v:.2f}" for k, v in run["cores_busy"].items())
                + f" = {run['cores_busy_total']:.2f}; machine busy "
                + " ".join(f"CPU{c} {100 * v:.0f}%" for c, v in machine.items())
                + f" (other processes {run['other_processes_cores']:.2f} cores)")
            return run

        modes = [("pinned", None)] + ([("capped", ctx.scale_cap)] if len(caps) == 2 else [])
        for mode, cap in modes:
            for c in caps:
                c.set(cap)
            for rnd in range(1, ctx.scale_rounds + 1):
                for setup in (("one", "two") if rnd % 2 else ("two", "one")):
                    runs.append(one_run(mode, setup, rnd))
        for c in caps:
            c.set(None)
        lost = nothing_lost([a, b], counts, "2 instances")
    finally:
        for p in reversed(procs):
            p.stop()
        for c in caps:
            c.remove()
        pg.stop()

    out = {"placement": placement, "cpus": os.cpu_count(), "connections": ctx.scale_connections,
           "rounds": ctx.scale_rounds, "key_sync_ms": key_sync_ms, "runs": runs, "modes": {},
           "cap_cores": ctx.scale_cap if len(caps) == 2 else None, "nothing_lost": lost}
    for mode, _ in modes:
        summary = {}
        for setup in ("one", "two"):
            mine = [r for r in runs if r["setup"] == setup and r["mode"] == mode]
            summary[setup] = {
                "error_free_rps_median": median([r["error_free_rps"] for r in mine]),
                "error_free_rps_each": [round(r["error_free_rps"]) for r in mine],
                "cores_busy_median": {k: round(median([r["cores_busy"][k] for r in mine]), 2)
                                      for k in mine[0]["cores_busy"]},
                "cores_busy_total_median": round(median([r["cores_busy_total"] for r in mine]), 2),
                "cpu_us_per_req_median": {k: round(median([r["cpu_us_per_req"][k] or 0 for r in mine]), 1)
                                          for k in mine[0]["cpu_us_per_req"]},
                "p99_ms_median": median([r["latency_ms"].get("p99", 0) for r in mine]),
                "machine_cores_busy_median": round(median([r["machine_cores_busy"] for r in mine]), 2),
                "machine_busy_by_cpu_median": {c: round(median([r["machine_busy_by_cpu"][c] for r in mine]), 2)
                                               for c in mine[0]["machine_busy_by_cpu"]},
                "other_processes_cores_median": round(median([r["other_processes_cores"] for r in mine]), 2),
            }
        one, two = summary["one"]["error_free_rps_median"], summary["two"]["error_free_rps_median"]
        ones = [r for r in runs if r["setup"] == "one" and r["mode"] == mode]
        twos = [r for r in runs if r["setup"] == "two" and r["mode"] == mode]
        pairs = [t["error_free_rps"] / o["error_free_rps"] for o, t in zip(ones, twos) if o["error_free_rps"]]
        out["modes"][mode] = {"summary": summary, "ratio": two / one if one else None,
                              "ratio_by_round": [round(x, 3) for x in pairs]}
    return out
