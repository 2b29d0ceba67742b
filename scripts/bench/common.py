"""What the Python benchmarks (latency.py, queue.py, fastpath.py) share: free ports, waiting
for a listener, a proxy's CPU from /proc (and the whole machine's from /proc/stat), ab's
numbers, the processes a run started, the nginx HTTP backends every one of them puts behind
the proxies, the proxies under test (tcplb, nginx stream, HAProxy) pinned to CPU 1, tcplb's
/metrics, and saving a run's table and raw numbers under bench-results/."""

import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_CPU = "0"  # backends and clients
PROXY_CPU = "1"  # the proxy under test
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


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


def machine_busy_ticks():
    """Busy clock ticks of every CPU together (/proc/stat: user + nice + system + irq +
    softirq + steal): also the kernel work charged to no process of ours (softirq in
    other contexts, kworker threads)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu"
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return user + nice + system + irq + softirq + steal


def stack_snapshot(roots):
    """What stack_seconds needs: per task of `roots`' trees and the kernel's threads
    (children of kthreadd, pid 2) its parent, own ticks and its reaped children's ticks;
    this script's reaped children's seconds."""
    tasks = {}  # pid: (ppid, own ticks, reaped children's ticks)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        tasks[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                           int(fields[13]) + int(fields[14]))
    wanted, frontier = set(roots) | {2}, set(roots) | {2}
    while frontier:
        frontier = {pid for pid, (ppid, *_) in tasks.items() if ppid in frontier} - wanted
        wanted |= frontier
    clients = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {p: tasks[p] for p in wanted if p in tasks}, clients.ru_utime + clients.ru_stime


def stack_seconds(before, after):
    """CPU seconds between two stack_snapshots of what a benchmark runs, and of little else
    the machine runs: the processes `roots` and their descendants (with the time of those
    that exited, through their parents), the clients (this script's children), the
    kernel's threads (kworkers, ksoftirqd). A task's time includes the softirq work done
    in its context (the kernel here has no CONFIG_IRQ_TIME_ACCOUNTING; /proc/stat's softirq
    column would count it twice). A kernel thread that exits takes its last moments' time
    with it."""
    (b_tasks, b_clients), (a_tasks, a_clients) = before, after
    ticks = 0
    for pid, (_, own, reaped) in a_tasks.items():
        _, own0, reaped0 = b_tasks.get(pid, (0, 0, 0))
        ticks += own - own0 + reaped - reaped0
    for pid, (ppid, own0, reaped0) in b_tasks.items():
        if pid not in a_tasks and ppid in a_tasks and ppid != 2:
            ticks -= own0 + reaped0  # its parent's reaped time now holds all of it
    return ticks / CLK_TCK + a_clients - b_clients


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


def nginx_backends(tmp, procs, count, listen_options="", www=None):
    """`count` nginx HTTP servers (one process, on CPU 0) answering "ok"; their ports. With
    `www`, a directory, they also serve its files under /files/ (sendfile on)."""
    ports = [free_port() for _ in range(count)]
    files = (f" location /files/ {{ alias {www}/; }}" if www else "")
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{p}{listen_options}; location / {{ return 200 'ok\\n'; }}"
        f"{files} }}"
        for p in ports)
    os.makedirs(f"{tmp}/backend", exist_ok=True)
    with open(f"{tmp}/backend/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/backend/nginx.pid;
error_log {tmp}/backend/error.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}/backend; sendfile on;
keepalive_timeout 300s; keepalive_requests 100000000;
{servers}
}}
""")
    procs.append(subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, "nginx", "-p", f"{tmp}/backend", "-c",
         f"{tmp}/backend/nginx.conf", "-e", f"{tmp}/backend/error.log"]))
    for p in ports:
        wait_listening(p, procs[-1], "backend nginx")
    return ports


def children(pid):
    return [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                           text=True).stdout.split()]


