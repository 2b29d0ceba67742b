#!/usr/bin/env python3
"""Hold many idle keep-alive connections open through a proxy and measure its RSS.

Each connection sends one small HTTP/1.1 keep-alive request (GET /), reads the
whole response, and then stays open and idle.  The proxy's RSS (VmRSS summed over
the given PIDs) is read just before the first connection is opened and again once
all connections are open and the RSS has settled; the difference divided by the
number of connections is the memory cost of one idle proxied connection.

Prints one JSON object on stdout.  Stdlib only.
"""

import argparse
import errno
import json
import os
import selectors
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n"


def rss_kib(pids):
    """Sum of VmRSS (KiB) of the given PIDs."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def settled_rss(pids, deadline_s=3.0, interval_s=0.1, stable_reads=3):
    """Poll RSS until it reads the same `stable_reads` times in a row (or deadline)."""
    end = time.monotonic() + deadline_s
    last, same = rss_kib(pids), 1
    while same < stable_reads and time.monotonic() < end:
        time.sleep(interval_s)
        cur = rss_kib(pids)
        same = same + 1 if cur == last else 1
        last = cur
    return last


class Conn:
    __slots__ = ("sock", "state", "buf", "need")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"
        self.buf = b""
        self.need = None  # total bytes (headers + body) once headers are parsed


def response_complete(c):
    """True once c.buf holds a whole response; raises ValueError on a bad one."""
    if c.need is None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = c.buf[:end].decode("latin-1").split("\r\n")
        status = head[0].split()
        if len(status) < 2 or status[1] != "200":
            raise ValueError(f"status line {head[0]!r}")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("no Content-Length")
        c.need = end + 4 + length
    return len(c.buf) >= c.need


def open_all(host, port, n, inflight, timeout_s):
    """Open n connections, each doing one request; return (open_conns, errors)."""
    sel = selectors.DefaultSelector()
    done, errors = [], {}
    started = 0
    active = 0
    deadline = time.monotonic() + timeout_s

    def fail(c, why):
        nonlocal active
        errors[why] = errors.get(why, 0) + 1
        sel.unregister(c.sock)
        c.sock.close()
        active -= 1

    while (started < n or active) and time.monotonic() < deadline:
        while started < n and active < inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                s.close()
                errors[os.strerror(err)] = errors.get(os.strerror(err), 0) + 1
                started += 1
                continue
            c = Conn(s)
            sel.register(s, selectors.EVENT_WRITE, c)
            started += 1
            active += 1
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            if c.state == "connect":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(c, os.strerror(err))
                    continue
                try:
                    c.sock.send(REQUEST)  # tiny: fits in the send buffer at once
                except OSError as e:
                    fail(c, e.strerror or str(e))
                    continue
                c.state = "read"
                sel.modify(c.sock, selectors.EVENT_READ, c)
            else:
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail(c, e.strerror or str(e))
                    continue
                if not chunk:
                    fail(c, "closed before full response")
                    continue
                c.buf += chunk
                try:
                    complete = response_complete(c)
                except ValueError as e:
                    fail(c, f"bad response: {e}")
                    continue
                if complete:
                    sel.unregister(c.sock)
                    c.buf = b""
                    active -= 1
                    done.append(c)
    # Whatever is still pending at the deadline counts as a timeout.
    for key in list(sel.get_map().values()):
        fail(key.data, "timeout")
    if started < n:
        errors["not started (deadline)"] = n - started
    sel.close()
    return done, errors


def count_dropped(conns):
    """Connections that were closed (or got unexpected data) while idle."""
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ)
    dropped = len(sel.select(timeout=0))
    sel.close()
    return dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--pids", required=True, help="comma-separated PIDs whose RSS to sum")
    ap.add_argument("--inflight", type=int, default=100,
                    help="connections being set up at once (default 100)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="give up opening connections after this many seconds")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="extra seconds to hold the connections open after measuring")
    ap.add_argument("--label", action="append", default=[],
                    help="KEY=VALUE copied into the JSON output (repeatable)")
    args = ap.parse_args()

    pids = [int(p) for p in args.pids.split(",") if p]
    record = {}
    for kv in args.label:
        key, _, value = kv.partition("=")
        record[key] = int(value) if value.isdigit() else value

    rss_before = settled_rss(pids)
    t0 = time.monotonic()
    conns, errors = open_all(args.host, args.port, args.conns, args.inflight, args.timeout)
    open_s = time.monotonic() - t0
    rss_open = settled_rss(pids)
    dropped = count_dropped(conns)
    if args.hold > 0:
        time.sleep(args.hold)
    for c in conns:
        c.sock.close()

    record.update(
        conns=args.conns,
        ok=len(conns),
        failed=args.conns - len(conns) + dropped,
        dropped_while_idle=dropped,
        errors=errors,
        open_seconds=round(open_s, 3),
        rss_before_kib=rss_before,
        rss_open_kib=rss_open,
        kib_per_conn=round((rss_open - rss_before) / args.conns, 3),
    )
    print(json.dumps(record))
    return 0 if record["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
