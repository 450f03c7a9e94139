#!/usr/bin/env python3
"""token-console's benchmarks, side by side in one run (see README "Performance").

Started by `bench/run`, which builds the release binaries first. Everything listens on loopback
with ports chosen by the OS (nginx gets a port picked by binding port 0 first). Sections:

1. gateway overhead: the same non-stream chat completion through the mock upstream directly
   (the floor), nginx (reverse proxy, upstream keep-alive), token-console (every call recorded)
   and, with --litellm, LiteLLM's proxy; open-loop constant rates and closed-loop saturation;
2. streaming: 1,000 concurrent streams of 200 chunks 10 ms apart, through the gateway and direct;
3. nothing lost: the store's records against the load generator's counts, after every run;
4. console speed at volume: 10M calls (1M with --quick) through the recorder, then the console API;
5. profile of the gateway under load (perf cpu-clock sampling, and callgrind);
with --postgres, on scratch databases of the PostgreSQL server of TC_TEST_POSTGRES_URL (default
postgres://postgres@127.0.0.1:5432/postgres; made and dropped by `pg-scratch hold`):
   section 1 gains a target, token-console recording into PostgreSQL ("tc-postgres");
6. two token-console instances on one PostgreSQL database behind nginx against one instance
   behind the same nginx, closed-loop saturation rounds interleaved, CPU of every process;
7. console speed at volume in PostgreSQL, as in 4.

Prints tables and writes bench/results/<timestamp>.json. This is a measurement, not a test: it
asserts nothing about time.
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SLO_P99_MS = 100.0  # an offered rate counts as sustained only with p99 below this (no backlog)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# ---------------------------------------------------------------- PostgreSQL


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


# ---------------------------------------------------------------- the systems under test


def start_mock(ctx):
    p = Proc("mock-upstream", [MOCK, "--require-key", MOCK_KEY], cpus=ctx.cpu_aux,
             ready=r"listening on (http://\S+)", logdir=ctx.work)
    p.url = p.match.group(1)
    return p


NGINX_CONF = """\
{user}worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {mock_key}";
        }}
    }}
}}
"""


def start_nginx(ctx, mock):
    port = free_port()
    mock_port = int(mock.url.rsplit(":", 1)[1])
    conf = Path(ctx.work) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "",
        workers=1 if ctx.pin else "auto",
        dir=ctx.work, port=port, mock_port=mock_port, mock_key=MOCK_KEY))
    p = Proc("nginx", ["nginx", "-c", conf, "-p", ctx.work], cpus=ctx.cpu_sut, logdir=ctx.work)
    wait_port(port)
    p.url = f"http://127.0.0.1:{port}"
    return p


def tc_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONSOLE_", "OPENAI_", "ANTHROPIC_"))}
    env.setdefault("RUST_LOG", "info")
    return env


def start_tc(ctx, name, config_text, extra=(), wrapper=(), timeout=60, cpus="sut"):
    conf = Path(ctx.work) / f"{name}.yaml"
    conf.write_text(config_text)
    argv = list(wrapper) + [TC, "--config", conf, "--port", "0"] + list(extra)
    p = Proc(name, argv, cpus=ctx.cpu_sut if cpus == "sut" else cpus, env=tc_env(), logdir=ctx.work,
             ready=r"token-console ready gateway=(\S+) console=(\S+)", timeout=timeout)
    p.url = p.match.group(1)
    return p


def gateway_config(ctx, mock, db=None, url=None):
    return f"""host: 127.0.0.1
database_url: {url or f"sqlite://{db}"}
timezone: UTC
providers:
  - name: mock
    kind: openai
    base_url: {mock.url}/v1
    api_key: {MOCK_KEY}
    models: ["*"]
"""


def create_key(tc):
    data = http_json(f"{tc.url}/api/console/keys", "POST", {"name": "bench", "description": "bench/run"})
    return data["data"]["value"]


def start_litellm(ctx, mock):
    venv = BENCH / ".venv-litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        log(f"installing LiteLLM {LITELLM_VERSION} into {venv} …")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                       check=True)
    port = free_port()
    conf = Path(ctx.work) / "litellm.yaml"
    conf.write_text(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {mock.url}/v1
      api_key: {MOCK_KEY}
litellm_settings:
  telemetry: false
""")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               LITELLM_LOG="ERROR", DISABLE_ADMIN_UI="True")
    p = Proc("litellm", [exe, "--config", conf, "--host", "127.0.0.1", "--port", port,
                         "--num_workers", "1"], cpus=ctx.cpu_sut, env=env, logdir=ctx.work)
    wait_port(port, timeout=180)
    p.url = f"http://127.0.0.1:{port}"
    return p


# ---------------------------------------------------------------- 1. gateway overhead


