#!/usr/bin/env python3
"""Sample how evenly a proxy spreads its connections over the backends.

Every --interval seconds, counts the ESTABLISHED TCP connections whose local port is each
backend's (asked of the kernel with `ss`: the backends' own view, the same for every proxy),
and keeps max - min over the backends. Runs until SIGTERM/SIGINT (or --duration), then
prints one JSON object: samples taken, samples with any connection, and the mean and
largest spread (max - min) over those. Stdlib only; IPv4 loopback backends.
"""

import argparse
import json
import signal
import subprocess
import sys
import time


def counts(ports):
    """ESTABLISHED connections per backend port: `ss` asks the kernel with a filter (netlink
    sock_diag), so thousands of TIME_WAIT sockets cost nothing, unlike /proc/net/tcp."""
    per = {p: 0 for p in ports}
    flt = " or ".join(f"sport = :{p}" for p in ports)
    out = subprocess.run(
        ["ss", "-Htn4", "state", "established", f"( {flt} )"],
        capture_output=True, text=True, check=False,
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            port = int(fields[2].rsplit(":", 1)[1])
            if port in per:
                per[port] += 1
    return [per[p] for p in ports]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports", required=True, help="backend ports, comma-separated")
    ap.add_argument("--interval", type=float, default=0.05)
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
