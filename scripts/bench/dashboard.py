#!/usr/bin/env python3
"""What the admin dashboard costs (scripts/bench.sh --dashboard):

Two tcplb processes of the same binary and config (one service, four nginx backends,
--admin on), one of them with a poller asking /api/stats every second as the open page
does ("dashboard"), the other left alone ("plain"). `ab -n N -c 50` (a connection per
request) through each, rounds interleaved; per round the CPU each tcplb used per session,
from every thread's /proc/PID/task/*/schedstat (nanoseconds, so short rounds still
resolve). Prints each round, the medians, the ratio dashboard/plain and the spread of
the plain rounds (how noisy the machine is). Each tcplb runs on CPU 1; the backends, ab
and the poller on CPU 0.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from common import free_port, wait_listening






def cpu_ns(pid):
    """CPU time of every thread of `pid` so far, in nanoseconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def ab(port, n, c):
    out = subprocess.run(
        ["taskset", "-c", "0", "ab", "-q", "-r", "-s", "30", "-n", str(n), "-c", str(c),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    return rps, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("-c", type=int, default=50)
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    args = ap.parse_args()
    for tool in ("nginx", "ab", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is needed (scripts/bench.sh --install)")
    tmp = tempfile.mkdtemp(prefix="tcplb-dashboard-")
    procs = []

    def stop_all(*_):
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    stop = threading.Event()
    try:
        nginx_ports = [free_port() for _ in range(4)]
        servers = "\n".join(
            f"  server {{ listen 127.0.0.1:{p} backlog=4096; location / {{ return 200 'ok\\n'; }} }}"
            for p in nginx_ports)
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp};
{servers}
}}
""")
        procs.append(subprocess.Popen(
            ["taskset", "-c", "0", "nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf",
             "-e", f"{tmp}/error.log"]))
        for p in nginx_ports:
            wait_listening(p, procs[-1], "backend nginx")
        listed = ", ".join(f'"127.0.0.1:{p}"' for p in nginx_ports)
        tcplbs = {}
        for name in ("plain", "dashboard"):
            port, admin = free_port(), free_port()
            with open(f"{tmp}/{name}.toml", "w") as f:
                f.write(f'[global]\nadmin = "127.0.0.1:{admin}"\n\n'
                        f'[services.web]\nlisten = ["127.0.0.1:{port}"]\npool = "web"\n\n'
                        f'[pools.web]\nbackends = [{listed}]\n')
            p = subprocess.Popen(
                ["taskset", "-c", "1", args.binary, "--config", f"{tmp}/{name}.toml",
                 "--workers", "1"],
                stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            wait_listening(port, p, name)
            tcplbs[name] = (port, admin, p.pid)

        polls = [0, 0]  # answers, bytes

        def poller():
            admin = tcplbs["dashboard"][1]
            while not stop.is_set():
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/stats") as r:
                    polls[1] += len(r.read())
                polls[0] += 1
                stop.wait(args.poll)

        os.sched_setaffinity(0, {0})
        threading.Thread(target=poller, daemon=True).start()
        results = {name: [] for name in tcplbs}
        for r in range(args.rounds):
            for name, (port, _, pid) in tcplbs.items():
                ab(port, args.n // 10, args.c)
                before = cpu_ns(pid)
                rps, failed = ab(port, args.n, args.c)
                us = (cpu_ns(pid) - before) / 1e3 / args.n
                results[name].append(us)
                print(f"round {r + 1} {name}: {rps:.0f} req/s, {failed} failed, "
                      f"{us:.2f} µs CPU per session", flush=True)
        stop.set()
        plain = statistics.median(results["plain"])
        dash = statistics.median(results["dashboard"])
        spread = (max(results["plain"]) - min(results["plain"])) / plain
        print()
        print("| tcplb | CPU per session (median µs) | rounds |")
        print("|---|---|---|")
        for name in tcplbs:
            rounds = ", ".join(f"{v:.2f}" for v in results[name])
            print(f"| {name} | {statistics.median(results[name]):.2f} | {rounds} |")
        print()
        print(f"dashboard / plain: {dash / plain:.3f}; plain rounds spread "
              f"{spread * 100:.1f}% (max-min over median); {polls[0]} polls of /api/stats, "
              f"{polls[1] // max(polls[0], 1)} bytes each")
    finally:
        stop.set()
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