def overhead(ctx, targets, tc_counts):
    """Every rate through every target, interleaved so that noise hits them alike. `tc_counts`
    holds, per token-console target, what the load generator sent and got back; a target with a
    `db` (PgScratch) also has its PostgreSQL backends' CPU measured."""
    runs, skip = [], set()
    body = BENCH / "request.json"

    def one(name, rate, connections, duration, warmup):
        t = targets[name]
        args = ["rate", "--url", t["url"] + "/v1/chat/completions", "--body-file", body,
                "--rate", rate, "--duration", duration, "--warmup", warmup,
                "--connections", connections, "--timeout", 10, "--drain", 10]
        for h in t["headers"]:
            args += ["--header", h]
        proc = t["proc"]
        for other in targets.values():
            settle(other["proc"])
        db = t.get("db")
        cpu0 = proc.cpu()
        db0 = db.cpu_snapshot() if db else None
        with RssSampler(proc) as rss:
            r = loadgen(args, ctx.cpu_load)
        cpu = proc.cpu() - cpu0
        db_cpu = db.cpu_since(db0) if db else None
        sent = r["all"]["sent"]
        if name in tc_counts:
            tc_counts[name]["sent"] += sent
            tc_counts[name]["ok"] += r["all"]["ok"]
        lat = r["latency_ms"]
        sustained = r["measured"]["errors"] == 0 and lat.get("p99", 1e9) < SLO_P99_MS
        run = {"target": name, "rate": rate, "connections": connections, "duration_s": duration,
               "latency_ms": lat, "service_ms": r["service_ms"], "achieved_rate": r["achieved_rate"],
               "measured": r["measured"], "all": r["all"], "response_bytes": r["response_bytes"],
               "cpu_s": round(cpu, 3), "cpu_us_per_req": round(cpu / sent * 1e6, 1) if sent else None,
               "rss_peak_kb": rss.peak_kb, "sustained": sustained}
        if db:
            run["db_cpu_s"] = round(db_cpu, 3)
            run["db_cpu_us_per_req"] = round(db_cpu / sent * 1e6, 1) if sent else None
        log(f"  {name:14} rate {rate or 'max':>5}: p50 {lat.get('p50')} p99 {lat.get('p99')} ms, "
            f"{r['achieved_rate']:.0f} req/s, errors {r['measured']['errors']}, cpu {run['cpu_us_per_req']} µs/req"
            + (f" + PostgreSQL {run['db_cpu_us_per_req']} µs/req" if db else ""))
        return run

    def series(names, rates):
        for rate in rates:
            for name in names:
                if name in skip:
                    runs.append({"target": name, "rate": rate, "skipped": "not sustained at a lower rate"})
                    continue
                run = one(name, rate, 64, ctx.duration, ctx.warmup)
                runs.append(run)
                if not run["sustained"]:
                    skip.add(name)

    fast = [name for name in targets if name != "litellm"]
    series(fast, ctx.rates)
    saturation = [one(name, 0, ctx.sat_connections, ctx.duration, ctx.warmup) for name in fast]
    if "litellm" in targets:
        # Last, and on its own: an overloaded LiteLLM keeps working through abandoned requests
        # for a while, which must not steal the shared core from the other targets' runs.
        series(["litellm"], [100, 200] + ctx.rates)
        saturation.append(one("litellm", 0, ctx.sat_connections, ctx.duration, ctx.warmup))
    return runs, saturation


def settle(proc, timeout=60):
    """Waits until a process tree is idle (under 3% of a core over half a second)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        before = proc.cpu()
        time.sleep(0.5)
        if proc.cpu() - before < 0.015:
            return
    log(f"  ({proc.name} still busy after {timeout} s)")


# ---------------------------------------------------------------- 2. streaming


def streaming(ctx, mock, tc, key, tc_counts):
    def body(model):
        return json.dumps({"model": model, "stream": True,
                           "messages": [{"role": "user", "content": "Tell me a long story."}]})

    def run(url, headers, model, sample=None):
        args = ["stream", "--url", url + "/v1/chat/completions", "--body", body(model),
                "--streams", ctx.streams, "--ramp-ms", 500, "--timeout", 120]
        for h in headers:
            args += ["--header", h]
        if sample is None:
            return loadgen(args, ctx.cpu_load)
        with RssSampler(sample) as rss:
            r = loadgen(args, ctx.cpu_load)
        r["rss_peak_kb"] = rss.peak_kb
        return r

    direct_h = [f"Authorization: Bearer {MOCK_KEY}"]
    tc_h = [f"Authorization: Bearer {key}"]
    log(f"  warm-up: {ctx.streams} short streams each way")
    for r in (run(mock.url, direct_h, "mock-chunks-5-gap-10"), run(tc.url, tc_h, "mock-chunks-5-gap-10")):
        if r["url"].startswith(tc.url):
            tc_counts["sent"] += r["streams"]
            tc_counts["ok"] += r["ok"]
    model = f"mock-chunks-{ctx.chunks}-gap-10"
    direct = run(mock.url, direct_h, model)
    log(f"  direct:        ttft p50 {direct['ttft_ms'].get('p50')} p99 {direct['ttft_ms'].get('p99')} ms, "
        f"gap p50 {direct['gap_ms'].get('p50')} p99 {direct['gap_ms'].get('p99')} ms, ok {direct['ok']}")
    via = run(tc.url, tc_h, model, sample=tc)
    tc_counts["sent"] += via["streams"]
    tc_counts["ok"] += via["ok"]
    log(f"  token-console: ttft p50 {via['ttft_ms'].get('p50')} p99 {via['ttft_ms'].get('p99')} ms, "
        f"gap p50 {via['gap_ms'].get('p50')} p99 {via['gap_ms'].get('p99')} ms, ok {via['ok']}, "
        f"rss peak {via['rss_peak_kb'] / 1024:.1f} MB")
    return {"streams": ctx.streams, "chunks": ctx.chunks, "gap_ms": 10, "model": model,
            "direct": direct, "token_console": via}


# ---------------------------------------------------------------- 3. nothing lost


def drained(tc, timeout=60):
    """Waits until the recorder of a token-console has written everything; returns its /healthz."""
    last, stable_since = None, time.time()
    deadline = time.time() + timeout
    while True:
        h = http_json(f"{tc.url}/healthz")
        written = h["recorder"]["written"]
        if h["recorder"]["queued"] == 0 and written == last and time.time() - stable_since > 0.5:
            return h
        if time.time() > deadline:
            return h
        if written != last:
            last, stable_since = written, time.time()
        time.sleep(0.1)


def nothing_lost(tc, counts, label):
    """Waits for the recorder(s) to write everything, then compares with the load generator.
    `tc` is one token-console or a list of instances sharing one database: then every console
    must show the same totals, and the instances' recorders together must have written them."""
    tcs = tc if isinstance(tc, list) else [tc]
    health = [drained(t) for t in tcs]
    stats = [http_json(f"{t.url}/api/console/stats")["data"] for t in tcs]
    s0 = stats[0]
    written = sum(h["recorder"]["written"] for h in health)
    dropped = sum(h["recorder"]["dropped"] for h in health)
    same = all((s["api_call_count"], s["success_count"]) == (s0["api_call_count"], s0["success_count"])
               for s in stats)
    result = {
        "label": label,
        "loadgen_sent": counts["sent"], "loadgen_ok": counts["ok"],
        "store_api_call_count": s0["api_call_count"], "store_success_count": s0["success_count"],
        "recorder_written": written, "recorder_dropped": dropped,
    }
    if len(tcs) > 1:
        result["instances"] = len(tcs)
        result["written_by_instance"] = [h["recorder"]["written"] for h in health]
        result["consoles_agree"] = same
    result["lost"] = counts["sent"] - s0["api_call_count"]
    result["ok"] = (s0["success_count"] == counts["ok"] and s0["api_call_count"] == counts["sent"]
                    and dropped == 0 and written == s0["api_call_count"] and same)
    log(f"  nothing lost ({label}): loadgen sent {counts['sent']} ok {counts['ok']}; store calls "
        f"{s0['api_call_count']} successes {s0['success_count']}; written {written}"
        + (f" ({' + '.join(str(w) for w in result['written_by_instance'])}), consoles agree: {same}"
           if len(tcs) > 1 else "")
        + f"; dropped {dropped} -> {'OK' if result['ok'] else 'MISMATCH'}")
    return result


