#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (stdlib only).

  report.py ab --abfile F --scenario S --target T --round R --requested N
               [--cpu-ticks D --clk-tck HZ]
      Parse one ApacheBench output and print one JSON record (a line).

  report.py progress --raw raw.jsonl --rounds N
      Print a one-line summary of the last raw record (progress on stderr).

  report.py table --raw raw.jsonl --out PREFIX [--meta KEY=VALUE ...]
      Aggregate the raw records (medians over rounds), print the Markdown report
      on stdout and save PREFIX.md, PREFIX.json (meta, medians and every raw
      record) and PREFIX.csv (the raw per-round numbers).
"""

import argparse
import csv
import json
import re
import statistics
import sys

ALL_TARGETS = ["direct", "haproxy", "haproxy-splice", "nginx", "tcplb", "tcplb-base",
               "tcplb-config"]
TARGET_TITLES = {"direct": "direct", "haproxy": "HAProxy", "haproxy-splice": "HAProxy splice",
                 "nginx": "nginx stream", "tcplb": "tcplb", "tcplb-base": "tcplb base",
                 "tcplb-config": "tcplb config"}
# More ratio columns: (numerator, denominator, title), where both are in the run.
RATIO_PAIRS = [("tcplb-config", "tcplb-base", "config/base"),
               ("tcplb-config", "tcplb", "config/flags")]
# Ratio columns: tcplb ÷ each of these (those present in the run).
RATIO_TO = ["haproxy", "haproxy-splice", "nginx", "tcplb-base"]
RATIO_TITLES = {"haproxy": "tcplb/HAProxy", "haproxy-splice": "tcplb/HAProxy splice",
                "nginx": "tcplb/nginx", "tcplb-base": "tcplb/base"}
TARGETS = list(ALL_TARGETS)  # narrowed to the targets in the raw records by load_raw
EXIT_FAILURES = 3  # `table` exit status when some requests failed

# ---------------------------------------------------------------------------
# ab output parsing


def _num(pattern, text, cast=float):
    m = re.search(pattern, text, re.MULTILINE)
    return cast(m.group(1)) if m else None


def parse_ab(text):
    """Return the figures of one ab run (None where ab did not print them)."""
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.MULTILINE))
    return {
        "complete": _num(r"^Complete requests:\s+(\d+)", text, int),
        "ab_failed": _num(r"^Failed requests:\s+(\d+)", text, int),
        "non2xx": _num(r"^Non-2xx responses:\s+(\d+)", text, int) or 0,
        "time_s": _num(r"^Time taken for tests:\s+([\d.]+)", text),
        "total_bytes": _num(r"^Total transferred:\s+(\d+)", text, int),
        "rps": _num(r"^Requests per second:\s+([\d.]+)", text),
        "kbps": _num(r"^Transfer rate:\s+([\d.]+)", text),
        "p50_ms": float(pct["50"]) if "50" in pct else None,
        "p99_ms": float(pct["99"]) if "99" in pct else None,
    }


def cmd_ab(args):
    with open(args.abfile, encoding="utf-8", errors="replace") as f:
        text = f.read()
    r = parse_ab(text)
    complete = r["complete"] or 0
    rec = {
        "scenario": args.scenario, "target": args.target, "round": args.round,
        "requested": args.requested, "ab_rc": args.ab_rc,
        **r,
        "mibps": r["kbps"] / 1024 if r["kbps"] is not None else None,
    }
    # Everything not answered correctly counts: ab's failures, non-2xx answers,
    # and requests never completed because ab gave up.
    rec["failed"] = (args.requested - complete) + (r["ab_failed"] or 0) + r["non2xx"]
    if args.cpu_ticks is not None:
        cpu_s = args.cpu_ticks / args.clk_tck
        rec["cpu_ticks"] = args.cpu_ticks
        rec["cpu_s"] = cpu_s
        rec["cpu_us_per_req"] = cpu_s * 1e6 / complete if complete else None
        mib = (r["total_bytes"] or 0) / 2**20
        rec["mib_per_cpu_s"] = mib / cpu_s if cpu_s > 0 else None
        rec["cpu_ms_per_64mib"] = cpu_s * 1000 / (mib / 64) if mib > 0 else None
    if r["p50_ms"] and r["p99_ms"] is not None:
        rec["p99_over_p50"] = r["p99_ms"] / r["p50_ms"]
    print(json.dumps(rec))


def cmd_progress(args):
    with open(args.raw, encoding="utf-8") as f:
        r = json.loads(f.readlines()[-1])

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    head = f"[bench] round {r['round']}/{args.rounds} {r['scenario']:9} {r['target']:7}:"
    if r["scenario"] == "idle":
        msg = (f"{head} {r['ok']} conns open in {r['open_seconds']} s, RSS "
               f"{r['rss_before_kib'] / 1024:.1f} -> {r['rss_open_kib'] / 1024:.1f} MiB = "
               f"{r['kib_per_conn']} KiB/conn")
        if r["failed"]:
            msg += f"  !!! FAILED {r['failed']}: {r['errors']}"
    else:
        msg = (f"{head} {f(r['rps'], '8.0f')} req/s {f(r['mibps'], '7.1f')} MiB/s "
               f"p50 {f(r['p50_ms'], '.0f')} p99 {f(r['p99_ms'], '.0f')} ms")
        if "cpu_us_per_req" in r:
            msg += (f"  proxy CPU {r['cpu_ticks']} ticks = "
                    f"{f(r['cpu_us_per_req'], '.1f')} us/req")
        if r["failed"] or r["ab_rc"]:
            msg += f"  !!! FAILED {r['failed']} (ab exit {r['ab_rc']})"
    print(msg)


# ---------------------------------------------------------------------------
# aggregation

# (scenario, metric title, record key, aggregate, headline?)
#   aggregate: "median" over rounds, "sum" over rounds, "first" = round 1 only,
#   "later" = median over rounds 2..N.  The idle figure uses "first": the first time
#   a proxy holds that many connections is what they cost; in later rounds all three
#   proxies reuse memory they kept from round 1 (allocator caches, pools, slabs), so
#   RSS barely grows and the difference says little about per-connection cost.
ROWS = [
    ("startup", "proxy RSS MiB ↓", "rss_mib", "median", True),
    ("conn", "req/s ↑", "rps", "median", True),
    ("conn", "MiB/s ↑", "mibps", "median", False),
    ("conn", "p50 ms ↓", "p50_ms", "median", False),
    ("conn", "p99 ms ↓", "p99_ms", "median", False),
    ("conn", "failed requests (all rounds)", "failed", "sum", False),
    ("conn", "proxy CPU µs/req ↓", "cpu_us_per_req", "median", True),
    ("keepalive", "req/s ↑", "rps", "median", False),
    ("keepalive", "MiB/s ↑", "mibps", "median", False),
    ("keepalive", "p50 ms ↓", "p50_ms", "median", False),
    ("keepalive", "p99 ms ↓", "p99_ms", "median", False),
    ("keepalive", "failed requests (all rounds)", "failed", "sum", False),
    ("keepalive", "proxy CPU µs/req ↓", "cpu_us_per_req", "median", True),
    ("bulk", "req/s ↑", "rps", "median", False),
    ("bulk", "MiB/s ↑", "mibps", "median", False),
    ("bulk", "p50 ms ↓", "p50_ms", "median", False),
    ("bulk", "p99 ms ↓", "p99_ms", "median", False),
    ("bulk", "p99 / p50 (fairness) ↓", "p99_over_p50", "median", False),
    ("bulk", "failed requests (all rounds)", "failed", "sum", False),
    ("bulk", "proxy CPU ms per 64 MiB ↓", "cpu_ms_per_64mib", "median", True),
    ("bulk", "MiB moved per proxy CPU-s ↑", "mib_per_cpu_s", "median", True),
    ("idle", "proxy RSS MiB before ↓", "rss_before_mib", "median", False),
    ("idle", "proxy RSS MiB with conns open ↓", "rss_open_mib", "median", False),
    ("idle", "failed connections (all rounds)", "failed", "sum", False),
    ("idle", "KiB per idle conn, round 1 ↓", "kib_per_conn", "first", True),
    ("idle", "KiB per idle conn, later rounds ↓", "kib_per_conn", "later", False),
]


def load_raw(path):
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    for r in recs:  # derived MiB figures
        for k in ("rss_kib", "rss_before_kib", "rss_open_kib"):
            if r.get(k) is not None:
                r[k.replace("_kib", "_mib")] = r[k] / 1024
    present = {r["target"] for r in recs}
    TARGETS[:] = [t for t in ALL_TARGETS if t in present]
    return recs


def aggregate(recs):
    """{(scenario, key, aggregate, target): (value, [per-round values])}"""
    out = {}
    for scenario, _title, key, how, _headline in ROWS:
        for t in TARGETS:
            rows = sorted((r for r in recs if r["scenario"] == scenario and r["target"] == t
                           and r.get(key) is not None), key=lambda r: r["round"])
            if how == "first":
                rows = rows[:1]
            elif how == "later":
                rows = rows[1:]
            vals = [r[key] for r in rows]
            if not vals:
                continue
            agg = sum(vals) if how == "sum" else statistics.median(vals)
            out[(scenario, key, how, t)] = (agg, vals)
    return out


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    a = abs(v)
    if v.is_integer() and a < 1000:
        return str(int(v))
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def spread(vals):
    """(max - min) / median, in percent."""
    if len(vals) < 2:
        return None
    med = statistics.median(vals)
    return (max(vals) - min(vals)) / med * 100 if med else None


def render(meta, recs, agg):
    L = []
    L.append(f"## tcplb vs HAProxy (with and without splice) vs nginx stream — "
             f"{meta.get('date', '')}")
    L.append("")
    L.append(f"- Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
             f"{meta.get('mem', '?')} RAM, Linux {meta.get('kernel', '?')}, "
             f"{meta.get('os', '?')}")
    L.append(f"- Versions: {meta.get('haproxy', '?')}; {meta.get('nginx', '?')}; "
             f"{meta.get('tcplb', '?')}; {meta.get('ab', '?')}")
    L.append(f"- Command: `{meta.get('command', '?')}`")
    if meta.get("quick") == "1":
        L.append(f"- Rounds: {meta.get('rounds', '?')}, a --quick smoke run (too short to "
                 f"quote); wall time {meta.get('wall', '?')}")
    else:
        L.append(f"- Rounds: {meta.get('rounds', '?')} (medians shown), targets interleaved "
                 f"round by round; wall time {meta.get('wall', '?')}")
    L.append(f"- Load: conn = `{meta.get('conn_cmd', '')}`; keepalive = "
             f"`{meta.get('keepalive_cmd', '')}`; bulk = `{meta.get('bulk_cmd', '')}` "
             f"(64 MiB file); idle = {meta.get('idle_conns', '?')} idle HTTP/1.1 "
             f"keep-alive connections held open")
    L.append("")
    ratio_to = [t for t in RATIO_TO if t in TARGETS]
    pairs = [p for p in RATIO_PAIRS if p[0] in TARGETS and p[1] in TARGETS]
    head = ["scenario", "metric"] + [TARGET_TITLES[t] for t in TARGETS] + \
        [RATIO_TITLES[t] for t in ratio_to] + [p[2] for p in pairs]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for scenario, title, key, how, headline in ROWS:
        vals = {t: agg.get((scenario, key, how, t), (None, []))[0] for t in TARGETS}
        if all(v is None for v in vals.values()):
            continue
        cells = [fmt(vals[t]) for t in TARGETS]
        if how == "sum":
            ratios = ["" for _ in ratio_to] + ["" for _ in pairs]
        else:
            ratios = [ratio(vals.get("tcplb"), vals[t]) for t in ratio_to] + \
                [ratio(vals.get(a), vals.get(b)) for a, b, _ in pairs]
        if headline:
            title = f"**{title}**"
            ratios = [f"**{r}**" if r not in ("", "-") else r for r in ratios]
        L.append("| " + " | ".join([scenario, title] + cells + ratios) + " |")
    L.append("")

    # Round-to-round spread of the headline figures.
    if int(meta.get("rounds", "1")) > 1:  # spread needs several rounds
        L.append("Round-to-round spread of the headline figures, (max − min) / median:")
        L.append("")
        L.append("| scenario | metric | " + " | ".join(TARGET_TITLES[t] for t in TARGETS) + " |")
        L.append("|---|---|" + "---:|" * len(TARGETS))
        for scenario, title, key, how, headline in ROWS:
            if not headline or how != "median" or scenario == "startup":
                continue
            cells = []
            for t in TARGETS:
                s = spread(agg.get((scenario, key, how, t), (None, []))[1])
                cells.append("-" if s is None else f"{s:.0f}%")
            L.append(f"| {scenario} | {title} | " + " | ".join(cells) + " |")
        L.append("")

    checks = [r for r in recs if r["scenario"] == "splice_check"]
    if checks:
        L.append("Splice check, after the rounds: kernel pipes each proxy holds (from "
                 "/proc/PID/fd), and the `splice` calls it made (strace -f -c) during "
                 f"{checks[0].get('requests', '?')} more bulk requests:")
        L.append("")
        L.append("| proxy | pipe fds | splice calls |")
        L.append("|---|---:|---:|")
        for t in TARGETS:
            for r in checks:
                if r["target"] == t:
                    calls = r.get("splice_calls")
                    L.append(f"| {TARGET_TITLES[t]} | {r.get('pipe_fds')} | "
                             f"{'-' if calls is None else fmt(calls)} |")
        L.append("")

    ticks = [r["cpu_ticks"] for r in recs if r.get("cpu_ticks") is not None]
    L.append("Notes:")
    L.append("- ↑ higher is better, ↓ lower is better; ratios are tcplb ÷ the other proxy "
             "(on a ↓ row, below 1 means tcplb is better). Headline figures in bold.")
    L.append(f"- Each proxy runs alone on CPU {meta.get('proxy_cpu', '1')} (`taskset`); "
             f"the nginx backends, ab and the idle client share CPU "
             f"{meta.get('client_cpu', '0')}. HAProxy: `mode tcp`, `balance leastconn`, "
             "`nbthread 1`; HAProxy splice: the same plus `option splice-request`, "
             "`option splice-response` and `maxpipes 256`; nginx stream: `least_conn`, "
             "`worker_processes 1`; tcplb: defaults"
             + (f" (tcplb base: {meta['tcplb_base']})" if meta.get("tcplb_base") else "")
             + ". All forward to the same 4 nginx backends on loopback.")
    L.append("- Proxy CPU = utime + stime from /proc/PID/stat, after − before each ab run "
             f"(CLK_TCK={meta.get('clk_tck', '?')}, i.e. "
             f"{1000 // int(meta.get('clk_tck', '100'))} ms resolution"
             + (f"; the smallest proxy CPU delta of any run was {min(ticks)} ticks"
                if ticks else "") + "). nginx stream CPU and RSS are master + worker.")
    L.append("- RSS = VmRSS from /proc/PID/status. startup = right after start, before any "
             "traffic; idle KiB/conn = (RSS with all idle connections open − RSS just "
             "before opening them) ÷ connections, measured in every round after the "
             "other scenarios of that round. The headline is round 1, the first time each "
             "proxy holds that many connections; a proxy that keeps that memory afterwards "
             "(pools, slabs, allocator caches: its RSS does not shrink back) shows little "
             "growth in later rounds (the 'later rounds' row).")
    L.append("- The client side (ab + backends, one CPU) limits conn and keepalive req/s, so "
             "those are close for all targets; proxy CPU per request is the figure that "
             "tells the proxies apart.")
    L.append("- Latency percentiles are ab's whole milliseconds. `failed` counts ab's failed "
             "requests, non-2xx answers and requests ab never completed.")
    L.append("")
    return "\n".join(L)


def cmd_table(args):
    meta = dict(kv.split("=", 1) for kv in args.meta)
    recs = load_raw(args.raw)
    agg = aggregate(recs)
    md = render(meta, recs, agg)

    failures = [r for r in recs if (r.get("failed") or 0) > 0 or r.get("ab_rc", 0) != 0]
    if failures:
        warn = ["", "!" * 72, "!! WARNING: some runs had failed requests/connections or "
                "ab errors:"]
        for r in failures:
            warn.append(f"!!   {r['scenario']} {r['target']} round {r['round']}: "
                        f"failed={r.get('failed')} ab_rc={r.get('ab_rc', '-')} "
                        f"{r.get('errors', '')}")
        warn.append("!" * 72)
        md += "\n".join(warn) + "\n"

    print(md)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(md)
    medians = {f"{s}/{k}/{h}/{t}": v[0] for (s, k, h, t), v in agg.items()}
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "medians": medians, "raw": recs}, f, indent=1)
        f.write("\n")
    keys = []
    for r in recs:
        for k in r:
            if k not in keys and not isinstance(r[k], (dict, list)):
                keys.append(k)
    with open(args.out + ".csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(recs)
    return EXIT_FAILURES if failures else 0


def main():
    ap = argparse.ArgumentParser(description="bench.sh helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ab", help="parse one ab output into a JSON line")
    a.add_argument("--abfile", required=True)
    a.add_argument("--scenario", required=True)
    a.add_argument("--target", required=True)
    a.add_argument("--round", type=int, required=True)
    a.add_argument("--requested", type=int, required=True)
    a.add_argument("--ab-rc", type=int, default=0)
    a.add_argument("--cpu-ticks", type=int)
    a.add_argument("--clk-tck", type=int, default=100)
    p = sub.add_parser("progress", help="one-line summary of the last raw record")
    p.add_argument("--raw", required=True)
    p.add_argument("--rounds", type=int, required=True)
    t = sub.add_parser("table", help="aggregate raw records and print the report")
    t.add_argument("--raw", required=True)
    t.add_argument("--out", required=True, help="output path prefix (no extension)")
    t.add_argument("--meta", action="append", default=[], help="KEY=VALUE")
    args = ap.parse_args()
    if args.cmd == "ab":
        cmd_ab(args)
        return 0
    if args.cmd == "progress":
        cmd_progress(args)
        return 0
    return cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
