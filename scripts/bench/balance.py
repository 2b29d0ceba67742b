#!/usr/bin/env python3
"""Sample how evenly a proxy spreads its connections over the backends.

Every --interval seconds, counts the ESTABLISHED TCP connections whose local port is each
backend's (read from /proc/net/tcp: the backends' own view, the same for every proxy),
and keeps max - min over the backends. Runs until SIGTERM/SIGINT (or --duration), then
prints one JSON object: samples taken, samples with any connection, and the mean and
largest spread (max - min) over those. Stdlib only; IPv4 loopback backends.
"""

import argparse
import json
import signal
import sys
import time


def counts(ports):
    """ESTABLISHED connections per backend port, from the kernel's table."""
    per = {p: 0 for p in ports}
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "01":  # ESTABLISHED
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in per:
                per[port] += 1
    return [per[p] for p in ports]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports", required=True, help="backend ports, comma-separated")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--duration", type=float, default=0.0, help="0 = until signalled")
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    end = time.monotonic() + args.duration if args.duration > 0 else None
    samples = busy = 0
    spreads = []
    while not stop and (end is None or time.monotonic() < end):
        c = counts(ports)
        samples += 1
        if sum(c) > 0:
            busy += 1
            spreads.append(max(c) - min(c))
        time.sleep(args.interval)
    out = {
        "samples": samples,
        "busy_samples": busy,
        "mean_spread": round(sum(spreads) / len(spreads), 3) if spreads else None,
        "max_spread": max(spreads) if spreads else None,
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
