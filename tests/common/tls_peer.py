#!/usr/bin/env python3
"""Real TLS peers for tests/tls.rs, on Python's ssl module (OpenSSL): a backend server and
a client, each speaking TLS end to end through tcplb.

  tls_peer.py serve --cert C --key K --name NAME [--alpn P,P] [--proxy]
      Listens on 127.0.0.1 (a free port), prints "port N", serves until killed. Each
      connection: (with --proxy, a PROXY protocol v1 or v2 header first), the TLS handshake,
      then a request: an 8-byte big-endian length and that many bytes. The answer: one JSON
      line {"backend", "sni", "alpn", "source", "sha256"} (what it saw), then the request's
      bytes echoed.

  tls_peer.py client --port P [--sni NAME] [--alpn P,P] --cafile F [--len N] [--seed S]
                     [--pace once|bytewise|records|split] [--proxy-v1 IP:PORT]
      Connects, sends its ClientHello as --pace says (once: one write; bytewise: a byte a
      write, 1 ms apart; records: re-framed into two TLS records cut in the middle of the
      server name, written 50 ms apart; split: two writes 100 ms apart), finishes the
      handshake, sends a request of --len bytes made from --seed, and prints one JSON line:
      {"cn" (the certificate's subject CN), "alpn", "server" (the backend's line),
      "echo_ok" (the echo is byte for byte what was sent), "hello_len"}; or {"error": ...}.
      With --batch, one connection per JSON line of stdin (keys as the flags, with _ for -),
      one such line each: a test of many connections pays for one Python start.
"""
import argparse
import hashlib
import json
import random
import socket
import ssl
import struct
import sys
import threading
import time


def read_exactly(read, n):
    out = bytearray()
    while len(out) < n:
        chunk = read(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


# ---------------------------------------------------------------------------------------
# The backend


def read_proxy_header(conn):
    """Reads exactly a PROXY protocol header; returns the source it names as IP:PORT."""
    first = read_exactly(conn.recv, 12)
    if first == b"\r\n\r\n\x00\r\nQUIT\n":
        ver_cmd, fam, length = struct.unpack("!BBH", read_exactly(conn.recv, 4))
        body = read_exactly(conn.recv, length)
        if fam == 0x11:
            src = socket.inet_ntop(socket.AF_INET, body[0:4])
            (port,) = struct.unpack("!H", body[8:10])
            return f"{src}:{port}"
        if fam == 0x21:
            src = socket.inet_ntop(socket.AF_INET6, body[0:16])
            (port,) = struct.unpack("!H", body[32:34])
            return f"[{src}]:{port}"
        return "local"
    line = bytearray(first)
    while not line.endswith(b"\r\n"):
        line += read_exactly(conn.recv, 1)
    parts = line.decode().split()
    if parts[1] == "UNKNOWN":
        return "unknown"
    src = parts[2] if parts[1] == "TCP4" else f"[{parts[2]}]"
    return f"{src}:{parts[4]}"


def serve(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn.split(","))
    seen = threading.local()

    def sni_callback(sock, name, context):
        seen.sni = name

    ctx.sni_callback = sni_callback
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"port {listener.getsockname()[1]}", flush=True)

    def handle(conn):
        try:
            conn.settimeout(20)
            source = read_proxy_header(conn) if args.proxy else None
            seen.sni = None
            tls = ctx.wrap_socket(conn, server_side=True)
            (n,) = struct.unpack("!Q", read_exactly(tls.recv, 8))
            body = read_exactly(tls.recv, n)
            line = {
                "backend": args.name,
                "sni": seen.sni,
                "alpn": tls.selected_alpn_protocol(),
                "source": source,
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            tls.sendall(json.dumps(line).encode() + b"\n" + body)
            tls.close()
        except Exception as e:  # a test's client may go away on purpose
            print(f"{args.name}: {e!r}", file=sys.stderr, flush=True)
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# ---------------------------------------------------------------------------------------
# The client


def reframe_in_two(hello, sni):
    """The one-record ClientHello `hello` as two records, cut in the middle of `sni`."""
    assert hello[0] == 22, "a handshake record"
    (length,) = struct.unpack("!H", hello[3:5])
    assert length == len(hello) - 5, "one record"
    fragment = hello[5:]
    at = fragment.find(sni.encode()) + len(sni) // 2 if sni else len(fragment) // 2
    version = hello[1:3]
    return [
        b"\x16" + version + struct.pack("!H", at) + fragment[:at],
        b"\x16" + version + struct.pack("!H", len(fragment) - at) + fragment[at:],
    ]


def client(args):
    """One connection as `args` says: what it saw, as a dict."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.cafile)
    ctx.check_hostname = False  # which backend answered is what the test checks
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn.split(","))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=args.sni)
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.proxy_v1:
        host, port = args.proxy_v1.rsplit(":", 1)
        sock.sendall(f"PROXY TCP4 {host} 127.0.0.1 {port} 443\r\n".encode())
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    if args.pace == "once":
        sock.sendall(hello)
    elif args.pace == "bytewise":
        for b in hello:
            sock.sendall(bytes([b]))
            time.sleep(0.001)
    elif args.pace == "records":
        first, second = reframe_in_two(hello, args.sni)
        sock.sendall(first)
        time.sleep(0.05)
        sock.sendall(second)
    elif args.pace == "split":
        sock.sendall(hello[:1000])
        time.sleep(0.1)
        sock.sendall(hello[1000:])

    def flush():
        data = outgoing.read()
        if data:
            sock.sendall(data)

    def pull():
        data = sock.recv(65536)
        if not data:
            raise EOFError("the connection closed")
        incoming.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            pull()
    flush()
    payload = random.Random(args.seed).randbytes(args.len)
    tls.write(struct.pack("!Q", len(payload)) + payload)
    flush()

    def read(n):
        while True:
            try:
                return tls.read(n)
            except ssl.SSLWantReadError:
                pull()
            except ssl.SSLZeroReturnError:
                return b""

    line = bytearray()
    while not line.endswith(b"\n"):
        line += read_exactly(read, 1)
    echo = read_exactly(read, len(payload))
    server = json.loads(line)
    cert = tls.getpeercert()
    cn = dict(x[0] for x in cert["subject"])["commonName"]
    sock.close()
    return {
        "cn": cn,
        "alpn": tls.selected_alpn_protocol(),
        "server": server,
        "echo_ok": echo == payload and server["sha256"] == hashlib.sha256(payload).hexdigest(),
        "hello_len": len(hello),
    }


def answer(args):
    try:
        return client(args)
    except Exception as e:
        return {"error": repr(e)}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--alpn")
    s.add_argument("--proxy", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--sni")
    c.add_argument("--alpn")
    c.add_argument("--cafile", required=True)
    c.add_argument("--len", type=int, default=1000)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--pace", default="once", choices=["once", "bytewise", "records", "split"])
    c.add_argument("--proxy-v1")
    c.add_argument(
        "--batch",
        action="store_true",
        help="one connection per JSON line of stdin ({sni, alpn, pace, proxy_v1, len, seed}, "
        "each defaulting to the flags), one answer line each",
    )
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
    elif args.batch:
        for line in sys.stdin:
            one = argparse.Namespace(**vars(args))
            for key, value in json.loads(line).items():
                setattr(one, key, value)
            print(json.dumps(answer(one)), flush=True)
    else:
        print(json.dumps(answer(args)), flush=True)


if __name__ == "__main__":
    main()
