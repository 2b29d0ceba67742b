#!/usr/bin/env bash
# Does a large fleet cost more per connection than a small one? Runs tcplb with 4 and with
# 1024 backends under each --balance algorithm and compares the proxy CPU per connection.
# Run `scripts/bench-selection.sh --help` for what it does and needs.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

usage() {
    cat <<EOF
Usage: $(basename "$0") [--rounds N] [--requests N] [--port P] [--install]

For each --balance algorithm (least-active, round-robin, random-two, source-hash) and
fleet size (4 and 1024 backends), starts tcplb (--workers 1, alone on CPU 1) in front of
one nginx HTTP server that listens on 1024 loopback addresses (127.2.x.y:P, so each
backend is its own address), runs ab -n REQUESTS -c 50 (a new connection per request,
on CPU 0), and reads tcplb's CPU time (utime + stime) from /proc. Runs are interleaved
round by round; medians over the rounds. Prints one line per algorithm with the CPU per
connection at 4 and 1024 backends and their ratio, and exits 1 if a ratio is over 1.10.

Options:
  --rounds N     rounds (default 3)
  --requests N   connections per run (default 20000)
  --port P       the backends' port and P+1 for tcplb (default 28300)
  --install      apt-get install what is missing (ab, nginx; needs root)
  -h, --help     this help

Environment: TCPLB_BIN, a tcplb binary to use (default: cargo build --release).
Needs: apache2-utils (ab), nginx-light, util-linux (taskset), 2 CPUs. Run benchmarks one
at a time on a shared machine: flock /tmp/tcplb-bench.lock $(basename "$0").
EOF
}

die() {
    echo "bench-selection: $*" >&2
    exit 1
}
log() { printf '[bench-selection %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ROUNDS=3 REQUESTS=20000 PORT=28300 INSTALL=0
while (($#)); do
    case $1 in
    --rounds) ROUNDS=${2:?}; shift ;;
    --requests) REQUESTS=${2:?}; shift ;;
    --port) PORT=${2:?}; shift ;;
    --install) INSTALL=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive number"
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "--requests needs a positive number"
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT >= 1024 && PORT < 65000)) || die "--port needs 1024..64999"

missing=()
command -v ab >/dev/null || missing+=(apache2-utils)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    ((INSTALL)) || die "missing: ${missing[*]} (apt-get install them, or rerun with --install)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
(($(nproc) >= 2)) || die "needs at least 2 CPUs"

if [[ -z ${TCPLB_BIN:-} ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
    TCPLB_BIN=$ROOT/target/release/tcplb
fi

TMP=$(mktemp -d -t tcplb-bench-selection.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
taskset -cp 0 $$ >/dev/null

# 1024 backend addresses 127.2.x.y:PORT, all served by one nginx on CPU 0.
ADDRS=()
for ((i = 0; i < 1024; i++)); do ADDRS+=("127.2.$((i / 250)).$((i % 250 + 1)):$PORT"); done
{
    echo "worker_processes 1; daemon off; pid $TMP/nginx.pid; error_log $TMP/error.log;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;"
    echo "  fastcgi_temp_path $TMP/fcgi; uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;"
    echo "  server {"
    for a in "${ADDRS[@]}"; do echo "    listen $a;"; done
    echo "    location / { return 200 'ok'; }"
    echo "  }"
    echo "}"
} >"$TMP/nginx.conf"
taskset -c 0 nginx -e "$TMP/error.log" -p "$TMP/" -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
PIDS+=($!)
listening() { # HOST:PORT
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}
for _ in $(seq 100); do
    listening "${ADDRS[1023]}" && break
    sleep 0.1
done
listening "${ADDRS[1023]}" || die "nginx did not start: $(cat "$TMP/error.log")"

cpu_ticks() { # PID: utime + stime in clock ticks
    local stat f
    stat=$(<"/proc/$1/stat")
    read -r -a f <<<"${stat##*) }"
    echo $((f[11] + f[12]))
}
HZ=$(getconf CLK_TCK)

# One run: prints tcplb's CPU microseconds per connection.
run() { # BALANCE N
    local balance=$1 n=$2 pid before after failed
    taskset -c 1 "$TCPLB_BIN" -l "127.0.0.1:$((PORT + 1))" --workers 1 --balance "$balance" \
        "${ADDRS[@]:0:n}" 2>"$TMP/tcplb.log" &
    pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$TMP/tcplb.log" && break
        sleep 0.05
    done
    grep -q "listening on" "$TMP/tcplb.log" || die "tcplb did not start: $(cat "$TMP/tcplb.log")"
    ab -q -n 500 -c 10 "http://127.0.0.1:$((PORT + 1))/" >/dev/null 2>&1 || true # warm-up
    before=$(cpu_ticks "$pid")
    taskset -c 0 ab -q -n "$REQUESTS" -c 50 "http://127.0.0.1:$((PORT + 1))/" >"$TMP/ab.out" 2>&1 ||
        die "ab failed: $(tail -3 "$TMP/ab.out")"
    after=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    failed=$(awk '/^Failed requests/ { print $3 }' "$TMP/ab.out")
    [[ $failed == 0 ]] || die "$failed failed requests ($balance, $n backends)"
    awk -v t=$((after - before)) -v hz="$HZ" -v n="$REQUESTS" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'
}

median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

BALANCES=(least-active round-robin random-two source-hash)
declare -A RESULTS
log "uptime: $(uptime)"
for ((r = 1; r <= ROUNDS; r++)); do
    for b in "${BALANCES[@]}"; do
        for n in 4 1024; do
            us=$(run "$b" "$n")
            RESULTS[$b,$n]+="$us "
            log "round $r: $b, $n backends: $us µs of tcplb CPU per connection"
        done
    done
done

status=0
printf '| --balance | CPU µs/conn, 4 backends | 1024 backends | ratio |\n|---|---:|---:|---:|\n'
for b in "${BALANCES[@]}"; do
    small=$(median <<<"${RESULTS[$b,4]}")
    large=$(median <<<"${RESULTS[$b,1024]}")
    ratio=$(awk -v s="$small" -v l="$large" 'BEGIN { printf "%.2f", l / s }')
    printf '| %s | %s | %s | %s |\n' "$b" "$small" "$large" "$ratio"
    awk -v r="$ratio" 'BEGIN { exit !(r > 1.10) }' && status=1
done
exit "$status"
