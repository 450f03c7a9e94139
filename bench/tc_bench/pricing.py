"""What pricing a call costs, beside what the whole call costs the gateway in the same run: the
in-process time of `PriceBook::cost_of` (tools/loadgen's `price-bench`: a model from the bundled
table, one from a config override, an unknown model) over token-console's CPU per request at
closed-loop saturation in section 1. Pricing has no off switch in the product (every call is
priced in the meter), so this ratio, not a second build, is the with/without comparison."""

import json
import subprocess

from .common import RELEASE, log

PRICE_BENCH = RELEASE / "price-bench"


def pricing_share(ctx, overhead):
    """The price-bench figures and, when section 1 ran, each case's share of the gateway's CPU per
    call at saturation."""
    argv = ([] if ctx.cpu_sut is None else ["taskset", "-c", ctx.cpu_sut]) + [str(PRICE_BENCH)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()}
    res = {"price_bench": json.loads(out.stdout)}
    sat = next((s for s in (overhead or {}).get("saturation", []) if s["target"] == "token-console"), None)
    if sat and sat.get("cpu_us_per_req"):
        per_call_ns = sat["cpu_us_per_req"] * 1000
        res["gateway_cpu_ns_per_call"] = per_call_ns
        res["share_of_call_cpu"] = {
            case: round(v["ns_per_call"] / per_call_ns, 5)
            for case, v in res["price_bench"].items() if isinstance(v, dict)}
        res["with_over_without"] = {
            case: round(per_call_ns / (per_call_ns - v["ns_per_call"]), 5)
            for case, v in res["price_bench"].items() if isinstance(v, dict)}
    log("  pricing: " + ", ".join(f"{k} {v['ns_per_call']} ns" for k, v in res["price_bench"].items()
                                  if isinstance(v, dict))
        + (f"; gateway {res['gateway_cpu_ns_per_call']:.0f} ns CPU per call" if "gateway_cpu_ns_per_call" in res else ""))
    return res
