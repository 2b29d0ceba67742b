#!/usr/bin/env bash
# The TLS run of scripts/bench.sh (scripts/bench.sh --tls): new TLS connections, each a full
# handshake, through four proxies that pass TLS through without terminating it:
#   tcplb-sni     tcplb with routes (SNI: api.example.com -> pool api, *.example.com -> web)
#   tcplb-plain   tcplb without routes, one pool (its clients' bytes are never looked at)
#   haproxy-sni   HAProxy, tcp-request inspect-delay + req.ssl_sni, the same routes
#   nginx-sni     nginx stream, ssl_preread + map $ssl_preread_server_name, the same routes
# interleaved round by round (medians over the rounds), each proxy alone on CPU 1, the TLS
# backends (nginx, a certificate per name, a new connection per request) and the client
# (curl --parallel, no session reuse) on CPU 0. Before the rounds, each proxy is checked to
# route: api.example.com must reach the api backend (its certificate and its body), and
# www.example.com the web one (tcplb-plain: the api one, it does not route).
# Reports per proxy new connections per second and its CPU per connection: its threads' time
# on a CPU (/proc/PID/task/*/schedstat, in ns) over the connections of the run.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

ROUNDS=5 QUICK=0 BASE_PORT=28500
while (($#)); do
    case $1 in
    --quick) QUICK=1 ROUNDS=1 ;;
    --rounds)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a positive integer" >&2; exit 2; }
        ROUNDS=$2
        shift
        ;;
    --base-port)
        [[ ${2:-} =~ ^[0-9]+$ ]] && ((${2} >= 1024 && ${2} <= 65000)) ||
            { echo "--base-port needs a number from 1024 to 65000" >&2; exit 2; }
        BASE_PORT=$2
        shift
        ;;
    *) echo "bench --tls: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then CONNS=1000; else CONNS=4000; fi
PARALLEL=16
CLIENT_CPU=0 PROXY_CPU=1

log() { printf '[tls %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'bench --tls: error: %s\n' "$*" >&2; exit 1; }
for cmd in curl haproxy nginx openssl python3 taskset; do
    command -v "$cmd" >/dev/null ||
        die "$cmd is missing (Debian: apt-get install curl haproxy nginx-light libnginx-mod-stream openssl python3 util-linux)"
done
curl --help all 2>/dev/null | grep -q -- '--parallel' || die "curl is too old for --parallel (7.66 or later)"
(($(getconf _NPROCESSORS_ONLN) >= 2)) || die "needs 2 CPUs (proxy on CPU 1, clients on CPU 0)"
ulimit -n 20000

if [[ -n ${TCPLB_BIN:-} ]]; then
    TCPLB=$TCPLB_BIN
    ORIGIN="TCPLB_BIN=$TCPLB_BIN"
else
    log "building tcplb: cargo build --release"
    (cd "$ROOT" && cargo build --release >&2)
    TCPLB=$ROOT/target/release/tcplb
    ORIGIN="release build of git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
fi

STREAM_MODULE=""
if ! nginx -V 2>&1 | grep -E -- '--with-stream( |$)' >/dev/null; then
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        [[ -f $f ]] && STREAM_MODULE=$f
    done
    [[ -n $STREAM_MODULE ]] || die "nginx has no stream module (Debian: apt-get install libnginx-mod-stream)"
fi

TMP=$(mktemp -d -t tcplb-tls.XXXXXX)
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

API=$((BASE_PORT + 1)) WEB=$((BASE_PORT + 2))
declare -A PORT=([tcplb-sni]=$((BASE_PORT + 10)) [tcplb-plain]=$((BASE_PORT + 11))
    [haproxy-sni]=$((BASE_PORT + 12)) [nginx-sni]=$((BASE_PORT + 13)))
TARGETS=(tcplb-sni tcplb-plain haproxy-sni nginx-sni)
declare -A TPIDS

# Certificates: ECDSA P-256, self-signed, one per backend; the client trusts both.
for name in api web; do
    cn=api.example.com
    [[ $name == web ]] && cn='*.example.com'
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$cn" -addext "subjectAltName=DNS:$cn" \
        -keyout "$TMP/$name.key" -out "$TMP/$name.pem" 2>/dev/null
done
cat "$TMP/api.pem" "$TMP/web.pem" >"$TMP/ca.pem"

# The backends: nginx terminating TLS, one server per pool, a new connection per request
# (keepalive_timeout 0), answering 200 with its own name.
mkdir -p "$TMP/backend"
cat >"$TMP/backend/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_timeout 0;
    ssl_protocols TLSv1.2 TLSv1.3;
    server { listen 127.0.0.1:$API ssl backlog=4096; ssl_certificate $TMP/api.pem; ssl_certificate_key $TMP/api.key;
             location / { default_type text/plain; return 200 "api\n"; } }
    server { listen 127.0.0.1:$WEB ssl backlog=4096; ssl_certificate $TMP/web.pem; ssl_certificate_key $TMP/web.key;
             location / { default_type text/plain; return 200 "web\n"; } }
}
CONF
taskset -c "$CLIENT_CPU" nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)

