#!/usr/bin/env bash
# Benchmark tcplb side by side with HAProxy (with and without splice) and nginx stream on
# loopback.
# Run `scripts/bench.sh --help` for what it does and needs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
HELPERS=$SCRIPT_DIR/bench

# The exact command line, for the report.
COMMAND="$0"
for arg in "$@"; do COMMAND+=" $(printf '%q' "$arg")"; done
if [[ -n ${TCPLB_BIN:-} ]]; then COMMAND="TCPLB_BIN=$(printf '%q' "$TCPLB_BIN") $COMMAND"; fi
if [[ -n ${TCPLB_BASE_BIN:-} ]]; then COMMAND="TCPLB_BASE_BIN=$(printf '%q' "$TCPLB_BASE_BIN") $COMMAND"; fi
if [[ -n ${TCPLB_ARGS:-} ]]; then COMMAND="TCPLB_ARGS=$(printf '%q' "$TCPLB_ARGS") $COMMAND"; fi
# Extra tcplb flags (word-split on purpose), e.g. TCPLB_ARGS='--buffer-size 64k'.
read -r -a TCPLB_EXTRA <<<"${TCPLB_ARGS:-}"

usage() {
    cat <<EOF
Usage: $(basename "$0") [--quick] [--rounds N] [--base-port PORT] [--install]
       $(basename "$0") --tls [--quick] [--rounds N] [--base-port PORT]

Benchmarks tcplb against HAProxy (mode tcp, leastconn), HAProxy with splice forced
on ("HAProxy splice": option splice-request + option splice-response) and nginx
stream (least_conn) on loopback, all forwarding to the same 4 nginx HTTP backends,
plus ab straight to one backend ("direct") as the baseline; with TCPLB_BASE_BIN,
also a second tcplb build ("tcplb base", say the main branch) in the same run.
Prints a Markdown table on stdout and saves it with the raw per-round numbers under
bench-results/ in the repo. After the rounds it checks which proxies spliced: the
kernel pipes each holds (/proc/PID/fd) and, where strace is installed, the splice
calls each makes during one more bulk request.

Scenarios (targets interleaved round by round, medians over the rounds):
  startup    proxy RSS right after start, before any traffic
  conn       ab -n 20000 -c 50          (new connection per request)
  keepalive  ab -k -n 100000 -c 50
  bulk       ab -k -n 40 -c 4 .../big   (64 MiB file)
  idle       5000 idle keep-alive connections held open: proxy KiB per connection
Each proxy runs alone on CPU 1; the backends, ab and the idle client on CPU 0.

Options:
  --quick          smoke run: 1 round, a tenth of the requests, bulk -n 8,
                   500 idle connections (well under a minute)
  --rounds N       rounds to run (default 3; 1 with --quick)
  --base-port P    ports used: P+1..P+4 backends, P+10..P+14 proxies (default 28100)
  --install        apt-get install whatever is missing (needs root)
  --tls [--quick] [--rounds N]
                   instead: new TLS connections through tcplb routing by SNI (routes),
                   tcplb plain passthrough, HAProxy (inspect-delay + req.ssl_sni) and nginx
                   stream (ssl_preread + map): connections per second and proxy CPU per
                   connection, interleaved rounds, medians (scripts/bench/tls.sh)
  --multicore [--quick] [--rounds N]
                   instead: tcplb --workers 1 and 2, HAProxy nbthread 2, nginx stream
                   worker_processes 2 with and without a shared zone, tcplb and nginx with
                   8 workers, on every CPU: CPU per request and balance error
                   (scripts/bench/multicore.sh)
  --latency [--rounds N] [-n N] [-c N]
                   instead: four HTTP backends, one with 50 ms added; tcplb least-active and
                   least-latency, HAProxy leastconn, nginx least_conn: p50/p99, req/s and
                   proxy CPU per request (scripts/bench/latency.py)
  --queue [--rounds N] [-n N] [-c N]
                   instead: two HTTP backends of 10 slots each, ab -c 200 through tcplb
                   (maxconn + queue), HAProxy (maxconn + timeout queue) and nginx stream
                   (max_conns): failed requests, p50/p99, proxy CPU per request; and the
                   queue's hand-over delay (scripts/bench/queue.py)
  --dashboard [--rounds N] [-n N] [--poll SECONDS]
                   instead: two tcplb of one config, one polled on /api/stats every second
                   as the open dashboard does: CPU per session of each, rounds interleaved,
                   the ratio and the rounds' spread (scripts/bench/dashboard.py)
  --bpf [--quick] [--rounds N] [--only SCENARIOS]
                   instead: the kernel fast path (tcplb --bpf-redirect, needs root) against
                   tcplb in user space, nginx stream, HAProxy (and HAProxy splice for bulk)
                   and no proxy: keep-alive ab -k, redis-benchmark -P 16, pgbench -S and
                   1 GiB bulk; throughput, p99, proxy CPU and whole-machine CPU (softirq
                   and kworkers included) per request or GiB, the fast path's ratios to
                   each, and whether it engaged (/metrics). --quick: about 2 minutes.
                   Needs redis-server, redis-tools, postgresql, curl, strace
                   (scripts/bench/fastpath.py)
  --services [--services N]
                   instead: N services x 4 backends (default 1000) in one config file:
                   start-up time, and the longest round trip through an untouched
                   service while reloads change another pool (scripts/bench/services.py)
  -h, --help       show this help

Environment:
  TCPLB_ARGS       extra flags for tcplb, e.g. TCPLB_ARGS='--buffer-size 64k'
  TCPLB_BIN        tcplb binary to benchmark; if unset, the script runs
                   'cargo build --release' in the repo and uses target/release/tcplb
  TCPLB_CONFIG     if set, also the same tcplb started with a config file of the same
                   one service and pool ("tcplb config"), for what a config costs
  TCPLB_BASE_BIN   another tcplb binary to run beside it as "tcplb base" (same
                   TCPLB_ARGS), e.g. a release build of main before a change:
                     git worktree add /tmp/base main && (cd /tmp/base &&
                     cargo build --release) && TCPLB_BASE_BIN=/tmp/base/target/release/tcplb

Needs (Debian 12): apache2-utils (ab), nginx-light, libnginx-mod-stream, haproxy,
util-linux (taskset), procps (pgrep), python3; at least 2 CPUs; an open-files
limit of 20000.
EOF
}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    printf 'bench.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Options

