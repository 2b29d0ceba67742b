#!/usr/bin/env bash
# The multi-core run of scripts/bench.sh (scripts/bench.sh --multicore): tcplb with 1 and 2
# workers, HAProxy with nbthread 2, nginx stream with worker_processes 2 without and with a
# shared `zone`, and tcplb and nginx (no zone) with 8 workers, side by side on the same CPUs
# (all of them), each forwarding to the same 4 nginx HTTP backends. Reports per proxy its CPU per request and its balance error: the
# backends' ESTABLISHED connection counts are sampled every 50 ms during each run
# (scripts/bench/balance.py) and the mean of max - min over the backends is reported.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

ROUNDS=3 QUICK=0 BASE_PORT=28300
while (($#)); do
    case $1 in
    --quick) QUICK=1 ROUNDS=1 ;;
    --rounds)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive integer" >&2; exit 2; }
        ROUNDS=$2
        shift
        ;;
    --base-port)
        [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "--base-port needs a number" >&2; exit 2; }
        BASE_PORT=$2
        shift
        ;;
    *) echo "bench --multicore: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then CONN_N=4000 KEEPALIVE_N=20000; else CONN_N=20000 KEEPALIVE_N=100000; fi
C=50

log() { printf '[multicore %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'bench --multicore: error: %s\n' "$*" >&2; exit 1; }
for cmd in ab haproxy nginx python3 taskset; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (scripts/bench.sh --install installs what it needs)"
done
CPUS=$(getconf _NPROCESSORS_ONLN)
ALL_CPUS="0-$((CPUS - 1))"
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 20000

if [[ -n ${TCPLB_BIN:-} ]]; then
    TCPLB=$TCPLB_BIN
else
    log "building tcplb: cargo build --release"
    (cd "$ROOT" && cargo build --release >&2)
    TCPLB=$ROOT/target/release/tcplb
fi

STREAM_MODULE=""
if ! nginx -V 2>&1 | grep -E -- '--with-stream( |$)' >/dev/null; then
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        [[ -f $f ]] && STREAM_MODULE=$f
    done
    [[ -n $STREAM_MODULE ]] || die "nginx has no stream module (libnginx-mod-stream)"
fi

TMP=$(mktemp -d -t tcplb-multicore.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

BACKENDS=($((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)) $((BASE_PORT + 4)))
declare -A PORT=([tcplb-1w]=$((BASE_PORT + 10)) [tcplb-2w]=$((BASE_PORT + 11))
    [haproxy-2t]=$((BASE_PORT + 12)) [nginx-2w]=$((BASE_PORT + 13)) [nginx-2w-zone]=$((BASE_PORT + 14))
    [tcplb-8w]=$((BASE_PORT + 15)) [nginx-8w]=$((BASE_PORT + 16)))
# The 8-worker pair shows what counting per worker does once each worker holds only a few
# of the connections (on 2 CPUs, so for balance, not for speed).
TARGETS=(tcplb-1w tcplb-2w haproxy-2t nginx-2w nginx-2w-zone tcplb-8w nginx-8w)
declare -A TPIDS

mkdir -p "$TMP/backend" "$TMP/www"
servers=""
for p in "${BACKENDS[@]}"; do
    servers+="server { listen 127.0.0.1:$p backlog=4096; location = / { default_type text/plain; return 200 \"$(printf 'x%.0s' {1..99})\n\"; } }"$'\n'
done
cat >"$TMP/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
$servers}
CONF
taskset -c "$ALL_CPUS" nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)

upstream="" hservers=""
for i in "${!BACKENDS[@]}"; do
    upstream+="server 127.0.0.1:${BACKENDS[i]}; "
    hservers+="    server b$i 127.0.0.1:${BACKENDS[i]}"$'\n'
done
for variant in nginx-2w nginx-2w-zone nginx-8w; do
    zone="" processes=2
    [[ $variant == nginx-2w-zone ]] && zone="zone backends 64k;"
    [[ $variant == nginx-8w ]] && processes=8
    mkdir -p "$TMP/$variant"
    {
        [[ -n $STREAM_MODULE ]] && echo "load_module $STREAM_MODULE;"
        cat <<CONF
worker_processes $processes;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/$variant/nginx.pid;
error_log $TMP/$variant/error.log warn;
events { worker_connections 16384; }
stream {
    upstream backends { least_conn; $zone $upstream }
    server { listen 127.0.0.1:${PORT[$variant]}; proxy_pass backends; }
}
CONF
    } >"$TMP/$variant/nginx.conf"
    taskset -c "$ALL_CPUS" nginx -p "$TMP/$variant" -c "$TMP/$variant/nginx.conf" >/dev/null 2>&1 &
    PIDS+=($!)
    TPIDS[$variant]=$!
done
mkdir -p "$TMP/haproxy"
cat >"$TMP/haproxy/haproxy.cfg" <<CONF
global
    nbthread 2
    maxconn 9500
defaults
    mode tcp
    balance leastconn
    timeout connect 3s
    timeout client 300s
    timeout server 300s
frontend fe
    bind 127.0.0.1:${PORT[haproxy-2t]}
    default_backend be
