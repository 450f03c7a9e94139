"""The issue's targets, each judged against this run's figures (met, not met, or not run)."""


def added_met(added):
    """A p99 added over the floor is judged only when the floor was the faster: a negative figure
    means the floor's own run was the noisier one (another process took the core), not that the
    gateway took time away."""
    return None if added < 0 else added <= 1.0


def evaluate(res):
    t = []
    o = res["overhead"] or {"runs": [], "summary": {}}
    by = {(r["target"], r["rate"]): r for r in o["runs"] if "latency_ms" in r}
    tc, fl = by.get(("token-console", 1000)), by.get(("direct", 1000))
    if tc and fl:
        added = tc["latency_ms"]["p99"] - fl["latency_ms"]["p99"]
        t.append({"target": "recording on, 1000 req/s: p99 added over the floor <= 1 ms",
                  "figure": f"{added:.3f} ms (token-console p99 {tc['latency_ms']['p99']} vs floor {fl['latency_ms']['p99']})",
                  "met": added_met(added)})
    summ = o["summary"]
    if "vs_nginx" in summ.get("token-console", {}):
        v = summ["token-console"]["vs_nginx"]
        t.append({"target": "highest error-free rate >= 0.8 x nginx, plain key (loadgen, pinned)", "figure": f"{v:.2f} x "
                  f"({summ['token-console']['saturation_rps']:.0f} vs {summ['nginx']['saturation_rps']:.0f} req/s)",
                  "met": v >= 0.8})
    if "tc-budget-rpm" in summ and "vs_nginx" in summ["tc-budget-rpm"]:
        v = summ["tc-budget-rpm"]["vs_nginx"]
        t.append({"target": "highest error-free rate >= 0.8 x nginx, key with budget + RPM (loadgen, pinned)",
                  "figure": f"{v:.2f} x", "met": v >= 0.8})
    ind = res.get("independent")
    if ind:
        for name in ("tc-budget-rpm", "token-console"):
            s = ind["summary"]["wrk"][name]
            v = s["vs_nginx"]
            what = "key with token budget + RPM limit" if name == "tc-budget-rpm" else "plain key"
            t.append({"target": f"highest error-free rate >= 0.8 x nginx with wrk, recording every call, {what}",
                      "figure": f"{v:.2f} x (median of round ratios {s['vs_nginx_each']}; "
                                f"{s['error_free_rps_median']:.0f} req/s vs nginx "
                                f"{ind['summary']['wrk']['nginx']['error_free_rps_median']:.0f})" if v is not None
                      else "no error-free nginx run", "met": v >= 0.8 if v is not None else None})
        t.append({"target": "records = answers in every wrk/loadgen run of section 1b",
                  "figure": "all OK" if ind["nothing_lost_ok"] else "MISMATCH (see section 1b)",
                  "met": ind["nothing_lost_ok"]})
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
        usage = [x for x in c["queries"] if x["query"].startswith(("usage user,day", "usage day,user"))]
        if usage:
            worst = max(x["latency_ms"]["p99"] for x in usage)
            t.append({"target": f"/usage grouped by user and day <= 50 ms p99 at {c['fill']['calls']:,} calls "
                                f"({c['fill'].get('users', '?'):,} users; 7, 30 and 90 days)",
                      "figure": "; ".join(f"{x['query'].removeprefix('usage ')} {x['latency_ms']['p99']} ms"
                                          for x in usage),
                      "met": worst <= 50})
        rps = c["fill"]["records_per_s"]
        t.append({"target": "recorder >= 100,000 records/s sustained", "figure": f"{rps:,.0f} records/s",
                  "met": rps >= 100_000})
    pg = by.get(("tc-postgres", 1000))
    if pg and fl:
        added = pg["latency_ms"]["p99"] - fl["latency_ms"]["p99"]
        t.append({"target": "PostgreSQL recording, 1000 req/s: p99 added over the floor <= 1 ms",
                  "figure": f"{added:.3f} ms (tc-postgres p99 {pg['latency_ms']['p99']} vs floor "
                            f"{fl['latency_ms']['p99']}; SQLite token-console {tc['latency_ms']['p99'] if tc else '-'})",
                  "met": added_met(added)})
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
    src = res.get("sources")
    if src:
        for r in src["runs"]:
            t.append({"target": f"ingest >= 5,000 records/s, every record stored once ({r['mode']} mode)",
                      "figure": f"{r['records_per_s']:,} records/s ({r['stored']:,} of {r['records']:,} stored)",
                      "met": r["records_per_s"] >= 5000 and r["ok"]})
    lost = res["nothing_lost"]
    per_run = [r for r in o["runs"] + o.get("saturation", []) if "records" in r]
    if per_run:
        bad = sum(not r["records"]["ok"] for r in per_run)
        t.append({"target": "records = sent in every run of section 1 (checked run by run)",
                  "figure": f"{len(per_run) - bad} of {len(per_run)} runs OK", "met": bad == 0})
    if not lost:
        return t
    t.append({"target": "0 records lost, in every run",
              "figure": "; ".join(f"{n['label']}: lost {n['lost']}, dropped {n['recorder_dropped']}" for n in lost),
              "met": all(n["ok"] for n in lost)})
    return t
