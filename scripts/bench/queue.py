#!/usr/bin/env python3
"""Backend limits with a wait queue, measured side by side (scripts/bench.sh --queue):

Two HTTP backends (nginx), each taking 10 sessions at once. `ab -n N -c 200` (one
connection per request) through tcplb (`,maxconn=10`, `queue = { size = 1000,
timeout = "5s" }`), HAProxy (`maxconn 10` per server, `timeout queue 5s`) and nginx
stream (`max_conns=10`: open source nginx has no queue at layer 4, so a client past the
limit fails), rounds interleaved: failed requests, median req/s, p50 and p99 latency, and
proxy CPU per request (utime + stime from /proc). Each proxy runs on CPU 1; the backends
and ab on CPU 0.

Then the hand-over delay: one backend taking one session, a client holding it and a
second one queued; the holder leaves, and the time from the backend closing the holder's
connection to accepting the queued client's is measured (median and p99 of --handovers
tries), for tcplb and HAProxy.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import CLK_TCK, Procs, ab, cpu_ticks, free_port, need, nginx_backends, wait_listening











def tcplb_config(port, backends, size, timeout="5s"):
    listed = ", ".join(f'"{b},maxconn={m}"' for b, m in backends)
    return (f'[services.q]\nlisten = ["127.0.0.1:{port}"]\npool = "q"\n\n'
            f'[pools.q]\nbackends = [{listed}]\nqueue = {{ size = {size}, timeout = "{timeout}" }}\n')


def haproxy_config(port, backends):
    servers = "".join(f"    server b{i} {b} maxconn {m}\n" for i, (b, m) in enumerate(backends))
    return ("global\n    nbthread 1\n    maxconn 4000\ndefaults\n    mode tcp\n"
            "    balance leastconn\n    timeout connect 3s\n    timeout client 60s\n"
            "    timeout server 60s\n    timeout queue 5s\n"
            f"frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n"
            f"backend be\n{servers}")


def handover(port, backend, tries):
    """Median and p99 (ms) of the delay from the backend closing the slot holder's
    connection to it accepting the queued client's."""
    delays = []
    for _ in range(tries):
        holder = socket.create_connection(("127.0.0.1", port))
        holder.sendall(b"A")
        held, _ = backend.accept()
        held.recv(1)
        queued = socket.create_connection(("127.0.0.1", port))
        queued.sendall(b"B")
        time.sleep(0.02)
        backend.setblocking(False)
        try:
            early, _ = backend.accept()
            early.close()  # not queued after all (the slot was free): not a try
            backend.setblocking(True)
            holder.close()
            held.close()
            queued.close()
            continue
        except BlockingIOError:
            backend.setblocking(True)
        holder.shutdown(socket.SHUT_WR)
        held.recv(1)  # the holder's EOF
        start = time.perf_counter()
        held.close()
        served, _ = backend.accept()
        delays.append((time.perf_counter() - start) * 1000)
        holder.close()
        served.recv(1)
        queued.shutdown(socket.SHUT_WR)
        served.recv(1)
        served.close()
        queued.recv(1)
        queued.close()
    delays.sort()
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1], len(delays)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("-c", type=int, default=200)
    ap.add_argument("--handovers", type=int, default=300)
    args = ap.parse_args()
    need("nginx", "haproxy", "ab", "taskset")
    tmp = tempfile.mkdtemp(prefix="tcplb-queue-")
    procs = Procs()
    try:
        nginx_ports = nginx_backends(tmp, procs, 2, " backlog=4096")
        backends = [(f"127.0.0.1:{p}", 10) for p in nginx_ports]

        ports = {name: free_port() for name in ("tcplb", "HAProxy", "nginx stream")}
        pids = {}
        with open(f"{tmp}/tcplb.toml", "w") as f:
            f.write(tcplb_config(ports["tcplb"], backends, 1000))
        p = subprocess.Popen(
            ["taskset", "-c", "1", args.binary, "--config", f"{tmp}/tcplb.toml",
             "--workers", "1"],
            stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        procs.append(p)
        pids["tcplb"] = [p.pid]
        with open(f"{tmp}/haproxy.cfg", "w") as f:
            f.write(haproxy_config(ports["HAProxy"], backends))
        p = subprocess.Popen(["taskset", "-c", "1", "haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        pids["HAProxy"] = [p.pid]
        module = "/usr/lib/nginx/modules/ngx_stream_module.so"
        os.makedirs(f"{tmp}/stream", exist_ok=True)
        with open(f"{tmp}/stream/nginx.conf", "w") as f:
            f.write((f"load_module {module};\n" if os.path.exists(module) else "")
                    + f"worker_processes 1; daemon off; pid {tmp}/stream/nginx.pid;\n"
                    f"error_log {tmp}/stream/error.log crit; events {{ worker_connections 4096; }}\n"
                    "stream { upstream b { least_conn;\n"
                    + "".join(f"  server {b} max_conns={m};\n" for b, m in backends)
                    + f"}} server {{ listen 127.0.0.1:{ports['nginx stream']} backlog=4096; "
                    "proxy_pass b; } }\n")
        p = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", f"{tmp}/stream", "-c",
                              f"{tmp}/stream/nginx.conf", "-e", f"{tmp}/stream/error.log"])
        procs.append(p)
        for name, port in ports.items():
            wait_listening(port, None, name)
        time.sleep(0.5)
        workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                 text=True).stdout.split()
        pids["nginx stream"] = [p.pid] + [int(w) for w in workers]

        results = {name: [] for name in ports}
        for r in range(args.rounds):
            for name, port in ports.items():
                ab(port, args.n // 10, args.c, "-r", "-s", "30")
                before = cpu_ticks(pids[name])
                rps, p50, p99, failed = ab(port, args.n, args.c, "-r", "-s", "30")
                ticks = cpu_ticks(pids[name]) - before
                results[name].append((rps, p50, p99, failed, ticks / CLK_TCK / args.n))
                print(f"round {r + 1} {name}: {rps:.0f} req/s, p50 {p50} ms, p99 {p99} ms, "
                      f"{failed} failed", file=sys.stderr)
        procs.stop_all()
        procs.clear()

        # The hand-over delay, one proxy at a time, each with one backend of one slot.
        slow = {}
        for name in ("tcplb", "HAProxy"):
            backend = socket.socket()
            backend.bind(("127.0.0.1", 0))
            backend.listen(64)
            spec = [(f"127.0.0.1:{backend.getsockname()[1]}", 1)]
            port = free_port()
            if name == "tcplb":
                with open(f"{tmp}/one.toml", "w") as f:
                    f.write(tcplb_config(port, spec, 10, "30s"))
                cmd = [args.binary, "--config", f"{tmp}/one.toml", "--workers", "1"]
            else:
                with open(f"{tmp}/one.cfg", "w") as f:
                    f.write(haproxy_config(port, spec))
                cmd = ["haproxy", "-db", "-f", f"{tmp}/one.cfg"]
            p = subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL,
                                 env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            wait_listening(port, p, name)
            # The start-up probe took the slot for a moment: let it go.
            time.sleep(0.2)
            while True:
                backend.setblocking(False)
                try:
                    backend.accept()[0].close()
                except BlockingIOError:
                    break
                finally:
                    backend.setblocking(True)
            slow[name] = handover(port, backend, args.handovers)
            print(f"{name} hand-over: median {slow[name][0]:.3f} ms, p99 {slow[name][1]:.3f} ms "
                  f"({slow[name][2]} tries)", file=sys.stderr)
            p.terminate()
            p.wait(timeout=5)
            backend.close()
    finally:
        procs.stop_all()

    med = {n: [statistics.median(x[i] for x in v) for i in range(5)]
           for n, v in results.items()}
    base = med["HAProxy"]
    print(f"Backend limits with a queue, measured: 2 backends x 10 slots; "
          f"ab -n {args.n} -c {args.c}; {args.rounds} rounds (medians)")
    print()
    print("| proxy | failed | req/s | p50 ms | p99 ms | proxy CPU µs/req | CPU vs HAProxy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (rps, p50, p99, failed, cpu) in med.items():
        print(f"| {name} | {failed:.0f} | {rps:.0f} | {p50:.0f} | {p99:.0f} | "
              f"{cpu * 1e6:.1f} | {cpu / base[4]:.2f} |")
    print()
    print("| proxy | hand-over median ms | p99 ms | tries |")
    print("|---|---:|---:|---:|")
    for name, (median, p99, n) in slow.items():
        print(f"| {name} | {median:.3f} | {p99:.3f} | {n} |")


if __name__ == "__main__":
    sys.exit(main())