# ---------------------------------------------------------------- 4. console speed at volume


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


# ---------------------------------------------------------------- 6. several instances

NGINX_SCALE_CONF = """\
{user}worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/nginx-scale.pid;
error_log {dir}/nginx-scale-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    keepalive_requests 1000000;
    upstream one {{
        server {a};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    upstream two {{
        server {a};
        server {b};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port_one} backlog=4096;
        location / {{
            proxy_pass http://one;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{port_two} backlog=4096;
        location / {{
            proxy_pass http://two;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


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


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else 0.0


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
            user="user root;\n" if os.geteuid() == 0 else "", workers=ctx.scale_workers if ctx.pin else "auto",
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


# ---------------------------------------------------------------- 5. profile


def perf_profile(ctx, tc, key):
    """perf's cpu-clock sampling of token-console while it serves 2,000 req/s."""
    if shutil.which("perf") is None:
        return {"skipped": "perf is not installed"}
    data = Path(ctx.work) / "perf.data"
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "-g", "-o", str(data),
                            "-p", str(tc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = loadgen(["rate", "--url", tc.url + "/v1/chat/completions", "--body-file", BENCH / "request.json",
                 "--rate", 2000, "--duration", ctx.profile_secs, "--warmup", 0, "--connections", 64,
                 "--header", f"Authorization: Bearer {key}"], ctx.cpu_load)
    rec.send_signal(signal.SIGINT)
    rec.wait(60)
    sent = r["all"]["sent"]
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                             "--stdio", "-g", "none", "--percent-limit", "0.7"],
                            capture_output=True, text=True)
    top = []
    for line in report.stdout.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            top.append({"share_pct": float(m.group(1)), "dso": m.group(2), "symbol": m.group(3).strip()[:140]})
    def shares(sort):
        out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort,
                              "--stdio", "-g", "none"], capture_output=True, text=True)
        rows = []
        for line in out.stdout.splitlines():
            m = re.match(r"\s+([\d.]+)%\s+(\S.*?)\s*$", line)
            if m:
                rows.append({"share_pct": float(m.group(1)), sort: m.group(2)})
        return rows[:8]

    dsos, threads = shares("dso"), shares("comm")
    user = [row for row in top if row["dso"] != "[kernel.kallsyms]"]
    return {"tool": "perf record -e cpu-clock (software sampling; this VM has no hardware counters)",
            "load": f"2000 req/s for {ctx.profile_secs} s, {sent} requests", "top_self": top[:25],
            "top_user_self": user[:25], "by_dso": dsos, "by_thread": threads}