ROUNDS=""
QUICK=0
INSTALL=0
BASE_PORT=28100
while (($#)); do
    case $1 in
    --quick) QUICK=1 ;;
    --rounds)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive integer"
        ROUNDS=$2
        shift
        ;;
    --base-port)
        if ! [[ ${2:-} =~ ^[0-9]+$ ]] || ((${2} < 1024 || ${2} > 65000)); then
            die "--base-port needs a number from 1024 to 65000"
        fi
        BASE_PORT=$2
        shift
        ;;
    --install) INSTALL=1 ;;
    --multicore)
        # The multi-core comparison is its own run (scripts/bench/multicore.sh).
        shift
        exec "$HELPERS/multicore.sh" "$@"
        ;;
    --tls)
        # TLS passthrough by name is its own run (scripts/bench/tls.sh).
        shift
        exec "$HELPERS/tls.sh" "$@"
        ;;
    --latency)
        # Least-latency against least-active, HAProxy and nginx (scripts/bench/latency.py).
        shift
        if [[ -z ${TCPLB_BIN:-} ]]; then
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        exec python3 "$HELPERS/latency.py" --binary "${TCPLB_BIN:-$ROOT/target/release/tcplb}" "$@"
        ;;
    --queue)
        # Backend limits with a queue against HAProxy and nginx (scripts/bench/queue.py).
        shift
        if [[ -z ${TCPLB_BIN:-} ]]; then
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        exec python3 "$HELPERS/queue.py" --binary "${TCPLB_BIN:-$ROOT/target/release/tcplb}" "$@"
        ;;
    --dashboard)
        # What the admin dashboard's polling costs per session (scripts/bench/dashboard.py).
        shift
        if [[ -z ${TCPLB_BIN:-} ]]; then
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        exec python3 "$HELPERS/dashboard.py" --binary "${TCPLB_BIN:-$ROOT/target/release/tcplb}" "$@"
        ;;
    --bpf)
        # The kernel fast path against its peers, per request and per GiB (scripts/bench/fastpath.py).
        shift
        if [[ -z ${TCPLB_BIN:-} ]]; then
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        exec python3 "$HELPERS/fastpath.py" --binary "${TCPLB_BIN:-$ROOT/target/release/tcplb}" "$@"
        ;;
    --services)
        # Many services in one process: start-up and reload stall (scripts/bench/services.py).
        shift
        if [[ -z ${TCPLB_BIN:-} ]]; then
            (cd "$ROOT" && cargo build --release --quiet)
        fi
        exec python3 "$HELPERS/services.py" --binary "${TCPLB_BIN:-$ROOT/target/release/tcplb}" "$@"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
    shift