# tcplb with routes, and without.
cat >"$TMP/tcplb-sni.toml" <<CONF
[global]
workers = 1

[services.tls]
listen = ["127.0.0.1:${PORT[tcplb-sni]}"]
routes = [
  { sni = "api.example.com", pool = "api" },
  { sni = "*.example.com", pool = "web" },
]
pool = "web"

[pools.api]
backends = ["127.0.0.1:$API"]
[pools.web]
backends = ["127.0.0.1:$WEB"]
CONF
RUST_LOG=warn taskset -c "$PROXY_CPU" "$TCPLB" --config "$TMP/tcplb-sni.toml" >"$TMP/tcplb-sni.log" 2>&1 &
PIDS+=($!)
TPIDS[tcplb-sni]=$!
RUST_LOG=warn taskset -c "$PROXY_CPU" "$TCPLB" --listen "127.0.0.1:${PORT[tcplb-plain]}" --workers 1 \
    "127.0.0.1:$API" >"$TMP/tcplb-plain.log" 2>&1 &
PIDS+=($!)
TPIDS[tcplb-plain]=$!

# HAProxy: wait for the ClientHello (inspect-delay), route by req.ssl_sni.
mkdir -p "$TMP/haproxy"
cat >"$TMP/haproxy/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 9500
defaults
    mode tcp
    timeout connect 3s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:${PORT[haproxy-sni]}
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend api if { req.ssl_sni -i api.example.com }
    use_backend web if { req.ssl_sni -m reg -i ^[^.]+\.example\.com\$ }
    default_backend web
backend api
    server api 127.0.0.1:$API
backend web
    server web 127.0.0.1:$WEB
CONF
taskset -c "$PROXY_CPU" haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
TPIDS[haproxy-sni]=$!

# nginx stream: ssl_preread and a map of the server name to an upstream.
mkdir -p "$TMP/stream"
{
    [[ -n $STREAM_MODULE ]] && echo "load_module $STREAM_MODULE;"
    cat <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $TMP/stream/nginx.pid;
error_log $TMP/stream/error.log warn;
events { worker_connections 16384; }
stream {
    map \$ssl_preread_server_name \$pool {
        api.example.com api;
        ~^[^.]+\.example\.com\$ web;
        default web;
    }
    upstream api { server 127.0.0.1:$API; }
    upstream web { server 127.0.0.1:$WEB; }
    server {
        listen 127.0.0.1:${PORT[nginx-sni]};
        ssl_preread on;
        proxy_pass \$pool;
        proxy_connect_timeout 3s;
    }
}
CONF
} >"$TMP/stream/nginx.conf"
taskset -c "$PROXY_CPU" nginx -p "$TMP/stream" -c "$TMP/stream/nginx.conf" >"$TMP/stream.log" 2>&1 &
PIDS+=($!)
TPIDS[nginx-sni]=$!

sleep 1
# nginx: the worker does the work; count the master and its worker.
TPIDS[nginx-sni]+=" $(pgrep -P "${TPIDS[nginx-sni]}" | tr '\n' ' ')"
for t in "${TARGETS[@]}"; do
    for p in ${TPIDS[$t]}; do
        kill -0 "$p" 2>/dev/null || { cat "$TMP"/*.log >&2; die "$t did not start"; }
    done
done

# PID...: nanoseconds their threads have spent on a CPU.
cpu_ns() {
    local p t sum=0 f
    for p in "$@"; do
        for t in /proc/"$p"/task/*/schedstat; do
            read -r f _ <"$t" 2>/dev/null || continue
            sum=$((sum + f))
        done
    done
    echo "$sum"
}

# TARGET NAME: the body and the certificate subject a client asking for NAME gets.
probe() {
    local port=${PORT[$1]} name=$2 body subject
    body=$(curl -s -k --no-sessionid --resolve "$name:$port:127.0.0.1" "https://$name:$port/")
    subject=$(openssl s_client -connect "127.0.0.1:$port" -servername "$name" </dev/null 2>/dev/null |
        sed -n 's/^subject=//p')
    echo "$body $subject"
}
for t in "${TARGETS[@]}"; do
    want_api="api CN = api.example.com" want_web="web CN = *.example.com"
    [[ $t == tcplb-plain ]] && want_web=$want_api
    got_api=$(probe "$t" api.example.com) got_web=$(probe "$t" www.example.com)
    [[ $got_api == "$want_api" && $got_web == "$want_web" ]] ||
        die "$t does not route as it should: api.example.com -> '$got_api' (want '$want_api'), www.example.com -> '$got_web' (want '$want_web')"
    log "$t routes: api.example.com -> $got_api; www.example.com -> $got_web"
done