def callgrind_profile(ctx, mock):
    """Instruction counts of token-console under valgrind (callgrind) for a short run."""
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed"}
    out = Path(ctx.work) / "callgrind.out"
    db = Path(ctx.work) / "callgrind.db"
    tc = start_tc(ctx, "tc-callgrind", gateway_config(ctx, mock, db),
                  wrapper=["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={out}"], timeout=300)
    try:
        key = create_key(tc)
        time.sleep(2)  # let the tokenizer warm-up finish before counting
        loadgen(["rate", "--url", tc.url + "/v1/chat/completions", "--body-file", BENCH / "request.json",
                 "--rate", 50, "--duration", 2, "--warmup", 0, "--connections", 8,
                 "--header", f"Authorization: Bearer {key}"], ctx.cpu_load)
        on = subprocess.run(["callgrind_control", "-i", "on", str(tc.pid)], capture_output=True, text=True)
        log(f"  callgrind_control: {on.stdout.strip()} {on.stderr.strip()}")
        r = loadgen(["rate", "--url", tc.url + "/v1/chat/completions", "--body-file", BENCH / "request.json",
                     "--rate", 100, "--duration", ctx.profile_secs, "--warmup", 0, "--connections", 8,
                     "--header", f"Authorization: Bearer {key}"], ctx.cpu_load)
        subprocess.run(["callgrind_control", "-i", "off", str(tc.pid)], capture_output=True)
    finally:
        tc.stop(timeout=120)
    files = sorted(Path(ctx.work).glob("callgrind.out*"))
    if not files:
        return {"skipped": "callgrind wrote no profile"}
    ann = subprocess.run(["callgrind_annotate", "--threshold=99", *map(str, files)],
                         capture_output=True, text=True)
    incl = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99", *map(str, files)],
                          capture_output=True, text=True)

    def parse(text):
        total, rows = None, []
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", line)
            if m:
                total = int(m.group(1).replace(",", ""))
            m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*?):(\S.*)$", line)
            if m and "PROGRAM TOTALS" not in line:
                rows.append({"share_pct": float(m.group(2)), "file": m.group(3)[-60:],
                             "function": re.sub(r"\s*\[[^\]]*\]$", "", m.group(4))[:160]})
        return total, rows

    total, self_rows = parse(ann.stdout)
    _, incl_rows = parse(incl.stdout)
    requests = r["all"]["sent"]
    return {"tool": "valgrind --tool=callgrind (instructions; collection on for the measured load only)",
            "load": f"100 req/s for {ctx.profile_secs} s, {requests} requests",
            "instructions_per_request": round(total / requests) if total and requests else None,
            "top_self": self_rows[:25], "top_inclusive": incl_rows[:40]}


# ---------------------------------------------------------------- report


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(rows, header):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def print_console(c, title, fill=True):
    p = print
    f = c["fill"]
    p(f"{title}: {f['calls']:,} calls, {f['keys']} keys, {f['models']} models, "
      f"{f['days']} days; max_logs {f['max_logs']:,} ({c['retained_rows']:,} rows retained); "
      f"database {f['db_bytes'] / 2**20:,.0f} MiB after the fill")
    if fill:
        seg = f.get("min_segment_records_per_s")
        p(f"  recorder: {f['records_per_s']:,.0f} records/s sustained ({f['seconds']:.1f} s; slowest 1M "
          f"segment {f'{seg:,.0f}/s' if seg else '-'}), dropped {f['dropped']}"
          + (f"; CPU: console-fill {c['fill_client_cpu_s']} s" if "fill_client_cpu_s" in c else "")
          + (f", PostgreSQL backends {c['fill_db_cpu_s']} s" if "fill_db_cpu_s" in c else ""))
    rows = [[q["query"], fmt(q["latency_ms"].get("p50"), 3), fmt(q["latency_ms"].get("p99"), 3),
             fmt(q["latency_ms"].get("max"), 3), f"{q['response_bytes']:,}", q["failures"]] for q in c["queries"]]
    p(table(rows, ["console call (50 reps)", "p50 ms", "p99 ms", "max ms", "bytes", "failures"]))
    for e in c["exports"]:
        p(f"  {e['query']}: {e['latency_ms'].get('p50'):,.0f} ms (p50 of {e['latency_ms']['count']}) for "
          f"{e['response_bytes'] / 2**20:,.1f} MiB; RSS {e['rss_before_kb'] / 1024:.1f} MB before, "
          f"peak {e['rss_peak_kb'] / 1024:.1f} MB")


def print_report(res):
    p = print
    env = res["environment"]
    p("\n" + "=" * 100)
    p(f"token-console benchmarks  {res['started']}  ({'quick' if res['quick'] else 'full'} run)")
    p(f"machine: {env['cpus']} CPUs, {env['cpu_model']}; {env['pinning']}")
    pg = env.get("postgres")
    if pg and "error" in pg:
        p(f"PostgreSQL at {pg['server']}: not usable ({pg['error']}); its runs were skipped")
    elif pg:
        p(f"PostgreSQL {pg['version']} at {pg['server']} ({pg['placement']}): "
          + ", ".join(f"{k} {v}" for k, v in pg["settings"].items()))
    p("The load generator shares this machine's cores with what it measures; every comparison below is")
    p("made side by side in this same run (targets interleaved rate by rate), so ratios are what count.")
    p("=" * 100)
    o = res["overhead"]
    if o:
        print_overhead(o)
    print_rest(res)


