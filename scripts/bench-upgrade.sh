#!/usr/bin/env bash
# Failed requests while a proxy is upgraded or reloaded every second: tcplb, nginx stream
# and HAProxy side by side. Run `scripts/bench-upgrade.sh --help` for what it does and needs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

COMMAND="$0"
for arg in "$@"; do COMMAND+=" $(printf '%q' "$arg")"; done
if [[ -n ${TCPLB_BIN:-} ]]; then COMMAND="TCPLB_BIN=$(printf '%q' "$TCPLB_BIN") $COMMAND"; fi

usage() {
    cat <<EOF
Usage: $(basename "$0") [--requests N] [--concurrency C] [--interval S] [--base-port P] [--install]

Runs ab -n N -c C (a new connection per request) through each proxy in turn while the
proxy is upgraded or reloaded every S seconds, and prints the failed requests side by
side as a Markdown table:

  tcplb            kill -USR2 (upgrade: a new tcplb takes over the listening sockets,
                   the old one drains)
  nginx stream     nginx -s reload (new workers, old ones finish what they have)
  HAProxy -sf      haproxy -f CFG -p PIDFILE -sf \$(cat PIDFILE) -D: a new process
                   binds, the old one stops listening and finishes (Debian's
                   /etc/init.d/haproxy reload)
  HAProxy -Ws      master-worker mode, kill -USR2 to the master (Debian's systemd unit:
                   ExecReload=kill -USR2 \$MAINPID)

All four forward to the same 4 nginx HTTP backends on loopback (100-byte answers). ab
gets -r, so that a reset connection is counted instead of ending the run; a refused one
still ends it after 10 (reported as aborted).

Options:
  --requests N     requests per proxy (default 100000)
  --concurrency C  ab's concurrency (default 50)
  --interval S     seconds between upgrades/reloads (default 1)
  --base-port P    ports used: P+1..P+4 backends, P+10..P+13 proxies (default 28300)
  --install        apt-get install whatever is missing (needs root)
  -h, --help       show this help

Environment:
  TCPLB_BIN        tcplb binary to use; if unset, 'cargo build --release' in the repo

Needs (Debian 12): apache2-utils (ab), nginx-light, libnginx-mod-stream, haproxy,
python3. Benchmarks share the machine: run it under flock /tmp/tcplb-bench.lock.
EOF
}

log() { printf '[bench-upgrade %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    printf 'bench-upgrade.sh: error: %s\n' "$*" >&2
    exit 1
}

REQUESTS=100000
CONCURRENCY=50
INTERVAL=1
BASE_PORT=28300
INSTALL=0
while (($#)); do
    case $1 in
    --requests | --concurrency)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer"
        if [[ $1 == --requests ]]; then REQUESTS=$2; else CONCURRENCY=$2; fi
        shift
        ;;
    --interval)
        [[ ${2:-} =~ ^[0-9]+(\.[0-9]+)?$ && ${2} != 0 ]] || die "--interval needs a number of seconds above 0"
        INTERVAL=$2
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

BACKEND_PORTS=("$((BASE_PORT + 1))" "$((BASE_PORT + 2))" "$((BASE_PORT + 3))" "$((BASE_PORT + 4))")
TARGETS=(tcplb nginx haproxy-sf haproxy-ws)
declare -A PORT=(
    [tcplb]=$((BASE_PORT + 10))
    [nginx]=$((BASE_PORT + 11))
    [haproxy-sf]=$((BASE_PORT + 12))
    [haproxy-ws]=$((BASE_PORT + 13))
)
# shellcheck disable=SC2016 # Markdown code, not expansions
declare -A HOW=(
    [tcplb]='`kill -USR2` (upgrade)'
    [nginx]='`nginx -s reload`'
    [haproxy-sf]='`haproxy -D -sf $(cat pidfile)` (Debian init script)'
    [haproxy-ws]='`-Ws`, `kill -USR2` to the master (Debian systemd unit)'
)
declare -A NAME=([tcplb]=tcplb [nginx]="nginx stream" [haproxy-sf]="HAProxy -sf" [haproxy-ws]="HAProxy -Ws")

# ---------------------------------------------------------------------------
# Dependencies (as in bench.sh)

find_stream_module() {
    local f
    if nginx -V 2>&1 | grep -E -- '--with-stream( |$)' >/dev/null; then return 0; fi
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        if [[ -f $f ]]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}

