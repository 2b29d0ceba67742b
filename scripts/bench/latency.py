#!/usr/bin/env python3
"""Least-latency balancing, measured side by side (scripts/bench.sh --latency):

Four HTTP backends (nginx), one of them behind a proxy that holds each response's first
bytes back for 50 ms (a slow backend: a GC pause, a degraded disk). `ab -n N -c 16`
through tcplb least-active, tcplb least-latency, HAProxy leastconn and nginx stream
least_conn (nginx's least_time is NGINX Plus only), rounds interleaved: median
requests/s, p50 and p99 latency, and proxy CPU per request (utime + stime from /proc).
Each proxy runs on CPU 1; the backends, the delay proxy and ab on CPU 0.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading

from common import (CLK_TCK, Procs, ab, cpu_ticks, free_port, haproxy, need, nginx_backends,
                    nginx_stream, tcplb, wait_listening)


def delay_proxy(listen_port, upstream_port, delay):
    """A TCP proxy that holds the first bytes of every response back for `delay` s."""

    async def pipe(reader, writer, first_delay):
        try:
            first = True
            while data := await reader.read(65536):
                if first and first_delay:
                    await asyncio.sleep(first_delay)
                first = False
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w, 0), pipe(up_r, client_w, delay))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=1024)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--delay-ms", type=int, default=50)
    args = ap.parse_args()
    need("nginx", "haproxy", "ab", "taskset")
    tmp = tempfile.mkdtemp(prefix="tcplb-latency-")
    procs = Procs()
    try:
        nginx_ports = nginx_backends(tmp, procs, 4, "")
        slow_port = free_port()
        delay_proxy(slow_port, nginx_ports[3], args.delay_ms / 1000)
        wait_listening(slow_port, None, "the delay proxy")
        backends = [f"127.0.0.1:{p}" for p in nginx_ports[:3]] + [f"127.0.0.1:{slow_port}"]

        ports = {name: free_port() for name in
                 ("tcplb least-active", "tcplb least-latency", "HAProxy leastconn",
                  "nginx least_conn")}
        pids = {}
        for name, balance in (("tcplb least-active", "least-active"),
                              ("tcplb least-latency", "least-latency")):
            pids[name] = tcplb(args.binary, procs, ports[name], backends, "--workers", "1",
                               "--balance", balance)
        pids["HAProxy leastconn"] = haproxy(tmp, procs, "haproxy", ports["HAProxy leastconn"],
                                            backends)
        pids["nginx least_conn"] = nginx_stream(tmp, procs, "stream", ports["nginx least_conn"],
                                                backends)

        results = {name: [] for name in ports}
        for r in range(args.rounds):
            for name, port in ports.items():
                ab(port, args.n // 10, args.c)  # warm-up: the estimates learn
                before = cpu_ticks(pids[name])
                rps, p50, p99, failed = ab(port, args.n, args.c)
                ticks = cpu_ticks(pids[name]) - before
                results[name].append((rps, p50, p99, failed, ticks / CLK_TCK / args.n))
                print(f"round {r + 1} {name}: {rps:.0f} req/s, p50 {p50} ms, p99 {p99} ms, "
                      f"{failed} failed", file=sys.stderr)
    finally:
        procs.stop_all()

    med = {n: [statistics.median(x[i] for x in v) for i in range(5)]
           for n, v in results.items()}
    base = med["tcplb least-active"]
    print(f"Least-latency, measured: 4 backends, one +{args.delay_ms} ms; "
          f"ab -n {args.n} -c {args.c}; {args.rounds} rounds (medians)")
    print()
    print("| proxy | req/s | p50 ms | p99 ms | failed | proxy CPU µs/req | p99 vs least-active |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (rps, p50, p99, failed, cpu) in med.items():
        print(f"| {name} | {rps:.0f} | {p50:.0f} | {p99:.0f} | {failed:.0f} | "
              f"{cpu * 1e6:.1f} | {p99 / base[2]:.2f} |")
    ll, la = med["tcplb least-latency"], med["tcplb least-active"]
    print()
    print(f"least-latency CPU per request / least-active: {ll[4] / la[4]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
