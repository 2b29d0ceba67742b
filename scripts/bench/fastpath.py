#!/usr/bin/env python3
"""The kernel fast path (--bpf-redirect), measured against its peers (scripts/bench.sh --bpf):

Targets: no proxy ("direct", the baseline), tcplb in user space (--workers 1), the tcplb
fast path (--workers 1 --bpf-redirect), nginx stream (1 worker, least_conn), HAProxy (mode
tcp, nbthread 1) and, for bulk, HAProxy with splice forced on. Each proxy runs on CPU 1;
the backends and the clients on CPU 0.

Scenarios:
  keepalive  ab -k -n N -c 50 to four nginx HTTP backends
  redis      redis-benchmark -t get,set -P 16 -n N -c 50 to one redis-server
  pgbench    pgbench -S -c 16 -j 2 -T S to a throwaway PostgreSQL cluster
  bulk       1 GiB from an nginx backend (a sparse file, sendfile), fetched with curl

Per target and scenario, medians over rounds (targets interleaved within a round):
throughput, p99 latency, and CPU per request (or per GiB) three ways: the proxy's
(utime + stime of its processes); the stack's (the proxy, backends, clients and the
kernel's threads: common.stack_seconds); the whole machine's busy time (/proc/stat: user +
nice + system + irq + softirq + steal). The last two count what the first cannot see: with
the fast path the kernel redirects in softirq of the sender's context and in kworker
threads, charged to no tcplb process. Each "- direct" (minus no proxy's) is the proxy's
whole cost; the stack's leaves out most other work on a shared machine, which the
machine's counts in proportion to a run's length. After each fast-path
run it reads tcplb's /metrics to show the fast path engaged (sessions, bytes). Prints a
Markdown table with the fast path's ratios to each peer and saves it with the raw
per-round numbers under bench-results/.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common import (CLIENT_CPU, CLK_TCK, Procs, ab, cpu_ticks, free_port, haproxy,
                    machine_busy_ticks, metric_sum, metrics, need, nginx_backends,
                    nginx_stream, save_results, stack_seconds, stack_snapshot, tcplb,
                    wait_listening)

GIB = 1 << 30
SCENARIOS = ("keepalive", "redis", "pgbench", "bulk")
FAST = "tcplb fast path"
USER = "tcplb user space"
PEERS = ("nginx", "HAProxy", "HAProxy splice", USER)


class Target:
    """One way to reach a scenario's backend: its port, the pids whose CPU is the proxy's
    (none for direct) and, for tcplb, its admin port."""

    def __init__(self, name, port, pids, admin=None):
        self.name, self.port, self.pids, self.admin = name, port, pids, admin


def sizes(quick):
    if quick:
        return {"keepalive": 30000, "redis": 150000, "pgbench": 4, "bulk": 1}
    return {"keepalive": 200000, "redis": 500000, "pgbench": 15, "bulk": 3}


# ---------------------------------------------------------------------------
# Backends


def redis_backend(procs):
    port = free_port()
    p = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    wait_listening(port, p, "redis-server")
    return port


def pg_bin(tool):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise SystemExit(f"{tool} is needed (apt-get install postgresql)")
    return found[-1]


def as_postgres(*cmd):
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                   stdout=subprocess.DEVNULL)


def postgres_start(tmp):
    """A throwaway cluster under `tmp`/pg on CPU 0, trust auth, initialised for pgbench
    (scale 1); its port. postgres_stop(tmp) ends it."""
    pg = f"{tmp}/pg"
    os.makedirs(f"{pg}/sock")
    shutil.chown(pg, "postgres")
    shutil.chown(f"{pg}/sock", "postgres")
    as_postgres(pg_bin("initdb"), "-D", f"{pg}/data", "--auth=trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8")
    port = free_port()
    as_postgres("taskset", "-c", CLIENT_CPU, pg_bin("pg_ctl"), "-D", f"{pg}/data", "-l",
                f"{pg}/log", "-w", "start", "-o",
                f"-p {port} -k {pg}/sock -c listen_addresses=127.0.0.1 -c fsync=off")
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-U", "postgres", "postgres"], check=True, capture_output=True)
    return port


def postmaster_pid(tmp):
    with open(f"{tmp}/pg/data/postmaster.pid") as f:
        return int(f.readline())


def postgres_stop(tmp):
    if os.path.exists(f"{tmp}/pg/data/postmaster.pid"):
        subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D",
                        f"{tmp}/pg/data", "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------
# Proxies


def start_targets(args, tmp, procs, scenario, backends, bulk):
    """direct (the first backend) and every proxy in front of `backends`."""
    addrs = [f"127.0.0.1:{p}" for p in backends]
    ports = {}

    def port(name):
        ports[name] = free_port()
        return ports[name]

    targets = [Target("direct", backends[0], [])]
    for name, flags in ((USER, []), (FAST, ["--bpf-redirect", "--bpf-redirect-bound",
                                            args.bound])):
        admin = free_port()
        pids = tcplb(args.binary, procs, port(name), addrs, "--workers", "1", *flags,
                     admin=admin)
        targets.append(Target(name, ports[name], pids, admin))
    pids = nginx_stream(tmp, procs, f"stream-{scenario}", port("nginx"), addrs)
    targets.append(Target("nginx", ports["nginx"], pids))
    pids = haproxy(tmp, procs, f"haproxy-{scenario}", port("HAProxy"), addrs)
    targets.append(Target("HAProxy", ports["HAProxy"], pids))
    if bulk:
        pids = haproxy(tmp, procs, f"haproxy-splice-{scenario}", port("HAProxy splice"),
                       addrs, splice=True)
        targets.append(Target("HAProxy splice", ports["HAProxy splice"], pids))
    return targets


# ---------------------------------------------------------------------------
# Clients: each returns units (requests, or GiB for bulk), throughput, p99 ms, failures.


def run_keepalive(port, n, _tmp):
    rps, _p50, p99, failed = ab(port, n, 50, "-k")
    return {"units": n, "throughput": rps, "p99_ms": p99, "failed": failed}


def run_redis(port, n, _tmp):
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
         "-t", "get,set", "-P", "16", "-n", str(n), "-c", "50", "-q", "--csv"],
        capture_output=True, text=True)
    rows = [[c.strip('"') for c in line.split(",")] for line in out.stdout.splitlines()]
    header, tests = rows[0], [r for r in rows[1:] if r and r[0] in ("GET", "SET")]
    if out.returncode != 0 or len(tests) != 2:
        print(out.stdout + out.stderr, file=sys.stderr)
        return {"units": 2 * n, "throughput": 0, "p99_ms": None, "failed": 2 * n}
    col = {name: i for i, name in enumerate(header)}
    seconds = sum(n / float(t[col["rps"]]) for t in tests)
    p99 = max(float(t[col["p99_latency_ms"]]) for t in tests)
    return {"units": 2 * n, "throughput": 2 * n / seconds, "p99_ms": p99, "failed": 0}


def run_pgbench(port, seconds, tmp):
    logs = tempfile.mkdtemp(dir=tmp, prefix="pgbench-")
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CPU, "pgbench", "-S", "-n", "-c", "16", "-j", "2", "-T",
         str(seconds), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-l",
         "--log-prefix", f"{logs}/log", "postgres"],
        capture_output=True, text=True)
    tps = re.search(r"^tps = ([\d.]+)", out.stdout, re.M)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if out.returncode != 0 or not tps or not done:
        print(out.stdout + out.stderr, file=sys.stderr)
        return {"units": 1, "throughput": 0, "p99_ms": None, "failed": 1}
    latencies = sorted(int(line.split()[2]) for f in glob.glob(f"{logs}/log.*")
                       for line in open(f))
    shutil.rmtree(logs)
    p99 = latencies[int(len(latencies) * 0.99)] / 1000 if latencies else None
    return {"units": int(done.group(1)), "throughput": float(tps.group(1)), "p99_ms": p99,
            "failed": int(failed.group(1)) if failed else 0}


def run_bulk(port, reps, _tmp):
    failed, start = 0, time.monotonic()
    for _ in range(reps):
        out = subprocess.run(
            ["taskset", "-c", CLIENT_CPU, "curl", "-s", "-o", "/dev/null", "-w",
             "%{size_download}", f"http://127.0.0.1:{port}/files/big"],
            capture_output=True, text=True)
        if out.returncode != 0 or out.stdout.strip() != str(GIB):
            print(f"bulk: curl status {out.returncode}, {out.stdout} bytes", file=sys.stderr)
            failed += 1
    return {"units": reps, "throughput": reps / (time.monotonic() - start), "p99_ms": None,
            "failed": failed}


CLIENTS = {"keepalive": run_keepalive, "redis": run_redis, "pgbench": run_pgbench,
           "bulk": run_bulk}


# ---------------------------------------------------------------------------
# Measuring


def fast_counters(admin):
    m = metrics(admin)
    return {"sessions": metric_sum(m, "tcplb_fast_path_sessions_total"),
            "fast_sent": metric_sum(m, "tcplb_fast_path_bytes_total", direction="sent"),
            "fast_received": metric_sum(m, "tcplb_fast_path_bytes_total",
                                        direction="received"),
            "spliced": metric_sum(m, "tcplb_spliced_bytes_total"),
            "backend_bytes": metric_sum(m, "tcplb_backend_bytes_total"),
            "active": metric_sum(m, "tcplb_sessions_active")}


def settled_counters(admin, timeout=10):
    """tcplb's counters once its sessions have ended (bytes are added when they end)."""
    deadline = time.monotonic() + timeout
    while (c := fast_counters(admin))["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return c


def measure(target, scenario, size, tmp, roots):
    """One client run through `target`: the client's numbers, CPU seconds of the proxy, of
    the stack (`roots`' trees, the clients, kernel threads: stack_seconds) and of the
    machine, and for tcplb its counters' growth."""
    counters = fast_counters(target.admin) if target.admin else None
    proxy0, machine0 = cpu_ticks(target.pids), machine_busy_ticks()
    stack0 = stack_snapshot(roots)
    result = CLIENTS[scenario](target.port, size, tmp)
    result["proxy_s"] = (cpu_ticks(target.pids) - proxy0) / CLK_TCK
    result["stack_s"] = stack_seconds(stack0, stack_snapshot(roots))
    result["machine_s"] = (machine_busy_ticks() - machine0) / CLK_TCK
    if counters:
        after = settled_counters(target.admin)
        result.update({k: after[k] - counters[k] for k in counters if k != "active"})
        result["active_after"] = after["active"]
    return result


def describe(scenario, target, r):
    p99 = "" if r["p99_ms"] is None else f", p99 {r['p99_ms']} ms"
    line = (f"{scenario} {target}: {r['throughput']:.{3 if scenario == 'bulk' else 0}f} "
            f"{unit(scenario)[0]}{p99}, {r['failed']} failed, CPU: proxy {r['proxy_s']:.2f} s, "
            f"stack {r['stack_s']:.2f} s, machine {r['machine_s']:.2f} s")
    if "sessions" in r:
        line += (f"; fast path sessions {r['sessions']:.0f}, bytes {r['fast_sent']:.0f} sent "
                 f"{r['fast_received']:.0f} received of {r['backend_bytes']:.0f}, spliced "
                 f"{r['spliced']:.0f}")
    return line


def unit(scenario):
    """(throughput unit, CPU-per-unit unit, scale from seconds per unit)."""
    if scenario == "bulk":
        return "GiB/s", "CPU s/GiB", 1
    return {"keepalive": "req/s", "redis": "req/s", "pgbench": "tps"}[scenario], \
        "CPU µs/req", 1e6


def splice_calls(target, size, tmp):
    """splice(2) calls `target`'s processes make during one bulk run (strace -c -f)."""
    out = f"{tmp}/strace-{target.pids[0]}.txt"
    args = [a for pid in target.pids for a in ("-p", str(pid))]
    tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=splice", "-o", out, *args],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_bulk(target.port, size, tmp)
    tracer.send_signal(2)
    tracer.wait()
    calls = [line.split() for line in open(out) if line.rstrip().endswith(" splice")]
    return int(calls[0][3]) if calls else 0


# ---------------------------------------------------------------------------
# The report


def medians(runs):
    """Medians over the rounds (failures: the sum)."""
    keys = ("throughput", "p99_ms", "per_unit_proxy", "per_unit_stack", "per_unit_machine")
    rows = [{**r, **{f"per_unit_{k}": r[f"{k}_s"] / r["units"]
                     for k in ("proxy", "stack", "machine")}} for r in runs]
    med = {k: statistics.median(r[k] for r in rows) if all(r[k] is not None for r in rows)
           else None for k in keys}
    return {**med, "failed": sum(r["failed"] for r in rows)}


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return "–" if a is None or b is None or b <= 0 else f"{a / b:.2f}"


def report(results, scenarios, meta):
    lines = ["# The kernel fast path (--bpf-redirect), measured", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    ratio_rows = []
    for scenario in scenarios:
        thr_unit, cpu_unit, scale = unit(scenario)
        med = {t: medians(runs) for t, runs in results[scenario].items()}
        base = {k: med["direct"][f"per_unit_{k}"] for k in ("stack", "machine")}
        lines += [f"## {scenario}: {meta[scenario + '_cmd']}", "", f"{cpu_unit}:", "",
                  f"| target | {thr_unit} | p99 ms | failed (all rounds) | proxy | stack | "
                  "stack − direct | machine | machine − direct |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        digits = 3 if scenario == "bulk" else 1
        for t, m in med.items():
            proxy = t != "direct"
            cells = [m["per_unit_proxy"] if proxy else None, m["per_unit_stack"],
                     m["per_unit_stack"] - base["stack"] if proxy else None,
                     m["per_unit_machine"],
                     m["per_unit_machine"] - base["machine"] if proxy else None]
            lines.append(
                f"| {t} | {fmt(m['throughput'], digits if scenario == 'bulk' else 0)} | "
                f"{fmt(m['p99_ms'], 2)} | {m['failed']:.0f} | "
                + " | ".join(fmt(None if c is None else c * scale, digits) for c in cells)
                + " |")
        fast = results[scenario][FAST]
        lines += ["", "Fast path engaged (per round): " + "; ".join(
            f"{r['sessions']:.0f} sessions, {r['fast_sent'] + r['fast_received']:.0f} of "
            f"{r['backend_bytes']:.0f} bytes" for r in fast), ""]
        f = med[FAST]
        for measure_name, key, minus in (
                ("proxy process", "per_unit_proxy", 0),
                ("stack − direct", "per_unit_stack", base["stack"]),
                ("whole machine − direct", "per_unit_machine", base["machine"])):
            cells = [ratio(f[key] - minus, med[p][key] - minus) if p in med else "–"
                     for p in PEERS]
            ratio_rows.append(f"| {scenario} | {measure_name} | " + " | ".join(cells) + " |")
    lines += ["## Fast path CPU per request (per GiB for bulk) / peer's (< 1: the fast path "
              "costs less)", "",
              "| scenario | CPU counted | / nginx | / HAProxy | / HAProxy splice | "
              "/ tcplb user space |", "|---|---|---:|---:|---:|---:|", *ratio_rows, ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, small sizes")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma-separated scenarios (default: all)")
    ap.add_argument("--bound", default="256k", help="--bpf-redirect-bound for the fast path")
    args = ap.parse_args()
    scenarios = [s for s in args.only.split(",") if s]
    if bad := [s for s in scenarios if s not in SCENARIOS]:
        raise SystemExit(f"fastpath.py: unknown scenario {bad[0]!r} (from {SCENARIOS})")
    rounds = args.rounds or (1 if args.quick else 3)
    sz = sizes(args.quick)
    need("nginx", "haproxy", "ab", "taskset", "curl", "redis-server", "redis-benchmark",
         "pgbench", "runuser", "strace")
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    tmp = tempfile.mkdtemp(prefix="tcplb-fastpath-")
    os.chmod(tmp, 0o755)  # nginx workers and postgres read below it
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # through `finally`: postgres too
    results = {s: {} for s in scenarios}
    checks = {}
    started = time.monotonic()
    try:
        os.makedirs(f"{tmp}/www")
        with open(f"{tmp}/www/big", "wb") as f:
            f.truncate(GIB)  # sparse: zeros from the page cache
        os.chmod(f"{tmp}/www", 0o755)
        os.chmod(f"{tmp}/www/big", 0o644)
        http = nginx_backends(tmp, procs, 4, " backlog=4096", www=f"{tmp}/www")
        backends = {"keepalive": http, "bulk": http[:1]}
        if "redis" in scenarios:
            backends["redis"] = [redis_backend(procs)]
        if "pgbench" in scenarios:
            backends["pgbench"] = [postgres_start(tmp)]
        targets = {s: start_targets(args, tmp, procs, s, backends[s], s == "bulk")
                   for s in scenarios}
        smoke = {"keepalive": 200, "redis": 2000, "pgbench": 1, "bulk": 1}
        for s in scenarios:  # every target works (and is warm) before measuring
            for t in targets[s]:
                # bulk: one fetch direct puts the file in the page cache.
                if (s != "bulk" or t.name == "direct") and \
                        CLIENTS[s](t.port, smoke[s], tmp)["failed"]:
                    raise SystemExit(f"{s} through {t.name} fails (see above)")
                results[s][t.name] = []
        roots = [p.pid for p in procs] + ([postmaster_pid(tmp)] if "pgbench" in scenarios
                                          else [])
        for r in range(rounds):
            for s in scenarios:
                for t in targets[s]:
                    res = measure(t, s, sz[s], tmp, roots)
                    res["round"] = r + 1
                    results[s][t.name].append(res)
                    print(f"round {r + 1} {describe(s, t.name, res)}", file=sys.stderr)
        if "bulk" in scenarios:
            for t in targets["bulk"]:
                if t.name in ("HAProxy splice", USER, FAST):
                    checks[t.name] = splice_calls(t, 1, tmp)
                    print(f"splice check {t.name}: {checks[t.name]} splice calls for 1 GiB",
                          file=sys.stderr)
    finally:
        procs.stop_all()
        postgres_stop(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "kernel": os.uname().release,
        "tcplb": subprocess.run([args.binary, "--version"], capture_output=True,
                                text=True).stdout.strip(),
        "rounds": f"{rounds} (medians){' — quick' if args.quick else ''}",
        "cpus": "proxy on CPU 1; backends and clients on CPU 0",
        "fast path": f"--workers 1 --bpf-redirect --bpf-redirect-bound {args.bound}",
        "wall": f"{time.monotonic() - started:.0f} s",
        "keepalive_cmd": f"ab -k -n {sz['keepalive']} -c 50 (4 nginx backends; ab's "
                         "percentiles are whole ms)",
        "redis_cmd": f"redis-benchmark -t get,set -P 16 -n {sz['redis']} -c 50 "
                     "(1 redis-server; req/s over both tests)",
        "pgbench_cmd": f"pgbench -S -c 16 -j 2 -T {sz['pgbench']} (scale 1; p99 from -l)",
        "bulk_cmd": f"{sz['bulk']} x curl of a 1 GiB file (1 nginx backend, sendfile)",
        "CPU": "per request (per GiB for bulk), over the client's run. proxy: utime+stime of "
               "its processes. stack: the proxy, backends and clients (with their exited "
               "children) and every kernel thread (kworker, ksoftirqd), softirq work done in "
               "their context included: what the benchmark costs, little of other work on "
               "the machine. "
               "machine: /proc/stat user+nice+system+irq+softirq+steal of both CPUs (all "
               "other work on the machine counts too). − direct: minus direct's, the proxy's "
               "whole cost",
    }
    if checks:
        meta["splice calls for 1 GiB (strace)"] = ", ".join(f"{k} {v}"
                                                            for k, v in checks.items())
    table = report(results, scenarios, meta)
    print(table)
    md, raw = save_results("fastpath", table, {"meta": meta, "results": results},
                           quick=args.quick)
    print(f"saved {md} and {raw} (raw per-round numbers)", file=sys.stderr)
    failed = sum(r["failed"] for s in results.values() for runs in s.values() for r in runs)
    if failed:
        print(f"!!! {failed} failed requests: the figures are not trustworthy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