missing_packages() {
    local missing=()
    command -v ab >/dev/null || missing+=(apache2-utils)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx-light)
    if ! command -v nginx >/dev/null || ! find_stream_module >/dev/null; then
        missing+=(libnginx-mod-stream)
    fi
    command -v python3 >/dev/null || missing+=(python3)
    echo "${missing[*]}"
}

needed=$(missing_packages)
if [[ -n $needed ]]; then
    if ((INSTALL)); then
        ((EUID == 0)) || die "--install needs root; run as root or: sudo apt-get install -y $needed"
        log "installing: $needed"
        # shellcheck disable=SC2086 # one package a word
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $needed; } >&2 ||
            die "apt-get install -y $needed failed"
        needed=$(missing_packages)
        [[ -z $needed ]] || die "still missing after apt-get install: $needed"
    else
        printf 'bench-upgrade.sh: missing packages: %s\nInstall them with apt-get install -y %s, or rerun with --install (as root).\n' \
            "$needed" "$needed" >&2
        exit 2
    fi
fi
STREAM_MODULE=$(find_stream_module) || die "cannot find nginx's ngx_stream_module.so (package libnginx-mod-stream)"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ -n ${TCPLB_BIN:-} ]]; then
    [[ -x $TCPLB_BIN ]] || die "TCPLB_BIN=$TCPLB_BIN is not an executable file"
    TCPLB_SOURCE=$TCPLB_BIN
    TCPLB_ORIGIN="TCPLB_BIN=$TCPLB_BIN"