def print_overhead(o):
    p = print
    floor = {r["rate"]: r for r in o["runs"] if r["target"] == "direct" and "latency_ms" in r}
    p(f"\n1. Gateway overhead: non-stream chat completion ({o['request_bytes']:,} B request, "
      f"{o['response_bytes']:,} B answer), open loop, latency from intended send time (ms)")
    with_db = any("db_cpu_us_per_req" in r for r in o["runs"])
    if with_db:
        p("  (token-console: recording into SQLite; tc-postgres: recording into PostgreSQL, whose backends' "
          "CPU is 'PG us/req')")
    rows = []
    for r in o["runs"] + [dict(s, rate="max") for s in o["saturation"]]:
        if "skipped" in r:
            rows.append([r["rate"], r["target"], "skipped"] + [""] * (10 + with_db))
            continue
        l = r["latency_ms"]
        f = floor.get(r["rate"]) if r["rate"] != "max" else next(
            (s for s in o["saturation"] if s["target"] == "direct"), None)
        fl = f["latency_ms"] if f else {}
        added50 = l.get("p50", 0) - fl.get("p50", 0) if fl else None
        added99 = l.get("p99", 0) - fl.get("p99", 0) if fl else None
        ratio99 = l.get("p99", 0) / fl["p99"] if fl and fl.get("p99") else None
        rows.append([r["rate"], r["target"], fmt(l.get("p50"), 3), fmt(l.get("p90"), 3), fmt(l.get("p99"), 3),
                     fmt(l.get("max"), 2), fmt(added50, 3) if r["target"] != "direct" else "",
                     fmt(added99, 3) if r["target"] != "direct" else "",
                     fmt(ratio99, 2) if r["target"] != "direct" else "",
                     f"{r['achieved_rate']:.0f}", r["measured"]["errors"], fmt(r["cpu_us_per_req"], 1)]
                    + ([fmt(r.get("db_cpu_us_per_req"), 1) if "db_cpu_us_per_req" in r else ""] if with_db else [])
                    + [f"{r['rss_peak_kb'] / 1024:.1f}"])
    p(table(rows, ["req/s", "target", "p50", "p90", "p99", "max", "+p50", "+p99", "p99 x floor",
                   "done/s", "errors", "CPU us/req"] + (["PG us/req"] if with_db else []) + ["RSS MB"]))
    if o["saturation"]:
        p("  (+p50/+p99: added over the floor at the same rate; 'max' rows: closed loop, "
          f"{o['saturation'][0]['connections']} connections, latency from actual send;\n"
          f"   'skipped': a lower rate was not sustained — errors, or p99 over {SLO_P99_MS:.0f} ms)")
    p(f"\n  highest error-free rate (closed-loop saturation, 0 errors) and resident memory:")
    rows = []
    for name, s in o["summary"].items():
        rows.append([name, fmt(s["saturation_rps"], 0), fmt(s.get("vs_nginx"), 2), fmt(s["highest_sustained_open_loop"], 0),
                     f"{s['rss_idle_kb'] / 1024:.1f}", f"{s['rss_load_peak_kb'] / 1024:.1f}",
                     f"{s['rss_hwm_kb'] / 1024:.1f}"])
    p(table(rows, ["target", "max req/s", "x nginx", "highest open-loop rate ok", "RSS idle MB",
                   "RSS load peak MB", "VmHWM MB"]))