def tcplb(binary, procs, port, backends, *flags, admin=None):
    """tcplb on CPU 1 listening on `port`; its pids (one process). With --bpf-redirect the
    fast path is run although it stays off by default (docs/fastpath.md: a benchmark of
    it is what TCPLB_BPF_REDIRECT_UNSAFE is for)."""
    cmd = ["taskset", "-c", PROXY_CPU, binary, "--listen", f"127.0.0.1:{port}", *flags]
    if admin:
        cmd += ["--admin", f"127.0.0.1:{admin}"]
    env = {**os.environ, "RUST_LOG": "warn"}
    if "--bpf-redirect" in flags:
        env["TCPLB_BPF_REDIRECT_UNSAFE"] = "1"
    p = subprocess.Popen(cmd + list(backends), stderr=subprocess.DEVNULL, env=env)
    procs.append(p)
    wait_listening(port, p, "tcplb")
    return [p.pid]


def nginx_stream(tmp, procs, name, port, backends, balance="least_conn"):
    """nginx stream (1 worker, on CPU 1, long timeouts, no logs) on `port` in front of
    `backends` ("host:port"); its pids: the master and the worker."""
    d = f"{tmp}/{name}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write((f"load_module {STREAM_MODULE};\n" if os.path.exists(STREAM_MODULE) else "")
                + f"worker_processes 1; daemon off; pid {d}/nginx.pid;\n"
                f"error_log {d}/error.log warn; events {{ worker_connections 4096; }}\n"
                f"stream {{ upstream b {{ {balance};\n"
                + "".join(f"  server {b};\n" for b in backends)
                + f"}} server {{ listen 127.0.0.1:{port}; proxy_pass b;"
                " proxy_connect_timeout 3s; proxy_timeout 300s; } }\n")
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU, "nginx", "-p", d, "-c", f"{d}/nginx.conf",
                          "-e", f"{d}/error.log"])
    procs.append(p)
    wait_listening(port, p, f"nginx stream ({name})")
    deadline = time.monotonic() + 5
    while not (workers := children(p.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not workers:
        raise SystemExit(f"nginx stream ({name}) started no worker")
    return [p.pid] + workers


def haproxy(tmp, procs, name, port, backends, balance="leastconn", splice=False, extra=""):
    """HAProxy (mode tcp, nbthread 1, on CPU 1, long timeouts, no logs) on `port` in front
    of `backends`; with `splice`, option splice-request and splice-response (forced on).
    `extra`: more lines for the backend section. Its pids."""
    cfg = f"{tmp}/{name}.cfg"
    with open(cfg, "w") as f:
        f.write("global\n    nbthread 1\n    maxconn 4000\n"
                + ("    maxpipes 256\n" if splice else "")
                + f"defaults\n    mode tcp\n    balance {balance}\n    timeout connect 3s\n"
                "    timeout client 300s\n    timeout server 300s\n"
                + ("    option splice-request\n    option splice-response\n" if splice else "")
                + f"frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n"
                "backend be\n" + extra
                + "".join(f"    server b{i} {b}\n" for i, b in enumerate(backends)))
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU, "haproxy", "-db", "-f", cfg],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    wait_listening(port, p, f"HAProxy ({name})")
    return [p.pid]


def metrics(port):
    """tcplb's /metrics on 127.0.0.1:`port`: {(name, labels text): value}."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    body = data.decode().split("\r\n\r\n", 1)[1]
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


def metric_sum(sample, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, lab), v in sample.items()
               if n == name and all(w in lab.split(",") for w in want))


def save_results(kind, markdown, record, quick=False):
    """bench-results/KIND-STAMP[-quick].md (the table) and .json (`record`: meta and raw
    per-round numbers); their paths."""
    os.makedirs(f"{ROOT}/bench-results", exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{ROOT}/bench-results/{kind}-{stamp}" + ("-quick" if quick else "")
    with open(f"{base}.md", "w") as f:
        f.write(markdown)
    with open(f"{base}.json", "w") as f:
        json.dump(record, f, indent=1)
    return f"{base}.md", f"{base}.json"
