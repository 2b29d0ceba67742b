#!/usr/bin/env bash
# See tcplb work: build it, start two small HTTP backends on loopback, put tcplb in front,
# run ApacheBench through it and show how the requests spread.
#
#   scripts/demo.sh [REQUESTS [CONCURRENCY]]
#
# What it needs and does not find it installs first (ApacheBench from apache2-utils,
# python3; with apt-get, as root or through sudo); where it cannot, it says the one
# command to run. (--install, which used to ask for that, is still accepted.)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "demo: $*"; }
# shellcheck source=scripts/lib/install.sh
. "$root/scripts/lib/install.sh"

if [[ ${1:-} == --install ]]; then
    shift
fi
requests=${1:-2000}
concurrency=${2:-20}

need_rust
need=()
command -v ab >/dev/null || need+=(apache2-utils)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    apt_install "${need[@]}"
    for command in ab python3; do
        if ! command -v "$command" >/dev/null; then
            say "$command is still not on the PATH after installing ${need[*]}" >&2
            exit 1
        fi
    done
fi

echo "== building tcplb (release)"
(cd "$root" && cargo build --release --quiet)
tcplb=$root/target/release/tcplb

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    local port=$1 deadline=$((SECONDS + 10))
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "demo: nothing answers on port $port" >&2
            exit 1
        fi
    done
}

# Two tiny HTTP/1.0 backends: each says who it is and logs one line per request.
backend_ports=()
for n in 1 2; do
    port=$(free_port)
    python3 -c '
import http.server, sys
port, name = int(sys.argv[1]), sys.argv[2]
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from backend {name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        sys.stderr.write("served\n")
        sys.stderr.flush()
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True
Server(("127.0.0.1", port), Hello).serve_forever()
' "$port" "$n" 2>"$work/b$n.log" &
    pids+=($!)
    backend_ports+=("$port")
done
for port in "${backend_ports[@]}"; do wait_for_port "$port"; done

listen_port=$(free_port)
echo "== tcplb on 127.0.0.1:$listen_port -> backend 1 (127.0.0.1:${backend_ports[0]}), backend 2 (127.0.0.1:${backend_ports[1]})"
"$tcplb" --listen "127.0.0.1:$listen_port" "127.0.0.1:${backend_ports[0]}" "127.0.0.1:${backend_ports[1]}" \
    2>"$work/tcplb.log" &
pids+=($!)
wait_for_port "$listen_port"

echo "== one request:"
python3 -c "
import socket
s = socket.create_connection(('127.0.0.1', $listen_port))
s.sendall(b'GET / HTTP/1.0\r\n\r\n')
print(s.makefile('rb').read().decode().split('\r\n\r\n', 1)[1], end='')
"

echo "== ab -n $requests -c $concurrency http://127.0.0.1:$listen_port/"
ab -n "$requests" -c "$concurrency" "http://127.0.0.1:$listen_port/" 2>&1 |
    grep -E '^(Complete requests|Failed requests|Requests per second|Time per request)|^ +(50|99|100)%'

# Each backend logs one line per request it served (the demo's own request included).
echo "== how the requests spread (least active sessions, ties taken in turn):"
for n in 1 2; do
    printf '   backend %d: %5d requests\n' "$n" "$(grep -c served "$work/b$n.log" || true)"
done
echo "== tcplb's log:"
sed 's/^/   /' "$work/tcplb.log"
