"""Section 2, streaming: many concurrent long streams through the gateway and directly; TTFT and
the gaps between chunks."""

import json

from .common import MOCK_KEY, log
from .loadgen import loadgen
from .procs import RssSampler


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