backend be
$hservers
CONF
taskset -c "$ALL_CPUS" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >/dev/null 2>&1 &
PIDS+=($!)
TPIDS[haproxy-2t]=$!
backends=()
for p in "${BACKENDS[@]}"; do backends+=("127.0.0.1:$p"); done
for w in 1 2 8; do
    RUST_LOG=warn taskset -c "$ALL_CPUS" "$TCPLB" --listen "127.0.0.1:${PORT[tcplb-${w}w]}" --workers "$w" \
        "${backends[@]}" >"$TMP/tcplb-$w.log" 2>&1 &
    PIDS+=($!)
    TPIDS[tcplb-${w}w]=$!
done
sleep 1
# nginx: the workers do the work; count the master and its workers.
for variant in nginx-2w nginx-2w-zone nginx-8w; do
    TPIDS[$variant]+=" $(pgrep -P "${TPIDS[$variant]}" | tr '\n' ' ')"
done

cpu_ticks() {
    local p stat f sum=0
    for p in "$@"; do
        stat=$(<"/proc/$p/stat")
        read -r -a f <<<"${stat##*) }"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

RAW=$TMP/raw.jsonl
: >"$RAW"
ports=$(IFS=,; echo "${BACKENDS[*]}")
for t in "${TARGETS[@]}"; do
    ab -q -n 10 -c 1 "http://127.0.0.1:${PORT[$t]}/" 2>&1 | grep -Eq '^Failed requests: +0$' ||
        die "$t does not answer on 127.0.0.1:${PORT[$t]}"
done
for ((round = 1; round <= ROUNDS; round++)); do
    for scenario in conn keepalive; do
        for t in "${TARGETS[@]}"; do
            opts=(-q -c "$C")
            if [[ $scenario == conn ]]; then opts+=(-n "$CONN_N"); else opts+=(-k -n "$KEEPALIVE_N"); fi
            read -r -a pids <<<"${TPIDS[$t]}"
            python3 "$SCRIPT_DIR/balance.py" --ports "$ports" >"$TMP/balance.json" &
            sampler=$!
            before=$(cpu_ticks "${pids[@]}")
            taskset -c "$ALL_CPUS" ab "${opts[@]}" "http://127.0.0.1:${PORT[$t]}/" >"$TMP/ab.out" 2>&1 || true
            after=$(cpu_ticks "${pids[@]}")
            kill -TERM "$sampler"
            wait "$sampler" || true
            python3 - "$TMP/ab.out" "$TMP/balance.json" "$scenario" "$t" "$round" \
                "$((after - before))" "$CLK_TCK" >>"$RAW" <<'PY'
import json, re, sys
ab, bal, scenario, target, rnd, ticks, hz = sys.argv[1:]
text = open(ab).read()
num = lambda p: float(re.search(p, text).group(1)) if re.search(p, text) else None
done = num(r"Complete requests:\s+(\d+)")
rec = {"scenario": scenario, "target": target, "round": int(rnd),
       "rps": num(r"Requests per second:\s+([\d.]+)"), "failed": num(r"Failed requests:\s+(\d+)"),
       "complete": done,
       "cpu_us_per_req": (int(ticks) / int(hz) * 1e6 / done) if done else None}
rec.update({"balance_" + k: v for k, v in json.load(open(bal)).items()})
print(json.dumps(rec))
PY
            tail -n1 "$RAW" >&2
        done
    done
done

python3 - "$RAW" "$CPUS" "$ROUNDS" "$CONN_N" "$KEEPALIVE_N" <<'PY'
import json, statistics, sys
raw, cpus, rounds, conn_n, ka_n = sys.argv[1:]
recs = [json.loads(l) for l in open(raw)]
med = lambda xs: statistics.median(xs) if xs else None
def agg(s, t, k):
    return med([r[k] for r in recs if r["scenario"] == s and r["target"] == t and r[k] is not None])
targets = ["tcplb-1w", "tcplb-2w", "haproxy-2t", "nginx-2w", "nginx-2w-zone", "tcplb-8w", "nginx-8w"]
print(f"Multi-core run: {cpus} CPUs shared by every proxy, the backends and ab; {rounds} round(s), medians.")
print(f"conn = ab -n {conn_n} -c 50 (a new connection per request); keepalive = ab -k -n {ka_n} -c 50.")
print("Balance error: the backends' ESTABLISHED connections sampled every 50 ms, mean of max - min.\n")
print("| proxy | conn req/s | conn CPU µs/req | conn balance error | keepalive req/s | keepalive CPU µs/req | keepalive balance error | failed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t in targets:
    row = [t]
    for s in ["conn", "keepalive"]:
        row += [f"{agg(s, t, 'rps'):,.0f}", f"{agg(s, t, 'cpu_us_per_req'):.1f}", f"{agg(s, t, 'balance_mean_spread'):.2f}"]
    failed = sum(r["failed"] or 0 for r in recs if r["target"] == t)
    row.append(f"{failed:.0f}")
    print("| " + " | ".join(row) + " |")
print()
for s in ["conn", "keepalive"]:
    one, two, hap = (agg(s, t, "cpu_us_per_req") for t in ["tcplb-1w", "tcplb-2w", "haproxy-2t"])
    print(f"- {s}: tcplb 2 workers / 1 worker CPU per request {two / one:.3f}; tcplb 2 workers / HAProxy nbthread 2 {two / hap:.3f}")
PY
