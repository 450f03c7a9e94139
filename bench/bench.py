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
5. profile of the gateway under load (perf cpu-clock sampling, and callgrind).

Prints tables and writes bench/results/<timestamp>.json. This is a measurement, not a test: it
asserts nothing about time.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RELEASE = ROOT / "target" / "release"
LOADGEN = RELEASE / "loadgen"
MOCK = RELEASE / "mock-upstream"
TC = RELEASE / "token-console"
FILL = RELEASE / "console-fill"
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

    def __init__(self, name, argv, cpus=None, env=None, ready=None, timeout=60, cwd=None, logdir=None):
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
            stdin=subprocess.DEVNULL,
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


def start_tc(ctx, name, config_text, extra=(), wrapper=(), timeout=60):
    conf = Path(ctx.work) / f"{name}.yaml"
    conf.write_text(config_text)
    argv = list(wrapper) + [TC, "--config", conf, "--port", "0"] + list(extra)
    p = Proc(name, argv, cpus=ctx.cpu_sut, env=tc_env(), logdir=ctx.work,
             ready=r"token-console ready gateway=(\S+) console=(\S+)", timeout=timeout)
    p.url = p.match.group(1)
    return p


def gateway_config(ctx, mock, db):
    return f"""host: 127.0.0.1
database_url: sqlite://{db}
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
    """Every rate through every target, interleaved so that noise hits them alike."""
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
        cpu0 = proc.cpu()
        with RssSampler(proc) as rss:
            r = loadgen(args, ctx.cpu_load)
        cpu = proc.cpu() - cpu0
        sent = r["all"]["sent"]
        if name == "token-console":
            tc_counts["sent"] += sent
            tc_counts["ok"] += r["all"]["ok"]
        lat = r["latency_ms"]
        sustained = r["measured"]["errors"] == 0 and lat.get("p99", 1e9) < SLO_P99_MS
        run = {"target": name, "rate": rate, "connections": connections, "duration_s": duration,
               "latency_ms": lat, "service_ms": r["service_ms"], "achieved_rate": r["achieved_rate"],
               "measured": r["measured"], "all": r["all"], "response_bytes": r["response_bytes"],
               "cpu_s": round(cpu, 3), "cpu_us_per_req": round(cpu / sent * 1e6, 1) if sent else None,
               "rss_peak_kb": rss.peak_kb, "sustained": sustained}
        log(f"  {name:14} rate {rate or 'max':>5}: p50 {lat.get('p50')} p99 {lat.get('p99')} ms, "
            f"{r['achieved_rate']:.0f} req/s, errors {r['measured']['errors']}, cpu {run['cpu_us_per_req']} µs/req")
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


def nothing_lost(tc, counts, label):
    """Waits for the recorder to write everything, then compares with the load generator."""
    last, stable_since = None, time.time()
    deadline = time.time() + 60
    while time.time() < deadline:
        h = http_json(f"{tc.url}/healthz")
        written = h["recorder"]["written"]
        if h["recorder"]["queued"] == 0 and written == last and time.time() - stable_since > 0.5:
            break
        if written != last:
            last, stable_since = written, time.time()
        time.sleep(0.1)
    stats = http_json(f"{tc.url}/api/console/stats")["data"]
    rec = h["recorder"]
    result = {
        "label": label,
        "loadgen_sent": counts["sent"], "loadgen_ok": counts["ok"],
        "store_api_call_count": stats["api_call_count"], "store_success_count": stats["success_count"],
        "recorder_written": rec["written"], "recorder_dropped": rec["dropped"],
    }
    result["lost"] = counts["sent"] - stats["api_call_count"]
    result["ok"] = (stats["success_count"] == counts["ok"] and stats["api_call_count"] == counts["sent"]
                    and rec["dropped"] == 0 and rec["written"] == stats["api_call_count"])
    log(f"  nothing lost ({label}): loadgen sent {counts['sent']} ok {counts['ok']}; store calls "
        f"{stats['api_call_count']} successes {stats['success_count']}; written {rec['written']} "
        f"dropped {rec['dropped']} -> {'OK' if result['ok'] else 'MISMATCH'}")
    return result


# ---------------------------------------------------------------- 4. console speed at volume


def console_volume(ctx):
    db = Path(ctx.work) / "console.db"
    log(f"  filling {ctx.calls:,} calls through the recorder (max_logs 1,000,000) …")
    # Not pinned: the producer (standing in for the gateway's handlers) and the recorder's writer
    # thread run side by side, as they do in the gateway.
    fill = subprocess.run(
        [str(FILL), "--db", str(db), "--calls", str(ctx.calls), "--max-logs", "1000000"],
        capture_output=True, text=True)
    if fill.returncode != 0:
        raise RuntimeError(f"console-fill failed: {fill.stderr}")
    filled = json.loads(fill.stdout)
    log(f"  recorder: {filled['records_per_s']:,.0f} records/s sustained over {filled['calls']:,} "
        f"({filled['seconds']:.1f} s; slowest 1M segment {filled['min_segment_records_per_s']:,.0f}/s), "
        f"dropped {filled['dropped']}")
    tc = start_tc(ctx, "tc-console", f"host: 127.0.0.1\ndatabase_url: sqlite://{db}\ntimezone: UTC\n"
                  "console:\n  max_logs: 1000000\n  max_keys: 1000\n", timeout=300)
    try:
        newest = http_json(f"{tc.url}/api/console/logs?limit=1")["data"][0]["id"]
        retained = min(ctx.calls, 1_000_000)
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
        for label, path in queries:
            r = loadgen(["get", "--url", tc.url + path, "--reps", ctx.reps, "--warmup-reps", 2,
                         "--timeout", 60], ctx.cpu_load)
            timings.append({"query": label, "path": path, "latency_ms": r["latency_ms"],
                            "failures": r["failures"], "response_bytes": r["response_bytes"]})
            log(f"  {label:34} p50 {r['latency_ms'].get('p50'):>8} p99 {r['latency_ms'].get('p99'):>8} ms"
                f"  ({r['response_bytes']:,} bytes, failures {r['failures']})")
        exports = []
        for label, path in (("export json", f"{api}/export"), ("export csv", f"{api}/export?format=csv")):
            tc.reset_hwm()
            before = tc.rss_kb()
            r = loadgen(["get", "--url", tc.url + path, "--reps", ctx.export_reps, "--warmup-reps", 0,
                         "--timeout", 600], ctx.cpu_load)
            exports.append({"query": label, "latency_ms": r["latency_ms"], "failures": r["failures"],
                            "response_bytes": r["response_bytes"], "rss_before_kb": before,
                            "rss_peak_kb": tc.hwm_kb()})
            log(f"  {label:34} {r['latency_ms'].get('p50')} ms for {r['response_bytes']:,} bytes; "
                f"RSS {before / 1024:.1f} MB before, peak {tc.hwm_kb() / 1024:.1f} MB")
    finally:
        tc.stop()
    return {"fill": filled, "queries": timings, "exports": exports, "retained_rows": min(ctx.calls, 1_000_000)}


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


def print_report(res):
    p = print
    env = res["environment"]
    p("\n" + "=" * 100)
    p(f"token-console benchmarks  {res['started']}  ({'quick' if res['quick'] else 'full'} run)")
    p(f"machine: {env['cpus']} CPUs, {env['cpu_model']}; {env['pinning']}")
    p("The load generator shares this machine's cores with what it measures; every comparison below is")
    p("made side by side in this same run (targets interleaved rate by rate), so ratios are what count.")
    p("=" * 100)
    o = res["overhead"]
    if not o:
        o = {"runs": [], "saturation": [], "summary": {}, "request_bytes": 0, "response_bytes": 0}
    floor = {r["rate"]: r for r in o["runs"] if r["target"] == "direct" and "latency_ms" in r}
    p(f"\n1. Gateway overhead: non-stream chat completion ({o['request_bytes']:,} B request, "
      f"{o['response_bytes']:,} B answer), open loop, latency from intended send time (ms)")
    rows = []
    for r in o["runs"] + [dict(s, rate="max") for s in o["saturation"]]:
        if "skipped" in r:
            rows.append([r["rate"], r["target"], "skipped"] + [""] * 10)
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
                     f"{r['achieved_rate']:.0f}", r["measured"]["errors"], fmt(r["cpu_us_per_req"], 1),
                     f"{r['rss_peak_kb'] / 1024:.1f}"])
    p(table(rows, ["req/s", "target", "p50", "p90", "p99", "max", "+p50", "+p99", "p99 x floor",
                   "done/s", "errors", "CPU us/req", "RSS MB"]))
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
    p("\n3. Nothing lost (token-console):")
    for n in res["nothing_lost"]:
        p(f"  {n['label']:10} loadgen sent {n['loadgen_sent']:,}, ok {n['loadgen_ok']:,} | store calls "
          f"{n['store_api_call_count']:,}, successes {n['store_success_count']:,} | recorder written "
          f"{n['recorder_written']:,}, dropped {n['recorder_dropped']} -> {'OK' if n['ok'] else 'MISMATCH'}")
    c = res["console"]
    if c:
        f = c["fill"]
        p(f"\n4. Console speed at volume: {f['calls']:,} calls, {f['keys']} keys, {f['models']} models, "
          f"{f['days']} days; max_logs {f['max_logs']:,} ({c['retained_rows']:,} rows retained); "
          f"database {f['db_bytes'] / 2**20:,.0f} MiB")
        p(f"  recorder: {f['records_per_s']:,.0f} records/s sustained ({f['seconds']:.1f} s; slowest 1M "
          f"segment {f['min_segment_records_per_s']:,.0f}/s), dropped {f['dropped']}")
        rows = [[q["query"], fmt(q["latency_ms"].get("p50"), 3), fmt(q["latency_ms"].get("p99"), 3),
                 fmt(q["latency_ms"].get("max"), 3), f"{q['response_bytes']:,}", q["failures"]] for q in c["queries"]]
        p(table(rows, ["console call (50 reps)", "p50 ms", "p99 ms", "max ms", "bytes", "failures"]))
        for e in c["exports"]:
            p(f"  {e['query']}: {e['latency_ms'].get('p50'):,.0f} ms (p50 of {e['latency_ms']['count']}) for "
              f"{e['response_bytes'] / 2**20:,.1f} MiB; RSS {e['rss_before_kb'] / 1024:.1f} MB before, "
              f"peak {e['rss_peak_kb'] / 1024:.1f} MB")
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
    else:
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
    lost = res["nothing_lost"]
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
    ap.add_argument("--skip", default="", help="comma list of sections to skip: overhead,stream,console,profile")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
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
           "overhead": None, "streaming": None, "console": None, "nothing_lost": [], "profile": {}}
    procs = []
    try:
        mock = start_mock(ctx)
        procs.append(mock)
        tc = start_tc(ctx, "token-console", gateway_config(ctx, mock, Path(ctx.work) / "gateway.db"))
        procs.append(tc)
        key = create_key(tc)
        tc_counts = {"sent": 0, "ok": 0}
        if "overhead" not in skip:
            log("1. gateway overhead")
            nginx = start_nginx(ctx, mock)
            procs.append(nginx)
            targets = {"direct": {"url": mock.url, "proc": mock, "headers": [f"Authorization: Bearer {MOCK_KEY}"]},
                       "nginx": {"url": nginx.url, "proc": nginx, "headers": ["Authorization: Bearer sk-client"]},
                       "token-console": {"url": tc.url, "proc": tc, "headers": [f"Authorization: Bearer {key}"]}}
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
            res["nothing_lost"].append(nothing_lost(tc, tc_counts, "overhead"))
            nginx.stop()
        if "stream" not in skip:
            log("2. streaming")
            s = streaming(ctx, mock, tc, key, tc_counts)
            d, g = s["direct"], s["token_console"]
            s["added"] = {k: g[m].get(q, 0) - d[m].get(q, 0) for k, m, q in (
                ("ttft_p50", "ttft_ms", "p50"), ("ttft_p99", "ttft_ms", "p99"),
                ("gap_p50", "gap_ms", "p50"), ("gap_p99", "gap_ms", "p99"))}
            res["streaming"] = s
            res["nothing_lost"].append(nothing_lost(tc, tc_counts, "streaming"))
        if "profile" not in skip:
            log("5. profile")
            res["profile"]["perf"] = perf_profile(ctx, tc, key)
        tc.stop()
        if "profile" not in skip:
            res["profile"]["callgrind"] = callgrind_profile(ctx, mock)
        if "console" not in skip:
            log("4. console speed at volume")
            res["console"] = console_volume(ctx)
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