else
    log "building tcplb: cargo build --release"
    (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    TCPLB_SOURCE=$ROOT/target/release/tcplb
    TCPLB_ORIGIN="release build of git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
fi

# ---------------------------------------------------------------------------
# Processes, temp dir, clean-up

port_busy() {
    ! python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
for p in "${BACKEND_PORTS[@]}" "${PORT[@]}"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is busy (pick other ports with --base-port)"
done

TMP=$(mktemp -d -t tcplb-bench-upgrade.XXXXXX)
chmod 755 "$TMP"

# Every process whose command line names a path in the temp dir (the backends, each proxy,
# every generation an upgrade or reload left behind): TERM, then KILL.
stop_ours() { # PATTERN
    local pattern=$1 i p
    for p in $(pgrep -f -- "$pattern" || true); do kill -TERM "$p" 2>/dev/null || true; done
    for ((i = 0; i < 100; i++)); do
        [[ -z $(pgrep -f -- "$pattern" || true) ]] && return 0
        sleep 0.1
    done
    for p in $(pgrep -f -- "$pattern" || true); do kill -KILL "$p" 2>/dev/null || true; done
}

# shellcheck disable=SC2317 # run by the traps
cleanup() {
    local rc=$?
    trap - EXIT HUP INT TERM
    set +e
    stop_ours "$TMP/"
    wait 2>/dev/null
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { # PORT: true once something listens on 127.0.0.1:PORT
    local hex
    hex=$(printf '%04X' "$1")
    awk -v want="0100007F:$hex" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

wait_listening() { # NAME LOG PORT
    local deadline=$((SECONDS + 15))
    until listening "$3"; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$2" >&2 || true
            die "$1 is not listening on 127.0.0.1:$3 after 15 s"
        fi
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------
# Configurations

mkdir -p "$TMP/backend" "$TMP/stream" "$TMP/haproxy-sf" "$TMP/haproxy-ws" "$TMP/tcplb"
body=$(printf 'x%.0s' {1..99})
servers=""
upstreams=""
haproxy_servers=""
tcplb_backends=()
for i in "${!BACKEND_PORTS[@]}"; do
    p=${BACKEND_PORTS[i]}
    servers+="
    server { listen 127.0.0.1:$p backlog=4096; location = / { default_type text/plain; return 200 \"$body\n\"; } }"
    upstreams+="        server 127.0.0.1:$p;"$'\n'
    haproxy_servers+="    server b$((i + 1)) 127.0.0.1:$p"$'\n'
    tcplb_backends+=("127.0.0.1:$p")
done
cat >"$TMP/backend/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $TMP/backend/body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
$servers
}
EOF
{
    [[ -n $STREAM_MODULE ]] && echo "load_module $STREAM_MODULE;"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/stream/nginx.pid;
error_log $TMP/stream/error.log warn;
events { worker_connections 16384; }
stream {
    upstream backends {
        least_conn;
$upstreams    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=1024;
        proxy_pass backends;
        proxy_connect_timeout 3s;
    }
}
EOF
} >"$TMP/stream/nginx.conf"
for mode in sf ws; do
    cat >"$TMP/haproxy-$mode/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9500

defaults
    mode tcp
    balance leastconn
    timeout connect 3s
    timeout client 60s
    timeout server 60s

frontend fe
    bind 127.0.0.1:${PORT[haproxy-$mode]}
    default_backend be

backend be
$haproxy_servers
EOF
done
# tcplb runs from a copy in the temp dir: the path an upgrade runs again.
cp "$TCPLB_SOURCE" "$TMP/tcplb/tcplb"

nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" >"$TMP/backend/out.log" 2>&1 &
for p in "${BACKEND_PORTS[@]}"; do wait_listening "backend nginx" "$TMP/backend/error.log" "$p"; done

# ---------------------------------------------------------------------------
# One run: start the proxy, ab through it while reloading it every INTERVAL seconds.

start_proxy() { # TARGET
    case $1 in
    tcplb)
        RUST_LOG=info "$TMP/tcplb/tcplb" --listen "127.0.0.1:${PORT[tcplb]}" --workers 1 \
            --pid-file "$TMP/tcplb/tcplb.pid" --drain-timeout 10s "${tcplb_backends[@]}" \
            >"$TMP/tcplb/out.log" 2>&1 &
        ;;
    nginx)
        nginx -p "$TMP/stream" -c "$TMP/stream/nginx.conf" -e "$TMP/stream/error.log" \
            >"$TMP/stream/out.log" 2>&1 &
        ;;
    haproxy-sf) # as /etc/init.d/haproxy start does (start-stop-daemon ... -- -f CONFIG -D -p PIDFILE)
        haproxy -f "$TMP/haproxy-sf/haproxy.cfg" -D -p "$TMP/haproxy-sf/haproxy.pid" \
            >"$TMP/haproxy-sf/out.log" 2>&1
        ;;
    haproxy-ws) # as Debian's haproxy.service runs it
        haproxy -Ws -f "$TMP/haproxy-ws/haproxy.cfg" -p "$TMP/haproxy-ws/haproxy.pid" \
            >"$TMP/haproxy-ws/out.log" 2>&1 &
        echo $! >"$TMP/haproxy-ws/master.pid"
        ;;
    esac
}

reload_proxy() { # TARGET: exit status 0 if the reload was started
    case $1 in
    tcplb) kill -USR2 "$(cat "$TMP/tcplb/tcplb.pid")" ;;
    nginx) nginx -p "$TMP/stream" -c "$TMP/stream/nginx.conf" -e "$TMP/stream/error.log" -s reload 2>/dev/null ;;
    haproxy-sf) # /etc/init.d/haproxy reload
        # shellcheck disable=SC2046 # the pid file may list several
        haproxy -f "$TMP/haproxy-sf/haproxy.cfg" -p "$TMP/haproxy-sf/haproxy.pid" \
            -sf $(cat "$TMP/haproxy-sf/haproxy.pid") -D >>"$TMP/haproxy-sf/out.log" 2>&1
        ;;
    haproxy-ws) kill -USR2 "$(cat "$TMP/haproxy-ws/master.pid")" ;;
    esac
}

log_of() { # TARGET
    case $1 in
    tcplb) echo "$TMP/tcplb/out.log" ;;
    nginx) echo "$TMP/stream/error.log" ;;
    *) echo "$TMP/$1/out.log" ;;
    esac
}