def print_rest(res):
    p = print
    s = res["streaming"]
    if s:
        d, g = s["direct"], s["token_console"]
        p(f"\n2. Streaming: {s['streams']} concurrent streams x {s['chunks']} chunks, {s['gap_ms']} ms apart (ms)")
        rows = []
        for name, r in (("direct", d), ("token-console", g)):
            rows.append([name, r["ok"], r["failed"], fmt(r["ttft_ms"].get("p50"), 3), fmt(r["ttft_ms"].get("p99"), 3),
                         fmt(r["gap_ms"].get("p50"), 3), fmt(r["gap_ms"].get("p99"), 3), fmt(r["gap_ms"].get("max"), 1),
                         fmt(r["stream_total_ms"].get("p99"), 0)])
        rows.append(["added", "", "", fmt(s["added"]["ttft_p50"], 3), fmt(s["added"]["ttft_p99"], 3),
                     fmt(s["added"]["gap_p50"], 3), fmt(s["added"]["gap_p99"], 3), "", ""])
        p(table(rows, ["path", "ok", "failed", "TTFT p50", "TTFT p99", "gap p50", "gap p99", "gap max",
                       "stream p99"]))
        p(f"  token-console RSS with {s['streams']} open streams: peak {g['rss_peak_kb'] / 1024:.1f} MB")
    if res["nothing_lost"]:
        p("\n3. Nothing lost (token-console):")
    for n in res["nothing_lost"]:
        p(f"  {n['label']:10} loadgen sent {n['loadgen_sent']:,}, ok {n['loadgen_ok']:,} | store calls "
          f"{n['store_api_call_count']:,}, successes {n['store_success_count']:,} | recorder written "
          f"{n['recorder_written']:,}, dropped {n['recorder_dropped']} -> {'OK' if n['ok'] else 'MISMATCH'}")
    if res["console"]:
        print_console(res["console"], "\n4. Console speed at volume (SQLite)")
    prof = res.get("profile") or {}
    for key in ("perf", "callgrind"):
        pr = prof.get(key)
        if not pr:
            continue
        if "skipped" in pr:
            p(f"\n5. Profile ({key}): skipped: {pr['skipped']}")
            continue
        p(f"\n5. Profile ({pr['tool']}; {pr['load']}):")
        if pr.get("instructions_per_request"):
            p(f"  {pr['instructions_per_request']:,} instructions per request")
        for label in ("by_thread", "by_dso"):
            if pr.get(label):
                p(f"  {label.replace('_', ' ')}: " + ", ".join(
                    f"{list(r.values())[1]} {r['share_pct']:.1f}%" for r in pr[label][:6]))
        for row in (pr.get("top_user_self") or pr["top_self"])[:15]:
            where = row.get("dso") or row.get("file")
            p(f"  {row['share_pct']:6.2f}%  {where[:28]:28}  {row.get('symbol') or row.get('function')}")
    sc = res.get("pg_scale")
    if sc:
        p(f"\n6. PostgreSQL: two instances behind nginx against one (same nginx, one database; closed loop, "
          f"{sc['connections']} connections, {sc['rounds']} rounds alternating)")
        p(f"  placement: {sc['placement']}")
        for mode, m in sc["modes"].items():
            one, two = m["summary"]["one"], m["summary"]["two"]
            p(f"\n  {mode}" + (f": each instance capped at {sc['cap_cores']} of a core (CFS quota), so that the "
                               "instances are what limits the rate" if mode == "capped" else
                               ": the instances as placed above, no cap"))
            comps = list(one["cores_busy_median"])
            rows = []
            for label, x in (("1 instance", one), ("2 instances", two)):
                rows.append([label, fmt(x["error_free_rps_median"], 0),
                             " / ".join(str(v) for v in x["error_free_rps_each"]), fmt(x["p99_ms_median"], 2)]
                            + [fmt(x["cores_busy_median"][k], 2) for k in comps]
                            + [fmt(x["cores_busy_total_median"], 2), fmt(x["other_processes_cores_median"], 2),
                               " ".join(f"{100 * v:.0f}%" for v in x["machine_busy_by_cpu_median"].values())])
            p(table(rows, ["set-up", "max req/s (median)", "each round", "p99 ms"] + [f"{k} cores" for k in comps]
                    + ["ours total", "others", "machine busy by CPU"]))
            rows = [[label] + [fmt(x["cpu_us_per_req_median"][k], 1) for k in comps]
                    for label, x in (("1 instance", one), ("2 instances", two))]
            p(table(rows, ["CPU us per request"] + comps))
            p(f"  2 instances / 1 instance: {fmt(m['ratio'], 2)} x (round by round: "
              f"{', '.join(f'{x:.2f}' for x in m['ratio_by_round'])})")
        p("  (cores: CPU seconds over the run's wall time, warm-up included; 'others': every other process on "
          "this machine,\n   from /proc/stat; postgres: the backends serving this database only)")
        p(f"  a key made through A's console was accepted by B after {sc['key_sync_ms']} ms")
    if res.get("pg_console"):
        c = res["pg_console"]
        for i, ps in enumerate(c["passes"]):
            shown = dict(c, queries=ps["queries"], exports=ps["exports"])
            title = f"\n7. Console speed at volume (PostgreSQL), {ps['label']}" + (
                f" (VACUUM ANALYZE took {ps['vacuum_s']} s)" if "vacuum_s" in ps else "")
            print_console(shown, title, fill=i == 0)
    p("\nTargets:")
    for t in res["targets"]:
        p(f"  [{'met' if t['met'] else 'NOT MET' if t['met'] is False else 'n/a'}] {t['target']}: {t['figure']}")
    p(f"\nwritten: {res['results_file']}")


