"""Section 3, nothing lost: the store's records against what the load generator sent and got back,
once the recorder has written everything."""

import time

from .common import http_json, log


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


def store_counts(tc):
    """Once the recorder has written everything: (calls, successes, recorder written, dropped)."""
    h = drained(tc)
    s = http_json(f"{tc.url}/api/console/stats")["data"]
    return s["api_call_count"], s["success_count"], h["recorder"]["written"], h["recorder"]["dropped"]


def run_records(before, after, sent, ok):
    """One run's check from store_counts() before and after it, against a generator that knows
    what it sent (loadgen waits for every answer): records = sent, successes = 2xx answers, every
    record written, none dropped."""
    calls, successes, written, dropped = (a - b for a, b in zip(after, before))
    return {"calls": calls, "successes": successes, "written": written, "dropped": dropped,
            "rule": "records = sent, successes = answered 2xx",
            "ok": calls == sent and successes == ok and written == calls and dropped == 0}


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
