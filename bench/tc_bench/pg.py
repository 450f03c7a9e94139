"""PostgreSQL for the --postgres runs: the server's settings, scratch databases made and dropped by
`pg-scratch hold`, and the CPU of a database's backends."""

import os
import re
import subprocess
import threading
import json
from pathlib import Path

from .common import PG_SCRATCH
from .procs import Proc, cpu_seconds


def pg_server_url():
    return os.environ.get("TC_TEST_POSTGRES_URL") or "postgres://postgres@127.0.0.1:5432/postgres"


def redact(url):
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def pg_sql(url, *statements):
    """Runs statements through `pg-scratch sql`; one list of rows (lists of text) per statement."""
    out = subprocess.run([str(PG_SCRATCH), "sql", url, *statements], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"pg-scratch exited with {out.returncode}")
    return json.loads(out.stdout)


def pg_environment():
    """The server's version and the settings that matter here, or why it cannot be used."""
    url = pg_server_url()
    try:
        rows = pg_sql(url, "SHOW server_version", "SELECT name, setting, unit FROM pg_settings WHERE name IN "
                      "('autovacuum', 'synchronous_commit', 'fsync', 'shared_buffers', 'max_connections', "
                      "'wal_level', 'jit', 'work_mem') ORDER BY name")
    except (RuntimeError, OSError) as e:
        return {"server": redact(url), "error": str(e)}
    settings = {name: f"{value}{' x ' + unit if unit else ''}" for name, value, unit in rows[1]}
    return {"server": redact(url), "version": rows[0][0][0], "settings": settings,
            "placement": "the machine's PostgreSQL service, not started nor pinned by the bench: its backends "
                         "run on any core"}


class PgScratch:
    """An empty database on the PostgreSQL server, held by `pg-scratch hold` and dropped (with its
    connections) when stopped — or when this process dies, since its stdin then closes."""

    def __init__(self, ctx, name):
        self.proc = Proc(name, [PG_SCRATCH, "hold"], env=dict(os.environ, TC_TEST_POSTGRES_URL=pg_server_url()),
                         ready=r"scratch database url=(\S+) name=(\S+)", stdin=subprocess.PIPE,
                         logdir=ctx.work, timeout=30)
        self.url, self.name = self.proc.match.group(1), self.proc.match.group(2)

    def sql(self, *statements):
        return pg_sql(self.url, *statements)

    def size_bytes(self):
        return int(self.sql("SELECT pg_database_size(current_database())")[0][0][0])

    def backend_pids(self):
        """The server processes serving connections to this database (`postgres: … USER DB …`)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("postgres:") and f" {self.name} " in cmd.replace("\0", " "):
                pids.append(int(entry))
        return pids

    def cpu_snapshot(self):
        return {pid: cpu_seconds([pid]) for pid in self.backend_pids()}

    def cpu_since(self, snapshot):
        """CPU seconds of this database's backends since `snapshot` (backends that came and went in
        between are not counted; the gateway's pool keeps its connections open)."""
        now = self.cpu_snapshot()
        return sum(max(0.0, cpu - snapshot.get(pid, 0.0)) for pid, cpu in now.items())

    def stop(self):
        return self.proc.stop()


class PgCpuSampler:
    """CPU seconds of a database's backends over a span in which they may come and go (e.g. a
    separate program's connections): samples every 0.5 s, so a backend that exits loses at most
    its last half second."""

    def __init__(self, pg):
        self.pg, self.cpu_s, self._stop = pg, 0.0, threading.Event()

    def __enter__(self):
        self._base = self.pg.cpu_snapshot()
        self._last = dict(self._base)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.5):
            self._last.update(self.pg.cpu_snapshot())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._last.update(self.pg.cpu_snapshot())
        self.cpu_s = sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())
