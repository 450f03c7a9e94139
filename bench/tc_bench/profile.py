"""Section 5: where the gateway's CPU goes under load — perf's cpu-clock sampling and callgrind's
instruction counts."""

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .common import BENCH, log
from .loadgen import loadgen
from .systems import create_key, gateway_config, start_tc


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
