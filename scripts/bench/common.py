"""What the Python benchmarks (latency.py, queue.py) share: free ports, waiting for a
listener, a proxy's CPU from /proc, ab's numbers, the processes a run started, and the nginx
HTTP backends every one of them puts behind the proxies."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, name, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{name} exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} does not listen on {port}")


def cpu_ticks(pids):
    """utime + stime of `pids`, in clock ticks (CLK_TCK a second)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def ab(port, n, c, *extra):
    """ab on CPU 0: (req/s, p50 ms, p99 ms, failed requests + non-2xx answers)."""
    out = subprocess.run(
        ["taskset", "-c", "0", "ab", "-q", *extra, "-n", str(n), "-c", str(c),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    errors = re.search(r"Non-2xx responses:\s+(\d+)", out)
    failed += int(errors.group(1)) if errors else 0
    pct = dict((int(a), int(b)) for a, b in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M))
    return rps, pct.get(50), pct.get(99), failed


def need(*tools):
    for tool in tools:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is needed (scripts/bench.sh --install)")


class Procs(list):
    """The processes a run started: all stopped at the end, or on SIGTERM."""

    def __init__(self):
        super().__init__()
        signal.signal(signal.SIGTERM, lambda *_: (self.stop_all(), sys.exit(1)))

    def stop_all(self):
        for p in self:
            if p.poll() is None:
                p.terminate()
        for p in self:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def nginx_backends(tmp, procs, count, listen_options=""):
    """`count` nginx HTTP servers (one process, on CPU 0) answering "ok"; their ports."""
    ports = [free_port() for _ in range(count)]
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{p}{listen_options}; location / {{ return 200 'ok\\n'; }} }}"
        for p in ports)
    os.makedirs(f"{tmp}/backend", exist_ok=True)
    with open(f"{tmp}/backend/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/backend/nginx.pid;
error_log {tmp}/backend/error.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}/backend;
{servers}
}}
""")
    procs.append(subprocess.Popen(
        ["taskset", "-c", "0", "nginx", "-p", f"{tmp}/backend", "-c",
         f"{tmp}/backend/nginx.conf", "-e", f"{tmp}/backend/error.log"]))
    for p in ports:
        wait_listening(p, procs[-1], "backend nginx")
    return ports