done

CLIENT_CPU=0 # nginx backends, ab, idle client
PROXY_CPU=1  # the proxy under test
CONCURRENCY=50
if ((QUICK)); then
    : "${ROUNDS:=1}"
    CONN_N=2000 KEEPALIVE_N=10000 BULK_N=8 IDLE_N=500
else
    : "${ROUNDS:=3}"
    CONN_N=20000 KEEPALIVE_N=100000 BULK_N=40 IDLE_N=5000
fi
BULK_C=4
BIG_BYTES=$((64 * 1024 * 1024))
SMALL_BODY=$(printf 'x%.0s' {1..99}) # + "\n" = 100 bytes
NOFILE=20000

BACKEND_PORTS=("$((BASE_PORT + 1))" "$((BASE_PORT + 2))" "$((BASE_PORT + 3))" "$((BASE_PORT + 4))")
declare -A PORT=(
    [direct]=${BACKEND_PORTS[0]}
    [haproxy]=$((BASE_PORT + 10))
    [nginx]=$((BASE_PORT + 11))
    [tcplb]=$((BASE_PORT + 12))
    [haproxy-splice]=$((BASE_PORT + 13))
    [tcplb-base]=$((BASE_PORT + 14))
    [tcplb-config]=$((BASE_PORT + 15))
)
TARGETS=(direct haproxy haproxy-splice nginx tcplb)
PROXIES=(haproxy haproxy-splice nginx tcplb)
if [[ -n ${TCPLB_BASE_BIN:-} ]]; then
    TARGETS+=(tcplb-base)
    PROXIES+=(tcplb-base)
fi
if [[ -n ${TCPLB_CONFIG:-} ]]; then
    TARGETS+=(tcplb-config)
    PROXIES+=(tcplb-config)
fi

# ---------------------------------------------------------------------------
# Dependencies