def evaluate(res):
    t = []
    o = res["overhead"] or {"runs": [], "summary": {}}
    by = {(r["target"], r["rate"]): r for r in o["runs"] if "latency_ms" in r}
    tc, fl = by.get(("token-console", 1000)), by.get(("direct", 1000))
    if tc and fl:
        added = tc["latency_ms"]["p99"] - fl["latency_ms"]["p99"]
        t.append({"target": "recording on, 1000 req/s: p99 added over the floor <= 1 ms",
                  "figure": f"{added:.3f} ms (token-console p99 {tc['latency_ms']['p99']} vs floor {fl['latency_ms']['p99']})",
                  "met": added <= 1.0})
    summ = o["summary"]
    if "token-console" in summ and "nginx" in summ:
        v = summ["token-console"]["vs_nginx"]
        t.append({"target": "highest error-free rate >= 0.8 x nginx", "figure": f"{v:.2f} x "
                  f"({summ['token-console']['saturation_rps']:.0f} vs {summ['nginx']['saturation_rps']:.0f} req/s)",
                  "met": v >= 0.8})
    if "litellm" in summ and summ["litellm"]["saturation_rps"]:
        v = summ["token-console"]["saturation_rps"] / summ["litellm"]["saturation_rps"]
        t.append({"target": "highest error-free rate >= 20 x LiteLLM", "figure": f"{v:.1f} x", "met": v >= 20})
    elif summ:
        t.append({"target": "highest error-free rate >= 20 x LiteLLM", "figure": "not run (use --litellm)", "met": None})
    if "token-console" in summ:
        peak = summ["token-console"]["rss_load_peak_kb"] / 1024
        t.append({"target": "RSS <= 50 MB under the overhead load", "figure": f"{peak:.1f} MB", "met": peak <= 50})
    s = res["streaming"]
    if s:
        peak = s["token_console"]["rss_peak_kb"] / 1024
        t.append({"target": f"RSS <= 150 MB with {s['streams']} open streams", "figure": f"{peak:.1f} MB",
                  "met": peak <= 150})
        a = s["added"]["ttft_p99"]
        t.append({"target": "streaming TTFT added <= 1 ms p99", "figure": f"{a:.3f} ms", "met": a <= 1.0})
    c = res["console"]
    if c:
        q = {x["query"]: x for x in c["queries"]}
        worst = max(q["stats"]["latency_ms"]["p99"], q["usage-trend days=90"]["latency_ms"]["p99"])
        t.append({"target": f"/stats and /usage-trend?days=90 <= 10 ms p99 at {c['fill']['calls']:,} calls",
                  "figure": f"stats {q['stats']['latency_ms']['p99']} ms, usage-trend "
                            f"{q['usage-trend days=90']['latency_ms']['p99']} ms", "met": worst <= 10})
        logs = [x for x in c["queries"] if x["query"].startswith("logs")]
        slow = [f"{x['query']} {x['latency_ms']['p99']} ms" for x in logs if x["latency_ms"]["p99"] > 50]
        t.append({"target": f"every /logs query <= 50 ms p99 at {c['retained_rows']:,} rows",
                  "figure": "all within" if not slow else "over: " + "; ".join(slow), "met": not slow})
        rps = c["fill"]["records_per_s"]
        t.append({"target": "recorder >= 100,000 records/s sustained", "figure": f"{rps:,.0f} records/s",
                  "met": rps >= 100_000})
    pg = by.get(("tc-postgres", 1000))
    if pg and fl:
        added = pg["latency_ms"]["p99"] - fl["latency_ms"]["p99"]
        t.append({"target": "PostgreSQL recording, 1000 req/s: p99 added over the floor <= 1 ms",
                  "figure": f"{added:.3f} ms (tc-postgres p99 {pg['latency_ms']['p99']} vs floor "
                            f"{fl['latency_ms']['p99']}; SQLite token-console {tc['latency_ms']['p99'] if tc else '-'})",
                  "met": added <= 1.0})
    sc = res.get("pg_scale")
    if sc:
        for mode, m in sc["modes"].items():
            ratio, one, two = m["ratio"] or 0.0, m["summary"]["one"], m["summary"]["two"]
            what = (f"each instance capped at {sc['cap_cores']} core" if mode == "capped"
                    else f"{sc['cpus']} CPUs, no cap")
            t.append({"target": f"two instances >= 1.6 x one instance's error-free rate where cores allow ({what})",
                      "figure": f"{ratio:.2f} x ({two['error_free_rps_median']:.0f} vs "
                                f"{one['error_free_rps_median']:.0f} req/s; machine busy "
                                f"{one['machine_cores_busy_median']:.2f} of {sc['cpus']} cores with one instance, "
                                f"{two['machine_cores_busy_median']:.2f} with two)",
                      "met": ratio >= 1.6})
    pc = res.get("pg_console")
    if pc:
        for ps in pc["passes"]:
            q = {x["query"]: x for x in ps["queries"]}
            worst = max(q["stats"]["latency_ms"]["p99"], q["usage-trend days=90"]["latency_ms"]["p99"])
            t.append({"target": f"PostgreSQL ({ps['label']}): /stats and /usage-trend?days=90 <= 20 ms p99 at "
                                f"{pc['fill']['calls']:,} calls",
                      "figure": f"stats {q['stats']['latency_ms']['p99']} ms, usage-trend "
                                f"{q['usage-trend days=90']['latency_ms']['p99']} ms", "met": worst <= 20})
    lost = res["nothing_lost"]
    if not lost:
        return t
    t.append({"target": "0 records lost, in every run",
              "figure": "; ".join(f"{n['label']}: lost {n['lost']}, dropped {n['recorder_dropped']}" for n in lost),
              "met": all(n["ok"] for n in lost)})
    return t


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs and 1M calls: a few minutes")
    ap.add_argument("--litellm", action="store_true", help="also measure LiteLLM's proxy (installs it)")
    ap.add_argument("--no-pin", action="store_true", help="let the OS place processes on any core")
    ap.add_argument("--postgres", action="store_true",
                    help="also the PostgreSQL runs: pg-overhead (a target in section 1), pg-scale, pg-console "
                         "(server: TC_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: overhead,stream,console,profile "
                                               "and, with --postgres, pg-overhead,pg-scale,pg-console")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    known = {"overhead", "stream", "console", "profile", "pg-overhead", "pg-scale", "pg-console"}
    if skip - known:
        ap.error(f"unknown section(s) for --skip: {','.join(sorted(skip - known))}; known: {','.join(sorted(known))}")
    if not a.postgres:
        skip |= {"pg-overhead", "pg-scale", "pg-console"}
    if "overhead" in skip:
        skip.add("pg-overhead")
    ncpu = os.cpu_count() or 1

    class Ctx:
        pass

    ctx = Ctx()
    ctx.quick = a.quick
    ctx.pin = not a.no_pin and ncpu >= 2
    ctx.cpu_sut = "0" if ctx.pin else None
    ctx.cpu_aux = (str(ncpu - 1) if ncpu == 2 else f"1-{ncpu - 1}") if ctx.pin else None
    ctx.cpu_load = ctx.cpu_aux
    ctx.rates = [500, 1000, 2000, 5000]
    ctx.duration = 3 if a.quick else 10
    ctx.warmup = 1 if a.quick else 2
    ctx.sat_connections = 32
    ctx.scale_connections = 64
    ctx.scale_rounds = 2 if a.quick else 3
    ctx.scale_cap = 0.25
    ctx.streams = 1000
    ctx.chunks = 200
    ctx.calls = 1_000_000 if a.quick else 10_000_000
    ctx.reps = 50
    ctx.export_reps = 1 if a.quick else 3
    ctx.profile_secs = 5 if a.quick else 10
    ctx.work = tempfile.mkdtemp(prefix="tc-bench-")
    started = datetime.datetime.now(datetime.timezone.utc)
    cpu_model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                      if l.startswith("model name")), "unknown")
    pinning = (f"pinned with taskset: system under test (nginx 1 worker / token-console / LiteLLM) on CPU 0; "
               f"mock upstream and load generator (1 thread) on CPU {ctx.cpu_aux}") if ctx.pin else \
        "not pinned (--no-pin): all processes share all cores"
    res = {"started": started.isoformat(timespec="seconds"), "quick": a.quick,
           "environment": {"cpus": ncpu, "cpu_model": cpu_model, "pinning": pinning,
                           "kernel": os.uname().release, "nginx": subprocess.run(
                               ["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                           "litellm": LITELLM_VERSION if a.litellm else None},
           "overhead": None, "streaming": None, "console": None, "nothing_lost": [], "profile": {},
           "pg_scale": None, "pg_console": None}
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
        key = create_key(tc)
        tc_counts = {"token-console": {"sent": 0, "ok": 0}}
        if "overhead" not in skip:
            log("1. gateway overhead")
            nginx = start_nginx(ctx, mock)
            procs.append(nginx)
            targets = {"direct": {"url": mock.url, "proc": mock, "headers": [f"Authorization: Bearer {MOCK_KEY}"]},
                       "nginx": {"url": nginx.url, "proc": nginx, "headers": ["Authorization: Bearer sk-client"]},
                       "token-console": {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {key}"]}}
            pg_tc = None
            if "pg-overhead" not in skip:
                pg_over = PgScratch(ctx, "pg-overhead")
                procs.append(pg_over.proc)
                pg_tc = start_tc(ctx, "tc-postgres", gateway_config(ctx, mock, url=pg_over.url))
                procs.append(pg_tc)  # stopped (procs in reverse) before its database is dropped
                targets["tc-postgres"] = {"url": pg_tc.url, "proc": pg_tc, "db": pg_over,
                                          "headers": [f"Authorization: Bearer {create_key(pg_tc)}"]}
                tc_counts["tc-postgres"] = {"sent": 0, "ok": 0}
            if a.litellm:
                lite = start_litellm(ctx, mock)
                procs.append(lite)
                targets["litellm"] = {"url": lite.url, "proc": lite, "headers": []}
            idle = {name: t["proc"].rss_kb() for name, t in targets.items()}
            runs, sat = overhead(ctx, targets, tc_counts)
            summary = {}
            for name, t in targets.items():
                mine = [r for r in runs if r["target"] == name and "latency_ms" in r]
                s = next(x for x in sat if x["target"] == name)
                summary[name] = {
                    "saturation_rps": s["achieved_rate"] if s["measured"]["errors"] == 0 else 0.0,
                    "saturation_errors": s["measured"]["errors"],
                    "highest_sustained_open_loop": max([r["rate"] for r in mine if r["sustained"]], default=0),
                    "rss_idle_kb": idle[name],
                    "rss_load_peak_kb": max([r["rss_peak_kb"] for r in mine + [s]], default=0),
                    "rss_hwm_kb": t["proc"].hwm_kb(),
                }
            for name in summary:
                if "nginx" in summary and summary["nginx"]["saturation_rps"]:
                    summary[name]["vs_nginx"] = summary[name]["saturation_rps"] / summary["nginx"]["saturation_rps"]
            res["overhead"] = {"request_bytes": (BENCH / "request.json").stat().st_size,
                               "response_bytes": next(r["response_bytes"] for r in runs if "response_bytes" in r),
                               "runs": runs, "saturation": sat, "summary": summary}
            res["nothing_lost"].append(nothing_lost(tc, tc_counts["token-console"], "overhead"))
            if pg_tc is not None:
                res["nothing_lost"].append(nothing_lost(pg_tc, tc_counts["tc-postgres"], "overhead (PostgreSQL)"))
                pg_tc.stop()
                pg_over.stop()
            nginx.stop()
        if "stream" not in skip:
            log("2. streaming")
            s = streaming(ctx, mock, tc, key, tc_counts["token-console"])
            d, g = s["direct"], s["token_console"]
            s["added"] = {k: g[m].get(q, 0) - d[m].get(q, 0) for k, m, q in (
                ("ttft_p50", "ttft_ms", "p50"), ("ttft_p99", "ttft_ms", "p99"),
                ("gap_p50", "gap_ms", "p50"), ("gap_p99", "gap_ms", "p99"))}
            res["streaming"] = s
            res["nothing_lost"].append(nothing_lost(tc, tc_counts["token-console"], "streaming"))
        if "profile" not in skip:
            log("5. profile")
            res["profile"]["perf"] = perf_profile(ctx, tc, key)
        tc.stop()
        if "profile" not in skip:
            res["profile"]["callgrind"] = callgrind_profile(ctx, mock)
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
    res["targets"] = evaluate(res)
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if a.quick else ''}.json"
    res["results_file"] = str(out.relative_to(ROOT))
    out.write_text(json.dumps(res, indent=1))
    print_report(res)


if __name__ == "__main__":
    main()
