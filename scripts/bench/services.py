#!/usr/bin/env python3
"""Many services in one process, measured (scripts/bench.sh --services):

- start-up: a config file of N services x 4 backends (default 1,000), from exec to the
  start line (median of several starts);
- reload stall: a client pings one byte at a time through a service the reloads do not
  touch, while SIGHUP reloads change one other pool (its backends' weights) again and
  again; the longest round trip during the reloads, against the longest without any.

Prints a Markdown table; the numbers are what they are on this machine, in this run.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def config(n, echo_port, weight):
    """N services, each with its own pool of 4 backends; service 0's pool is the echo server
    (the pinger's), the last pool's weights are `weight` (what the reloads change)."""
    lines = ["[global]", "workers = 2", ""]
    for i in range(n):
        lines += [f"[services.s{i}]", 'listen = ["127.0.0.1:0"]', f'pool = "p{i}"', ""]
        if i == 0:
            backends = [f'"127.0.0.1:{echo_port}"']
        else:
            w = f",weight={weight}" if i == n - 1 else ""
            backends = [f'"127.{(i >> 8) & 255}.{i & 255}.{j + 1}:9{w}"' for j in range(4)]
        lines += [f"[pools.p{i}]", f"backends = [{', '.join(backends)}]", ""]
    return "\n".join(lines)


def echo_server():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)

    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def start(binary, path, lines=None):
    """Starts tcplb; returns (process, seconds to its start line, service s0's address).
    Its later log lines go to `lines` (a list), if given."""
    t0 = time.monotonic()
    proc = subprocess.Popen([binary, "--config", path], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RUST_LOG": "info"})
    addr = None
    for line in proc.stderr:
        if "service s0: listening on " in line:
            host, port = line.split("service s0: listening on ")[1].split(";")[0].split(":")
            addr = (host, int(port))
        if "serving " in line and " services from " in line:
            took = time.monotonic() - t0
            sink = lines if lines is not None else []
            threading.Thread(target=lambda: [sink.append(x) for x in proc.stderr],
                             daemon=True).start()
            return proc, took, addr
    raise SystemExit(f"tcplb exited before serving (status {proc.wait()})")


def pings(addr, stop, worst):
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not stop.is_set():
        t = time.monotonic()
        s.sendall(b"p")
        if s.recv(1) != b"p":
            raise SystemExit("the ping did not come back")
        worst[0] = max(worst[0], time.monotonic() - t)
    s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--reloads", type=int, default=20)
    args = ap.parse_args()
    echo_port = echo_server()
    tmp = tempfile.mkdtemp(prefix="tcplb-services-")
    path = os.path.join(tmp, "tcplb.toml")
    with open(path, "w") as f:
        f.write(config(args.services, echo_port, 1))

    starts = []
    for _ in range(args.starts):
        proc, took, _ = start(args.binary, path)
        starts.append(took)
        proc.terminate()
        proc.wait()

    log = []
    proc, _, addr = start(args.binary, path, log)
    stop, quiet = threading.Event(), [0.0]
    t = threading.Thread(target=pings, args=(addr, stop, quiet))
    t.start()
    time.sleep(3)
    stop.set()
    t.join()
    stop, during = threading.Event(), [0.0]
    t = threading.Thread(target=pings, args=(addr, stop, during))
    t.start()
    reload_times = []
    for r in range(args.reloads):
        with open(path + ".next", "w") as f:
            f.write(config(args.services, echo_port, 2 + r % 2))
        os.rename(path + ".next", path)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.15)
        reload_times.append(time.monotonic() - t0)
    stop.set()
    t.join()
    proc.terminate()
    proc.wait()
    applied = sum(1 for line in log if f"reload: pool p{args.services - 1}: 0 added" in line)
    if applied != args.reloads:
        raise SystemExit(f"only {applied} of {args.reloads} reloads applied")

    n = args.services
    print(f"Many services, measured: {n} services x 4 backends, 2 workers ({args.binary})")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| start-up to serving, median of {args.starts} | {statistics.median(starts) * 1000:.0f} ms |")
    print(f"| start-up, slowest of {args.starts} | {max(starts) * 1000:.0f} ms |")
    print(f"| longest ping round trip, 3 s without reloads | {quiet[0] * 1000:.2f} ms |")
    print(f"| longest ping round trip during {args.reloads} reloads changing one pool "
          f"| {during[0] * 1000:.2f} ms |")


if __name__ == "__main__":
    sys.exit(main())