declare -A COMPLETE FAILED DETAIL NON2XX RELOADS ABORTED NOTE
run() { # TARGET
    local t=$1 out=$TMP/$1.ab rc=0 ab_pid reloads=0 failed_reloads=0
    log "$t: starting"
    start_proxy "$t"
    wait_listening "$t" "$(log_of "$t")" "${PORT[$t]}"
    log "$t: ab -r -n $REQUESTS -c $CONCURRENCY, ${HOW[$t]} every ${INTERVAL}s"
    ab -r -n "$REQUESTS" -c "$CONCURRENCY" "http://127.0.0.1:${PORT[$t]}/" >"$out" 2>&1 &
    ab_pid=$!
    while sleep "$INTERVAL" && kill -0 "$ab_pid" 2>/dev/null; do
        if reload_proxy "$t"; then reloads=$((reloads + 1)); else failed_reloads=$((failed_reloads + 1)); fi
    done
    wait "$ab_pid" || rc=$?
    COMPLETE[$t]=$(awk '/^Complete requests:/ { print $3 }' "$out")
    FAILED[$t]=$(awk '/^Failed requests:/ { print $3 }' "$out")
    DETAIL[$t]=$(sed -n 's/^ *(Connect: \([0-9]*\), Receive: \([0-9]*\), Length: \([0-9]*\), Exceptions: \([0-9]*\))/connect \1, receive \2, length \3, exceptions \4/p' "$out")
    NON2XX[$t]=$(awk '/^Non-2xx responses:/ { print $3 }' "$out")
    RELOADS[$t]=$reloads
    ABORTED[$t]=""
    if ((rc != 0)) || [[ -z ${COMPLETE[$t]} ]]; then
        # ab gives up after 10 connections fail while connecting; its progress lines say
        # how far it had come.
        local so_far
        so_far=$(sed -n 's/^Completed \([0-9]*\) requests/\1/p' "$out" | tail -n 1)
        ABORTED[$t]="ab gave up after ${so_far:-0}+ requests: $(grep -E 'Test aborted|apr_' "$out" | tail -n 2 | tr '\n' ' ' | sed 's/ *$//')"
        COMPLETE[$t]=${COMPLETE[$t]:-"${so_far:-0}+ (gave up)"}
        FAILED[$t]=${FAILED[$t]:-"10+ connects"}
    fi
    NOTE[$t]=""
    ((failed_reloads == 0)) || NOTE[$t]="$failed_reloads reload commands failed"
    if [[ $t == tcplb ]]; then
        local handed failed_upgrades
        handed=$(grep -c 'handing over' "$TMP/tcplb/out.log" || true)
        failed_upgrades=$(grep -c 'upgrade failed' "$TMP/tcplb/out.log" || true)
        NOTE[$t]="upgrades handed over: $handed, failed: $failed_upgrades"
    fi
    log "$t: ${COMPLETE[$t]} complete, ${FAILED[$t]} failed (${DETAIL[$t]:-}), ${NON2XX[$t]:-0} non-2xx, $reloads reloads ${ABORTED[$t]}"
    stop_ours "$TMP/${t/nginx/stream}/"
    stop_ours "$TMP/$t/"
}

START=$SECONDS
for t in "${TARGETS[@]}"; do run "$t"; done

# ---------------------------------------------------------------------------
# Report

cat <<EOF
## Failed requests while upgrading or reloading every ${INTERVAL}s

\`ab -r -n $REQUESTS -c $CONCURRENCY http://127.0.0.1:PORT/\` (a new connection per request) through each
proxy to 4 nginx backends on loopback, one proxy at a time. "Failed requests" is ab's count,
which counts a request reset mid-way three times (receive, length and exception).

| proxy | upgrade / reload | reloads | complete requests | failed requests | of which connect, receive, length, exceptions | non-2xx |
|---|---|---:|---:|---:|---|---:|
EOF
status=0
for t in "${TARGETS[@]}"; do
    detail=${DETAIL[$t]:-${ABORTED[$t]}}
    printf '| %s | %s | %s | %s | **%s** | %s | %s |\n' "${NAME[$t]}" "${HOW[$t]}" "${RELOADS[$t]}" \
        "${COMPLETE[$t]}" "${FAILED[$t]}" "${detail:--}" "${NON2XX[$t]:-0}"
done
echo
for t in "${TARGETS[@]}"; do
    [[ -n ${ABORTED[$t]} ]] && echo "- ${NAME[$t]}: ${ABORTED[$t]}"
    [[ -n ${NOTE[$t]} ]] && echo "- ${NAME[$t]}: ${NOTE[$t]}"
done
if [[ ${FAILED[tcplb]} != 0 || -n ${ABORTED[tcplb]} ]]; then status=1; fi
cat <<EOF

$(date '+%Y-%m-%d %H:%M %Z'); $(nproc) CPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r);
$(uptime | sed 's/.*load average/load average/') at the end; $("$TMP/tcplb/tcplb" --version) ($TCPLB_ORIGIN),
$(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'), $(ab -V | head -n1 | awk '{ print "ApacheBench " $5 }');
$((SECONDS - START)) s. Command: \`$COMMAND\`
EOF
((status == 0)) || log "!!! tcplb lost requests while upgrading"
exit "$status"