RAW=$TMP/raw.jsonl
: >"$RAW"
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        read -r -a pids <<<"${TPIDS[$t]}"
        port=${PORT[$t]}
        before=$(cpu_ns "${pids[@]}")
        start=$(date +%s%N)
        taskset -c "$CLIENT_CPU" curl -s --no-sessionid --cacert "$TMP/ca.pem" \
            --resolve "api.example.com:$port:127.0.0.1" --parallel --parallel-max "$PARALLEL" \
            -o /dev/null -w '%{http_code}\n' "https://api.example.com:$port/[1-$CONNS]" \
            >"$TMP/codes" 2>/dev/null || true
        end=$(date +%s%N)
        after=$(cpu_ns "${pids[@]}")
        ok=$(grep -c '^200$' "$TMP/codes" || true)
        printf '{"target": "%s", "round": %d, "conns": %d, "ok": %d, "wall_ns": %d, "cpu_ns": %d}\n' \
            "$t" "$round" "$CONNS" "$ok" "$((end - start))" "$((after - before))" | tee -a "$RAW" >&2
    done
done

mkdir -p "$ROOT/bench-results"
OUT=$ROOT/bench-results/tls-$(date +%Y%m%d-%H%M%S)
((QUICK)) && OUT+=-quick
cp "$RAW" "$OUT.jsonl"
python3 - "$RAW" "$ROUNDS" "$CONNS" "$PARALLEL" "$("$TCPLB" --version) ($ORIGIN)" \
    "$(haproxy -v | head -n1 | awk '{ print "HAProxy " $3 }')" "$(nginx -v 2>&1 | sed 's|.*nginx/|nginx |')" \
    "$(uname -r)" <<'PY' | tee "$OUT.md"
import json, statistics, sys
raw, rounds, conns, parallel, tcplb, haproxy, nginx, kernel = sys.argv[1:]
recs = [json.loads(l) for l in open(raw)]
targets = ["tcplb-sni", "tcplb-plain", "haproxy-sni", "nginx-sni"]
def vals(t, f):
    return [f(r) for r in recs if r["target"] == t and r["ok"] > 0]
rate = {t: statistics.median(vals(t, lambda r: r["ok"] / (r["wall_ns"] / 1e9))) for t in targets}
cpu = {t: statistics.median(vals(t, lambda r: r["cpu_ns"] / r["ok"] / 1000)) for t in targets}
spread = {t: (min(vals(t, lambda r: r["cpu_ns"] / r["ok"] / 1000)), max(vals(t, lambda r: r["cpu_ns"] / r["ok"] / 1000))) for t in targets}
failed = {t: sum(r["conns"] - r["ok"] for r in recs if r["target"] == t) for t in targets}
print(f"New TLS connections (full handshakes, TLS 1.3, ECDSA P-256), {conns} per run, {parallel} at once, "
      f"{rounds} round(s) interleaved, medians. {tcplb}; {haproxy}; {nginx}; Linux {kernel}.")
print("Each proxy alone on CPU 1; the TLS backends (nginx) and curl on CPU 0. CPU per connection: "
      "the proxy's threads' time on a CPU (schedstat) over the connections.\n")
print("| proxy | routes by | new connections/s | proxy CPU µs/connection (min–max) | failed |")
print("|---|---|---:|---:|---:|")
how = {"tcplb-sni": "routes (SNI)", "tcplb-plain": "— (one pool)", "haproxy-sni": "req.ssl_sni",
       "nginx-sni": "ssl_preread + map"}
for t in targets:
    lo, hi = spread[t]
    print(f"| {t} | {how[t]} | {rate[t]:,.0f} | {cpu[t]:.1f} ({lo:.1f}–{hi:.1f}) | {failed[t]} |")
print()
# Ratios of CPU per connection, each the median of the rounds' own ratios (a round's targets
# ran minutes apart at most, under the same load), with the rounds' range.
rounds_of = {}
for r in recs:
    if r["ok"] > 0:
        rounds_of.setdefault(r["round"], {})[r["target"]] = r["cpu_ns"] / r["ok"]
def paired(a, b):
    xs = [v[a] / v[b] for v in rounds_of.values() if a in v and b in v]
    return statistics.median(xs), min(xs), max(xs)
print("| CPU per connection | ratio (median of the rounds' ratios) | rounds' range | target |")
print("|---|---:|---:|---:|")
for a, b, label, target in [
    ("tcplb-sni", "tcplb-plain", "tcplb SNI routing / tcplb plain passthrough", "≤ 1.05"),
    ("tcplb-sni", "haproxy-sni", "tcplb SNI routing / HAProxy req.ssl_sni", "≤ 1.0"),
    ("tcplb-sni", "nginx-sni", "tcplb SNI routing / nginx ssl_preread", "≤ 1.0"),
    ("tcplb-plain", "nginx-sni", "tcplb plain passthrough / nginx ssl_preread", ""),
]:
    med, lo, hi = paired(a, b)
    print(f"| {label} | {med:.3f} | {lo:.3f}–{hi:.3f} | {target} |")
PY
log "saved $OUT.md and $OUT.jsonl"