# Prints the path of nginx's dynamic stream module, or nothing if nginx has the
# stream module built in; fails if it has neither.
find_stream_module() {
    local f
    # (grep without -q: reading all of nginx -V keeps pipefail from seeing a SIGPIPE)
    if nginx -V 2>&1 | grep -E -- '--with-stream( |$)' >/dev/null; then return 0; fi
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        if [[ -f $f ]]; then
            echo "$f"
            return 0
        fi
    done
    f=$(sed -n 's/^[[:space:]]*load_module[[:space:]]\+\([^;]*ngx_stream_module\.so\);.*/\1/p' \
        /etc/nginx/modules-enabled/*.conf 2>/dev/null | head -n1)
    [[ -n $f && $f != /* ]] && f=/usr/share/nginx/$f
    [[ -n $f && -f $f ]] || return 1
    echo "$f"
}

missing_packages() { # prints the Debian packages whose commands are missing
    local missing=()
    command -v ab >/dev/null || missing+=(apache2-utils)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx-light)
    if ! command -v nginx >/dev/null || ! find_stream_module >/dev/null; then
        missing+=(libnginx-mod-stream)
    fi
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v python3 >/dev/null || missing+=(python3)
    command -v getconf >/dev/null || missing+=(libc-bin)
    echo "${missing[*]}"
}

check_deps() {
    local missing
    missing=$(missing_packages)
    [[ -z $missing ]] && return 0
    if ((INSTALL)); then
        ((EUID == 0)) || die "--install needs root; run as root or: sudo apt-get install -y $missing"
        log "installing: $missing"
        # shellcheck disable=SC2086 # word splitting wanted: one package a word
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $missing; } >&2; then
            die "apt-get install -y $missing failed"
        fi
        missing=$(missing_packages)
        [[ -z $missing ]] && return 0
        die "still missing after apt-get install: $missing (are they on PATH?)"
    fi
    cat >&2 <<EOF
bench.sh: missing packages: $missing
Install them with:
    apt-get update && apt-get install -y $missing
or rerun this script with --install (as root).
EOF
    exit 2
}

check_deps
STREAM_MODULE=$(find_stream_module) || die "cannot find nginx's ngx_stream_module.so (package libnginx-mod-stream)"

CPUS=$(getconf _NPROCESSORS_ONLN)
((CPUS >= 2)) || die "needs at least 2 CPUs (proxy on CPU $PROXY_CPU, clients on CPU $CLIENT_CPU); found $CPUS"
CLK_TCK=$(getconf CLK_TCK)

hard_nofile=$(ulimit -Hn)
if [[ $hard_nofile != unlimited ]] && ((hard_nofile < NOFILE)); then
    die "the hard open-files limit is $hard_nofile; this benchmark needs $NOFILE (ulimit -Hn)"
fi
ulimit -n "$NOFILE"

# ---------------------------------------------------------------------------
# tcplb binary

if [[ -n ${TCPLB_BIN:-} ]]; then
    [[ -x $TCPLB_BIN ]] || die "TCPLB_BIN=$TCPLB_BIN is not an executable file"
    TCPLB=$TCPLB_BIN
    TCPLB_ORIGIN="TCPLB_BIN=$TCPLB_BIN"
else
    command -v cargo >/dev/null || die "cargo not found: install Rust, or point TCPLB_BIN at a tcplb binary"
    log "building tcplb: cargo build --release"
    (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    TCPLB=$ROOT/target/release/tcplb
    TCPLB_ORIGIN="release build of git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
fi
if [[ -n ${TCPLB_BASE_BIN:-} ]]; then
    [[ -x $TCPLB_BASE_BIN ]] || die "TCPLB_BASE_BIN=$TCPLB_BASE_BIN is not an executable file"
fi

# ---------------------------------------------------------------------------
# Ports, temp dir, clean-up

port_busy() {
    ! python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
for p in "${BACKEND_PORTS[@]}" "${PORT[haproxy]}" "${PORT[haproxy-splice]}" "${PORT[nginx]}" \
    "${PORT[tcplb]}" "${PORT[tcplb-base]}" "${PORT[tcplb-config]}"; do
    if port_busy "$p"; then
        die "port $p on 127.0.0.1 is busy (pick other ports with --base-port)"
    fi
done

PIDS=()        # every long-running process started here
CURRENT_PID="" # the ab / idle client running now
TMP=$(mktemp -d -t tcplb-bench.XXXXXX)

alive() { # PID: true while it runs (not a zombie)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

cleanup() {
    local rc=$? p i left
    trap - EXIT HUP INT TERM
    set +e
    [[ -n $CURRENT_PID ]] && kill -TERM "$CURRENT_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        left=0
        for p in "${PIDS[@]}" $CURRENT_PID; do alive "$p" && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}" $CURRENT_PID; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a client command in the background and wait for it, so that a signal
# interrupts the wait at once and clean-up can kill the client.
run_client() {
    local rc=0
    "$@" &
    CURRENT_PID=$!
    wait "$CURRENT_PID" || rc=$?
    CURRENT_PID=""
    return "$rc"
}

# Keep this shell (and so /proc polling etc.) off the proxy's CPU.
taskset -cp "$CLIENT_CPU" $$ >/dev/null

chmod 755 "$TMP" # nginx workers run as an unprivileged user and read www/
mkdir -p "$TMP/www" "$TMP/backend" "$TMP/stream" "$TMP/haproxy" "$TMP/haproxy-splice"
head -c "$BIG_BYTES" /dev/urandom >"$TMP/www/big"
chmod 644 "$TMP/www/big"
RAW=$TMP/raw.jsonl
: >"$RAW"

# ---------------------------------------------------------------------------
# Configurations

backend_servers=""
for p in "${BACKEND_PORTS[@]}"; do
    backend_servers+="
    server {
        listen 127.0.0.1:$p backlog=4096;
        root $TMP/www;
        location = / { default_type text/plain; return 200 \"$SMALL_BODY\n\"; }
        location = /big { default_type application/octet-stream; }
    }"
done
cat >"$TMP/backend/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/backend/body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
$backend_servers
}
EOF

upstreams=""
haproxy_servers=""
tcplb_backends=()
for i in "${!BACKEND_PORTS[@]}"; do
    upstreams+="        server 127.0.0.1:${BACKEND_PORTS[i]};"$'\n'
    haproxy_servers+="    server b$((i + 1)) 127.0.0.1:${BACKEND_PORTS[i]}"$'\n'
    tcplb_backends+=("127.0.0.1:${BACKEND_PORTS[i]}")
done

{
    [[ -n $STREAM_MODULE ]] && echo "load_module $STREAM_MODULE;"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
pid $TMP/stream/nginx.pid;
error_log $TMP/stream/error.log warn;
events { worker_connections 16384; }
stream {
    upstream backends {
        least_conn;
$upstreams    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        proxy_pass backends;
        proxy_connect_timeout 3s;
        proxy_timeout 300s;
    }
}
EOF
} >"$TMP/stream/nginx.conf"

# HAProxy needs about 2 fds per proxied connection and the open-files limit is
# 20000, so maxconn 9500 (tcplb's default max-conns is 10000; nginx's 16384
# worker_connections give ~8000 proxied sessions); all hold the 5000 idle ones.
cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9500
    pidfile $TMP/haproxy/haproxy.pid

defaults
    mode tcp
    balance leastconn
    timeout connect 3s
    timeout client 300s
    timeout server 300s

frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    maxconn 9500
    default_backend be

backend be
$haproxy_servers
EOF

# The same with splice forced on for both directions (option splice-auto does not engage
# in this test). Pipes cost 2 fds each: maxpipes 256 (tcplb's default --pipes) keeps
# maxconn 9500 within the 20000 open files.
sed -e '0,/^    maxconn 9500$/s//    maxconn 9500\n    maxpipes 256/' \
    -e "s|$TMP/haproxy/|$TMP/haproxy-splice/|" \
    -e "s|127.0.0.1:${PORT[haproxy]}$|127.0.0.1:${PORT[haproxy-splice]}|" \
    -e 's|^    timeout server 300s$|    timeout server 300s\n    option splice-request\n    option splice-response|' \
    "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy-splice/haproxy.cfg"
if ! grep -q 'option splice-response' "$TMP/haproxy-splice/haproxy.cfg" ||
    ! grep -q 'maxpipes 256' "$TMP/haproxy-splice/haproxy.cfg"; then
    die "could not write the HAProxy splice configuration"
fi

# ---------------------------------------------------------------------------
# Start-up and readiness

listening() { # PORT: true once something listens on 127.0.0.1:PORT (no connection made)
    local hex
    hex=$(printf '%04X' "$1")
    awk -v want="0100007F:$hex" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

show_log() { # LOG: its last lines on stderr
    if [[ -s $1 ]]; then
        echo "--- last lines of $1:" >&2
        tail -n 20 "$1" >&2
    else
        echo "--- (it printed nothing)" >&2
    fi
}

# NAME PID LOG PORT...: poll until every PORT listens; fail if PID dies or 15 s pass.
wait_ready() {
    local name=$1 pid=$2 logf=$3 deadline=$((SECONDS + 15)) p
    shift 3
    for p in "$@"; do
        until listening "$p"; do
            if ! alive "$pid"; then
                show_log "$logf"
                die "$name exited during start-up"
            fi
            if ((SECONDS >= deadline)); then
                show_log "$logf"
                die "$name is not listening on 127.0.0.1:$p after 15 s"
            fi
            sleep 0.05
        done
    done
}

# MASTER_PID: print the PID of its (single) nginx worker once it exists.
nginx_worker() {
    local deadline=$((SECONDS + 15)) w
    while ((SECONDS < deadline)); do
        w=$(pgrep -P "$1" | head -n1 || true)
        if [[ -n $w ]]; then
            echo "$w"
            return 0
        fi
        sleep 0.05
    done
    return 1
}

rss_kib() { # PID...: summed VmRSS in KiB
    local p sum=0 v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status")
        sum=$((sum + v))
    done
    echo "$sum"
}

# PID...: VmRSS once it reads the same 3 times in a row 100 ms apart (at most 3 s).
settled_rss_kib() {
    local last cur same=1 deadline=$((SECONDS + 3))
    last=$(rss_kib "$@")
    while ((same < 3 && SECONDS < deadline)); do
        sleep 0.1
        cur=$(rss_kib "$@")
        if [[ $cur == "$last" ]]; then same=$((same + 1)); else same=1; fi
        last=$cur
    done
    echo "$last"
}

cpu_ticks() { # PID...: summed utime+stime (fields 14, 15 of /proc/PID/stat)
    local p stat f sum=0
    for p in "$@"; do
        stat=$(<"/proc/$p/stat")
        read -r -a f <<<"${stat##*) }" # f[0] is field 3
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

declare -A PROXY_PIDS LOGS

log "temp dir $TMP; backends on 127.0.0.1:${BACKEND_PORTS[*]}"
LOGS[backend]=$TMP/backend/stdout.log
taskset -c "$CLIENT_CPU" nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" \
    >"${LOGS[backend]}" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_ready "backend nginx" "$BACKEND_PID" "${LOGS[backend]}" "${BACKEND_PORTS[@]}"
if ! w=$(nginx_worker "$BACKEND_PID"); then die "backend nginx started no worker"; fi
PIDS+=("$w")

log "starting HAProxy on :${PORT[haproxy]} (with splice on :${PORT[haproxy-splice]}), nginx stream on :${PORT[nginx]}, tcplb on :${PORT[tcplb]} (CPU $PROXY_CPU)"
for h in haproxy haproxy-splice; do
    LOGS[$h]=$TMP/$h/haproxy.log
    taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/$h/haproxy.cfg" >"${LOGS[$h]}" 2>&1 &
    PIDS+=("$!")
    PROXY_PIDS[$h]=$!
done

LOGS[nginx]=$TMP/stream/stdout.log
taskset -c "$PROXY_CPU" nginx -p "$TMP/stream" -c "$TMP/stream/nginx.conf" -e "$TMP/stream/error.log" \
    >"${LOGS[nginx]}" 2>&1 &
PIDS+=("$!")
PROXY_PIDS[nginx]=$!

LOGS[tcplb]=$TMP/tcplb.log
env RUST_LOG=warn taskset -c "$PROXY_CPU" "$TCPLB" --listen "127.0.0.1:${PORT[tcplb]}" \
    ${TCPLB_EXTRA[@]+"${TCPLB_EXTRA[@]}"} "${tcplb_backends[@]}" \
    >"${LOGS[tcplb]}" 2>&1 &
PIDS+=("$!")
PROXY_PIDS[tcplb]=$!

if [[ -n ${TCPLB_BASE_BIN:-} ]]; then
    log "starting tcplb base ($TCPLB_BASE_BIN) on :${PORT[tcplb-base]}"
    LOGS[tcplb-base]=$TMP/tcplb-base.log
    env RUST_LOG=warn taskset -c "$PROXY_CPU" "$TCPLB_BASE_BIN" --listen "127.0.0.1:${PORT[tcplb-base]}" \
        ${TCPLB_EXTRA[@]+"${TCPLB_EXTRA[@]}"} "${tcplb_backends[@]}" \
        >"${LOGS[tcplb-base]}" 2>&1 &
    PIDS+=("$!")
    PROXY_PIDS[tcplb-base]=$!
fi

if [[ -n ${TCPLB_CONFIG:-} ]]; then
    # The same binary and the same one service and pool, from a config file instead of
    # flags: what a config file costs per session (issue 18: within 1.02x).
    log "starting tcplb with a config file on :${PORT[tcplb-config]}"
    LOGS[tcplb-config]=$TMP/tcplb-config.log
    {
        printf '[services.bench]\nlisten = ["127.0.0.1:%s"]\npool = "bench"\n\n' "${PORT[tcplb-config]}"
        printf '[pools.bench]\nbackends = ['
        printf '"%s", ' "${tcplb_backends[@]}"
        printf ']\n'
    } >"$TMP/tcplb-config.toml"
    env RUST_LOG=warn taskset -c "$PROXY_CPU" "$TCPLB" --config "$TMP/tcplb-config.toml" \
        ${TCPLB_EXTRA[@]+"${TCPLB_EXTRA[@]}"} >"${LOGS[tcplb-config]}" 2>&1 &
    PIDS+=("$!")
    PROXY_PIDS[tcplb-config]=$!
fi

for t in "${PROXIES[@]}"; do
    wait_ready "$t" "${PROXY_PIDS[$t]}" "${LOGS[$t]}" "${PORT[$t]}"
done
if ! w=$(nginx_worker "${PROXY_PIDS[nginx]}"); then die "nginx stream started no worker"; fi
PIDS+=("$w")
NGINX_WORKER=$w
PROXY_PIDS[nginx]+=" $w"

# startup: RSS of each proxy before any traffic.
for t in "${PROXIES[@]}"; do
    read -r -a pids <<<"${PROXY_PIDS[$t]}"
    rss=$(settled_rss_kib "${pids[@]}")
    extra=""
    if [[ $t == nginx ]]; then extra=", \"rss_kib_worker\": $(rss_kib "$NGINX_WORKER")"; fi
    printf '{"scenario": "startup", "target": "%s", "round": 0, "rss_kib": %s%s}\n' \
        "$t" "$rss" "$extra" >>"$RAW"
    log "startup $t: RSS $((rss / 1024)) MiB (pid ${PROXY_PIDS[$t]})"
done

# Check that every target answers GET / and /big correctly before benchmarking.
for t in "${TARGETS[@]}"; do
    for path in / /big; do
        out=$TMP/check.out
        if ! taskset -c "$CLIENT_CPU" ab -n 4 -c 1 "http://127.0.0.1:${PORT[$t]}$path" >"$out" 2>&1 ||
            ! grep -Eq '^Complete requests: +4$' "$out" || ! grep -Eq '^Failed requests: +0$' "$out" ||
            grep -q '^Non-2xx responses' "$out"; then
            cat "$out" >&2
            [[ $t != direct ]] && show_log "${LOGS[$t]}"
            die "$t does not answer GET $path on 127.0.0.1:${PORT[$t]} correctly (see above)"
        fi
    done
done
log "all targets answer; $ROUNDS round(s)"

# ---------------------------------------------------------------------------
# Runs

check_alive() {
    local t p
    for t in "${PROXIES[@]}"; do
        for p in ${PROXY_PIDS[$t]}; do
            alive "$p" || {
                show_log "${LOGS[$t]}"
                die "$t (pid $p) died"
            }
        done
    done
    alive "$BACKEND_PID" || die "the backend nginx died"
}

# SCENARIO TARGET ROUND
run_ab() {
    local scenario=$1 t=$2 round=$3 n c path opts=(-q) before=0 after=0 rc=0 pids=() out
    case $scenario in
    conn) n=$CONN_N c=$CONCURRENCY path=/ ;;
    keepalive) n=$KEEPALIVE_N c=$CONCURRENCY path=/ opts+=(-k) ;;
    bulk) n=$BULK_N c=$BULK_C path=/big opts+=(-k) ;;
    esac
    check_alive
    [[ $t != direct ]] && read -r -a pids <<<"${PROXY_PIDS[$t]}"
    out=$TMP/ab-$scenario-$t-$round.out
    ((${#pids[@]})) && before=$(cpu_ticks "${pids[@]}")
    run_client taskset -c "$CLIENT_CPU" ab "${opts[@]}" -n "$n" -c "$c" "http://127.0.0.1:${PORT[$t]}$path" \
        >"$out" 2>&1 || rc=$?
    check_alive
    ((${#pids[@]})) && after=$(cpu_ticks "${pids[@]}")
    local cpu_args=()
    ((${#pids[@]})) && cpu_args=(--cpu-ticks "$((after - before))" --clk-tck "$CLK_TCK")
    python3 "$HELPERS/report.py" ab --abfile "$out" --scenario "$scenario" --target "$t" \
        --round "$round" --requested "$n" --ab-rc "$rc" "${cpu_args[@]}" >>"$RAW"
    python3 "$HELPERS/report.py" progress --raw "$RAW" --rounds "$ROUNDS" >&2
    if ((rc != 0)); then
        log "!!! ab exited with status $rc for $scenario via $t; its output:"
        tail -n 30 "$out" >&2
    fi
}

# TARGET ROUND
run_idle() {
    local t=$1 round=$2 rc=0 pids
    check_alive
    pids=${PROXY_PIDS[$t]// /,}
    run_client taskset -c "$CLIENT_CPU" python3 "$HELPERS/idle.py" --port "${PORT[$t]}" --conns "$IDLE_N" \
        --pids "$pids" --label scenario=idle --label "target=$t" --label "round=$round" \
        >>"$RAW" || rc=$?
    python3 "$HELPERS/report.py" progress --raw "$RAW" --rounds "$ROUNDS" >&2
    ((rc == 0)) || log "!!! idle client exited with status $rc via $t"
}

START=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    for scenario in conn keepalive bulk; do
        for t in "${TARGETS[@]}"; do
            run_ab "$scenario" "$t" "$round"
        done
    done
    for t in "${PROXIES[@]}"; do
        run_idle "$t" "$round"
    done
done
check_alive
ELAPSED=$((SECONDS - START))

# ---------------------------------------------------------------------------
# Which proxies spliced: the kernel pipes each holds now (/proc/PID/fd; pipes are kept for
# reuse once made) and, where strace is installed, the splice calls each makes during one
# more bulk request (after the measured runs: strace slows a process down).

pipe_fds() { # PID...: how many of their descriptors are pipes
    local p n=0 f
    for p in "$@"; do
        for f in /proc/"$p"/fd/*; do
            [[ $(readlink "$f" 2>/dev/null) == pipe:* ]] && n=$((n + 1))
        done
    done
    echo "$n"
}

traced() { # PID...: true once every one of them has a tracer
    local p
    for p in "$@"; do
        awk '/^TracerPid:/ { exit ($2 == 0) }' "/proc/$p/status" || return 1
    done
}

SPLICE_CHECK_N=2
for t in "${PROXIES[@]}"; do
    read -r -a pids <<<"${PROXY_PIDS[$t]}"
    pipes=$(pipe_fds "${pids[@]}")
    calls=null
    if command -v strace >/dev/null; then
        out=$TMP/strace-$t.out
        strace_args=()
        for p in "${pids[@]}"; do strace_args+=(-p "$p"); done
        strace -f -c -e trace=splice -o "$out" "${strace_args[@]}" 2>/dev/null &
        tracer=$!
        for ((i = 0; i < 100; i++)); do
            traced "${pids[@]}" && break
            sleep 0.05
        done
        taskset -c "$CLIENT_CPU" ab -q -k -n "$SPLICE_CHECK_N" -c 1 "http://127.0.0.1:${PORT[$t]}/big" \
            >"$TMP/ab-splice-check-$t.out" 2>&1 || true
        kill -INT "$tracer" 2>/dev/null
        wait "$tracer" 2>/dev/null || true
        calls=$(awk '$NF == "splice" { print $4; found = 1 } END { if (!found) print 0 }' "$out" 2>/dev/null || echo null)
    fi
    printf '{"scenario": "splice_check", "target": "%s", "round": 0, "pipe_fds": %s, "splice_calls": %s, "requests": %s}\n' \
        "$t" "$pipes" "$calls" "$SPLICE_CHECK_N" >>"$RAW"
    log "splice check $t: $pipes pipe fds; splice calls for $SPLICE_CHECK_N x 64 MiB: $calls"
done

# ---------------------------------------------------------------------------
# Report

mkdir -p "$ROOT/bench-results"
stamp=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/bench-results/bench-$stamp
((QUICK)) && OUT+=-quick
os=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
[[ -r /etc/debian_version ]] && os+=" ($(cat /etc/debian_version))"
status=0
python3 "$HELPERS/report.py" table --raw "$RAW" --out "$OUT" \
    --meta "date=$(date '+%Y-%m-%d %H:%M %Z')" \
    --meta "cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --meta "cores=$CPUS" \
    --meta "mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" \
    --meta "kernel=$(uname -r)" \
    --meta "os=$os" \
    --meta "haproxy=$(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }')" \
    --meta "tcplb_base=${TCPLB_BASE_BIN:+$("$TCPLB_BASE_BIN" --version) (TCPLB_BASE_BIN=$TCPLB_BASE_BIN)}" \
    --meta "nginx=$(nginx -v 2>&1 | sed 's|.*nginx/|nginx |')" \
    --meta "tcplb=$("$TCPLB" --version) ($TCPLB_ORIGIN)" \
    --meta "ab=$(ab -V | head -n1 | awk '{ print "ApacheBench " $5 }')" \
    --meta "command=$COMMAND" \
    --meta "rounds=$ROUNDS" \
    --meta "quick=$QUICK" \
    --meta "wall=$((SECONDS / 60)) min $((SECONDS % 60)) s in total, $((ELAPSED / 60)) min $((ELAPSED % 60)) s of runs" \
    --meta "conn_cmd=ab -n $CONN_N -c $CONCURRENCY http://127.0.0.1:PORT/" \
    --meta "keepalive_cmd=ab -k -n $KEEPALIVE_N -c $CONCURRENCY http://127.0.0.1:PORT/" \
    --meta "bulk_cmd=ab -k -n $BULK_N -c $BULK_C http://127.0.0.1:PORT/big" \
    --meta "idle_conns=$IDLE_N" \
    --meta "clk_tck=$CLK_TCK" \
    --meta "proxy_cpu=$PROXY_CPU" \
    --meta "client_cpu=$CLIENT_CPU" || status=$?
case $status in
0) log "saved $OUT.md, $OUT.json (medians + raw), $OUT.csv (raw per round)" ;;
3)
    log "saved $OUT.md, $OUT.json (medians + raw), $OUT.csv (raw per round)"
    log "!!! some requests or connections FAILED: the figures above are not trustworthy"
    exit 1
    ;;
*)
    cp "$RAW" "$OUT.raw.jsonl"
    die "report.py failed (status $status); raw records saved in $OUT.raw.jsonl"
    ;;
esac
