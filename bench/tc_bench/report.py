"""The printed report: one table or paragraph per section, then the targets."""

from .common import SLO_P99_MS


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
    c = res.get("commit") or {}
    p(f"commit: {c.get('sha')} ({c.get('branch')}{', with uncommitted changes' if c.get('dirty') else ''})")
    p(f"machine: {env['cpus']} CPUs, {env['cpu_model']}; {env['pinning']}; load average at start "
      f"{' '.join(f'{x:.2f}' for x in env.get('load_average_at_start', []))}, at end "
      f"{' '.join(f'{x:.2f}' for x in env.get('load_average_at_end', []))}")
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
    if res.get("independent"):
        print_independent(res["independent"])
    if res.get("pricing"):
        print_pricing(res["pricing"])
    print_rest(res)


def print_pricing(pr):
    p = print
    if "error" in pr:
        p(f"\n1c. Pricing: price-bench failed: {pr['error']}")
        return
    pb = pr["price_bench"]
    p(f"\n1c. Pricing one call in-process (PriceBook::cost_of, {pb['calls_per_case']:,} calls per case; "
      f"table loaded in {pb['table_load_ms']} ms at start-up)")
    for case, v in pb.items():
        if not isinstance(v, dict):
            continue
        share = pr.get("share_of_call_cpu", {}).get(case)
        ratio = pr.get("with_over_without", {}).get(case)
        p(f"    {case:14} {v['model']:24} {v['ns_per_call']:>8} ns"
          + (f"  = {share * 100:.3f}% of the gateway's {pr['gateway_cpu_ns_per_call']:.0f} ns CPU per call; "
             f"with/without {ratio:.4f}" if share is not None else ""))


def print_independent(ind):
    p = print
    p(f"\n1b. Independent generator: {ind['generators']['wrk']}, {ind['wrk_threads']} thread, "
      f"{ind['connections']} connections, {ind['duration_s']} s per run, {ind['rounds']} round(s);")
    p(f"    loadgen beside it (closed loop, same connections and time). {ind['placement']};")
    p(f"    upstream: {ind['upstream']}. tc-budget-rpm: token-console with a key that has a token budget "
      f"({ind['limited_key']['token_limit']:,}) and an RPM limit ({ind['limited_key']['rpm_limit']:,}).")
    rows = []
    for gen, targets in ind["summary"].items():
        for name, s in targets.items():
            rows.append([gen, name, fmt(s["error_free_rps_median"], 0),
                         " / ".join(str(x) for x in s["error_free_rps_each"]),
                         fmt(s["vs_nginx"], 2), s["errors"], fmt(s["p99_ms_median"], 2),
                         fmt(s["cpu_us_per_call_median"], 1)])
    p(table(rows, ["generator", "target", "error-free req/s (median)", "each round", "x nginx (same round)",
                   "errors", "p99 ms", "CPU us/call"]))
    checks = [r for r in ind["runs"] if "records" in r]
    bad = [r for r in checks if not r["records"]["ok"]]
    p(f"  records = answers: {len(checks) - len(bad)} of {len(checks)} token-console runs OK"
      + ("" if not bad else "; MISMATCH in " + ", ".join(
          f"{r['generator']} {r['target']} round {r['round']} ({r['records']['calls']} records, "
          f"{r['answered']} answers, {r['records']['dropped']} dropped)" for r in bad)))
    others = [r["other_processes_cores"] for r in ind["runs"]]
    rss = ind["token_console_rss_kb"]
    p(f"  other processes on the machine during the runs: {min(others):.2f}-{max(others):.2f} cores; "
      f"token-console RSS idle {rss['idle'] / 1024:.1f} MB, after the runs {rss['after_runs'] / 1024:.1f} MB, "
      f"VmHWM {rss['hwm'] / 1024:.1f} MB")


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
    checks = [r for r in o["runs"] + o["saturation"] if "records" in r]
    bad = [r for r in checks if not r["records"]["ok"]]
    if checks:
        p(f"  records = sent, run by run: {len(checks) - len(bad)} of {len(checks)} token-console runs OK"
          + ("" if not bad else "; MISMATCH in " + ", ".join(
              f"{r['target']} at {r['rate'] or 'max'} ({r['records']['calls']} records of {r['all']['sent']} sent, "
              f"{r['records']['dropped']} dropped)" for r in bad)))
    p("\n  highest error-free rate (closed-loop saturation, 0 errors) and resident memory:")
    rows = []
    for name, s in o["summary"].items():
        rows.append([name, fmt(s["saturation_rps"], 0), fmt(s.get("vs_nginx"), 2), fmt(s["highest_sustained_open_loop"], 0),
                     f"{s['rss_idle_kb'] / 1024:.1f}", f"{s['rss_load_peak_kb'] / 1024:.1f}",
                     f"{s['rss_hwm_kb'] / 1024:.1f}"])
    p(table(rows, ["target", "max req/s", "x nginx", "highest open-loop rate ok", "RSS idle MB",
                   "RSS load peak MB", "VmHWM MB"]))


def print_rest(res):
    p = print
    src = res.get("sources")
    if src:
        p("\n8. Usage sources: fake CLIProxyAPI records ingested (stored and counted by the console)")
        for r in src["runs"]:
            p(f"  {r['mode']:<10} {r['stored']:>8,} of {r['records']:,} records in {r['seconds']:.2f} s: "
              f"{r['records_per_s']:,} records/s; lost to a slow subscriber {r['lost_to_slow_subscribers']}")
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
