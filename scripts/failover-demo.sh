#!/usr/bin/env bash
# An active-passive tcplb pair with keepalived, built on one machine out of network
# namespaces; the MASTER is failed four ways and each takeover is measured.
#
#   scripts/failover-demo.sh            # as root; builds tcplb (cargo build --release) first
#   scripts/failover-demo.sh --check    # only tell whether this machine can run it:
#                                       # exit 0, or exit 3 with the reason on stderr
#
# Environment: TCPLB=PATH runs that tcplb binary instead of building one (the test does);
# FAILOVER_LIMIT=SECS is the takeover target (default 4: VRRP adverts every 1 s);
# FAILOVER_KEEP=1 keeps the logs directory (its path is printed).
#
# Needs: Linux, root, iproute2 (`ip netns`), keepalived, python3 (the demo backends),
# bash 5 and coreutils. Takes about 30 s.
#
# What it builds, all of it inside namespaces this run creates (named tfo<run id>-*); the
# host's own interfaces, addresses and routes are never touched and never a target:
#
#   cl   client             10.213.47.10 ─┐
#   lb1  tcplb + keepalived 10.213.47.11 ─┤   bridge br0 in namespace sw,
#        MASTER, holds the VIP 10.213.47.100  one veth per namespace
#   lb2  tcplb + keepalived 10.213.47.12 ─┤
#        BACKUP                            │
#   be1  backend            10.213.47.21 ─┤
#   be2  backend            10.213.47.22 ─┘
#
# keepalived runs deploy/keepalived/keepalived-{master,backup}.conf and check-tcplb.sh as
# shipped; only the VIP, the script's path and the script user (nobody) are swapped in.
# Each backend answers every connection with one line naming the address the connection
# came from, so the client knows which balancer served it.
#
# It connects through the VIP, then fails the MASTER, each time measuring from the failure
# until a new connection through the VIP is served by the BACKUP:
#   1. tcplb-killed       kill -9 tcplb on the MASTER (its checks fail: FAULT, goodbye advert)
#   2. keepalived-killed  kill -9 keepalived on the MASTER (no goodbye advert)
#   3. master-lost        the MASTER's link goes down (the machine is gone)
# bringing the MASTER back after each and waiting until it serves the VIP again (preempt);
#   4. master-unready     the MASTER cannot reach a backend (its /healthz says 503)
# Prints `takeover NAME: SECS s` for 1-3 and `moved master-unready: SECS s` for 4; exits 1
# if a takeover took longer than FAILOVER_LIMIT or anything did not work. Everything it
# made is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
if ((BASH_VERSINFO[0] < 5)); then
    echo "failover-demo cannot run here: bash 5 or later is needed (EPOCHREALTIME)" >&2
    exit 3
fi

root=$(cd "$(dirname "$0")/.." && pwd)
limit=${FAILOVER_LIMIT:-4}
[[ $limit =~ ^[0-9]+(\.[0-9]+)?$ ]] || {
    echo "failover-demo: FAILOVER_LIMIT=$limit is not a number of seconds" >&2
    exit 2
}
net=10.213.47
vip=$net.100
declare -A addr=([cl]=$net.10 [lb1]=$net.11 [lb2]=$net.12 [be1]=$net.21 [be2]=$net.22)
port=8080         # tcplb's listener, on the VIP
backend_port=8000 # the demo backends
admin=127.0.0.1:9090

say() { printf '%s\n' "$*"; }
die() {
    printf 'failover-demo: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# Can this machine run it? One answer for --check, for the test, and for a real run.
cannot_run() {
    [[ $(uname -s) == Linux ]] || { echo "not Linux (network namespaces are Linux-only)"; return; }
    [[ $(id -u) == 0 ]] || { echo "not root (network namespaces and keepalived need root)"; return; }
    local tool
    for tool in ip keepalived python3 timeout; do
        command -v "$tool" >/dev/null || {
            case $tool in
            ip) echo "ip is missing (apt-get install iproute2)" ;;
            keepalived) echo "keepalived is missing (apt-get install keepalived)" ;;
            python3) echo "python3 is missing (it runs the demo backends)" ;;
            timeout) echo "timeout is missing (coreutils)" ;;
            esac
            return
        }
    done
    # Root is not always enough (a container without CAP_SYS_ADMIN): try one namespace.
    local probe="tfo-probe-$$-$RANDOM" err
    if ! err=$(ip netns add "$probe" 2>&1); then
        echo "cannot create a network namespace: $err"
        return
    fi
    ip netns del "$probe"
}

reason=$(cannot_run)
if [[ ${1:-} == --check ]]; then
    if [[ -n $reason ]]; then
        echo "failover-demo cannot run here: $reason" >&2
        exit 3
    fi
    echo "failover-demo can run here"
    exit 0
elif (($#)); then
    echo "usage: $0 [--check]" >&2
    exit 2
fi
[[ -z $reason ]] || die "cannot run here: $reason"

# Traffic must stay inside our namespaces. It cannot leave them anyway (none has a route
# out), but refuse to run where the host itself uses the range, so no reader of the output
# could mistake one for the other.
if ip -4 -o addr show | grep -q " $net\." || ip -4 route show table all | grep -q "^$net\."; then
    die "the host already uses $net.0/24; this demo keeps to a range the host does not use"
fi

if [[ -n ${TCPLB:-} ]]; then
    tcplb=$TCPLB
else
    say "== building tcplb (cargo build --release)"
    (cd "$root" && cargo build --release --quiet)
    tcplb=$root/target/release/tcplb
fi
[[ -x $tcplb ]] || die "no tcplb binary at $tcplb"

# ---------------------------------------------------------------------------------------
# Names unique to this run, and a clean-up that removes exactly what this run made.
run_id=$$$(printf '%04x' "$RANDOM")
prefix=tfo$run_id
run=$(mktemp -d "/tmp/tcplb-failover.$run_id.XXXXXX")
chmod 0755 "$run" # the check script runs as nobody
made_ns=()        # namespaces this run created, and only those

alive() { # PID is running (not merely a zombie)
    local state
    [[ -r /proc/$1/stat ]] && read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null && [[ $state != Z ]]
}
gone() { ! alive "$1"; }

ns_pids() { # every process inside the namespaces this run made
    local ns
    for ns in "${made_ns[@]}"; do ip netns pids "$ns" 2>/dev/null || true; done
}

cleanup() {
    local rc=$? pids ns i
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)) && [[ -d $run ]]; then
        for f in "$run"/*.log; do
            [[ -s $f ]] || continue
            echo "--- last lines of ${f##*/}" >&2
            tail -n 15 "$f" >&2
        done
    fi
    # Only processes inside our own namespaces: nothing else can be hit.
    pids=$(ns_pids)
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null
        for ((i = 0; i < 30; i++)); do
            [[ -z $(ns_pids) ]] && break
            sleep 0.1
        done
        pids=$(ns_pids)
        # shellcheck disable=SC2086
        [[ -z $pids ]] || kill -KILL $pids 2>/dev/null
    fi
    # Deleting a namespace removes the veths, the bridge and the addresses inside it.
    for ns in "${made_ns[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [[ -n ${FAILOVER_KEEP:-} ]]; then
        echo "kept $run" >&2
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

make_ns() { # NAME: create namespace $prefix-NAME with lo up
    ip netns add "$prefix-$1" || die "cannot create namespace $prefix-$1"
    made_ns+=("$prefix-$1")
    ip -n "$prefix-$1" link set lo up
}

in_ns() { # NODE CMD...: run CMD inside that node's namespace
    local node=$1
    shift
    ip netns exec "$prefix-$node" "$@"
}

now_us() { echo "${EPOCHREALTIME//[.,]/}"; }

secs() { # MICROSECONDS -> seconds with two decimals
    printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000))
}

# ---------------------------------------------------------------------------------------
say "== run $run_id: namespaces $prefix-{sw,cl,lb1,lb2,be1,be2}, $net.0/24, VIP $vip"

make_ns sw
ip -n "$prefix-sw" link add br0 type bridge
ip -n "$prefix-sw" link set br0 up
for node in cl lb1 lb2 be1 be2; do
    make_ns "$node"
    # Both ends are created inside their namespaces: nothing appears in the host's.
    ip link add eth0 netns "$prefix-$node" type veth peer name "$node" netns "$prefix-sw"
    ip -n "$prefix-sw" link set "$node" master br0 up
    ip -n "$prefix-$node" addr add "${addr[$node]}/24" dev eth0
    ip -n "$prefix-$node" link set eth0 up
done

# The backends: one line per connection, naming who connected (the balancer's address).
for node in be1 be2; do
    ip netns exec "$prefix-$node" python3 -c '
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
server = socket.create_server(("0.0.0.0", port), backlog=128)
while True:
    conn, peer = server.accept()
    with conn:
        try:
            conn.sendall(f"tcplb-failover-demo {name} from {peer[0]}\n".encode())
        except OSError:
            pass
' "$node" "$backend_port" >"$run/$node.log" 2>&1 &
    disown # no "Killed" notices from bash at clean-up
done

# Background processes are started with `ip netns exec` itself (not a shell function, which
# would run in a subshell), so $! is the process: ip execs the command in place.
# Active checks every 0.5 s so that scenario 4 shows in /healthz quickly.
declare -A tcplb_pid
start_tcplb() { # NODE
    ip netns exec "$prefix-$1" "$tcplb" --listen "0.0.0.0:$port" --admin "$admin" \
        --connect-timeout 500ms --health-interval 500ms --fall 2 --drain-timeout 1s \
        "${addr[be1]}:$backend_port" "${addr[be2]}:$backend_port" >>"$run/$1-tcplb.log" 2>&1 &
    tcplb_pid[$1]=$!
    disown
}

# The shipped configuration, with only this demo's VIP, script path and script user.
cp "$root/deploy/keepalived/check-tcplb.sh" "$run/check-tcplb.sh"
chmod 0755 "$run/check-tcplb.sh"
render_conf() { # SHIPPED OUT
    sed -e "s|10\.0\.0\.100/24|$vip/24|" \
        -e "s|/etc/keepalived/check-tcplb.sh|$run/check-tcplb.sh|" \
        -e "s|script_user keepalived_script|script_user nobody|" "$1" >"$2"
    # If the shipped file changes shape, say so instead of testing something else.
    if ! { grep -q "^ *$vip/24 dev eth0\$" "$2" &&
        grep -qF "script \"$run/check-tcplb.sh $admin\"" "$2" &&
        grep -qF "script \"$run/check-tcplb.sh --alive $admin\"" "$2" &&
        grep -q "^ *script_user nobody\$" "$2" &&
        grep -q "^ *interface eth0\$" "$2"; }; then
        die "$1 no longer has the VIP, check script, script_user or interface lines this demo expects"
    fi
}
render_conf "$root/deploy/keepalived/keepalived-master.conf" "$run/lb1.conf"
render_conf "$root/deploy/keepalived/keepalived-backup.conf" "$run/lb2.conf"

declare -A keepalived_pid
start_keepalived() { # NODE: in the foreground (-n), own pid files, log to the console
    local n=$1
    rm -f "$run/$n-keepalived.pid" "$run/$n-vrrp.pid" "$run/$n-checkers.pid"
    ip netns exec "$prefix-$n" keepalived --dont-fork --log-console --log-detail --no-syslog --vrrp \
        --use-file "$run/$n.conf" --pid "$run/$n-keepalived.pid" \
        --vrrp_pid "$run/$n-vrrp.pid" --checkers_pid "$run/$n-checkers.pid" \
        >>"$run/$n-keepalived.log" 2>&1 &
    keepalived_pid[$n]=$!
    disown
}

healthy() { # NODE: tcplb's /healthz there says 200, through the shipped check script
    in_ns "$1" "$run/check-tcplb.sh" "$admin" 2>/dev/null
}

holds_vip() { # NODE
    ip -n "$prefix-$1" -4 -o addr show dev eth0 | grep -qF " $vip/"
}

# One new connection through the VIP from the client; prints lb1 or lb2, whichever
# balancer served it. 0.3 s is ample inside one machine: a probe that takes longer has
# met a VIP nobody answers for.
probe() {
    local line
    # shellcheck disable=SC2016 # expanded by the inner bash
    line=$(in_ns cl timeout 0.3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r -t 0.3 line <&3 &&
        printf "%s\n" "$line"' "$vip" "$port" 2>/dev/null) || return 1
    case $line in
    "tcplb-failover-demo be"[12]" from ${addr[lb1]}") echo lb1 ;;
    "tcplb-failover-demo be"[12]" from ${addr[lb2]}") echo lb2 ;;
    *) return 1 ;;
    esac
}

# Probe every 50 ms until a connection is served by NODE; set `took` to the seconds from
# START_US to the start of that probe (the earliest moment it is known to work) and
# `longest_gap` to the longest run of failed probes on the way. Gives up after 20 s.
wait_served_by() { # NODE START_US
    local want=$1 start=$2 t got fail_since=
    longest_gap=0.00
    while :; do
        t=$(now_us)
        if got=$(probe) && [[ $got == "$want" ]]; then
            took=$(secs $((t - start)))
            [[ -z $fail_since ]] || gap_end "$fail_since" "$t"
            return 0
        fi
        if [[ -z $got ]]; then
            [[ -n $fail_since ]] || fail_since=$t
        elif [[ -n $fail_since ]]; then
            gap_end "$fail_since" "$t"
            fail_since=
        fi
        (($(now_us) - start < 20000000)) || return 1
        sleep 0.05
    done
}
gap_end() { # FROM_US TO_US: keep the longest gap
    local g
    g=$(secs $(($2 - $1)))
    ((10#${g/./} <= 10#${longest_gap/./})) || longest_gap=$g
}

wait_until() { # SECS DESCRIPTION CMD...: poll CMD every 0.1 s
    local secs=$1 what=$2 start
    shift 2
    start=$(now_us)
    until "$@"; do
        (($(now_us) - start < secs * 1000000)) || die "$what: not within $secs s"
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------
for node in lb1 lb2; do start_tcplb "$node"; done
wait_until 10 "tcplb healthy on lb1" healthy lb1
wait_until 10 "tcplb healthy on lb2" healthy lb2
start_keepalived lb1
start_keepalived lb2
wait_until 15 "lb1 (MASTER) taking the VIP" holds_vip lb1
wait_served_by lb1 "$(now_us)" || die "no connection through the VIP was served by lb1"
holds_vip lb2 && die "both balancers hold the VIP"
say "== the pair is up: lb1 (MASTER) holds $vip; a connection through it was served by lb1"

results=() # "NAME SECS" per takeover
over=()    # the ones over the limit
takeover() { # NAME WHAT: wait until lb2 serves the VIP, measured from now; report
    local start
    start=$(now_us)
    wait_served_by lb2 "$start" || die "lb2 did not take over within 20 s of $2"
    holds_vip lb1 && [[ $1 != keepalived-killed ]] && die "lb1 still holds the VIP after $2"
    say "takeover $1: $took s (new connections failed for $longest_gap s of it)"
    results+=("$1 $took s")
    awk -v t="$took" -v l="$limit" 'BEGIN { exit !(t > l) }' && over+=("$1 ($took s)")
    return 0
}

failback() { # WHAT: wait until lb1 serves the VIP again (preempt), report how it went
    local start
    start=$(now_us)
    wait_served_by lb1 "$start" || die "lb1 did not take the VIP back within 20 s of $1"
    holds_vip lb2 && die "lb2 still holds the VIP after lb1 took it back"
    say "   back: lb1 serves the VIP again $took s after $1" \
        "(new connections failed for $longest_gap s of it)"
}

say "== 1. kill -9 tcplb on the MASTER (lb1)"
kill -KILL "${tcplb_pid[lb1]}"
takeover tcplb-killed "tcplb dying on lb1"
wait_until 5 "the killed tcplb to be gone" gone "${tcplb_pid[lb1]}"
start_tcplb lb1
failback "restarting tcplb"

say "== 2. kill -9 keepalived on the MASTER (lb1: no goodbye advert)"
# The VRRP child first: killed second, it would get the dying parent's SIGTERM first
# (keepalived asks for it with PR_SET_PDEATHSIG) and send its goodbye after all.
pids="$(cat "$run/lb1-vrrp.pid") ${keepalived_pid[lb1]}"
# shellcheck disable=SC2086
kill -KILL $pids
takeover keepalived-killed "keepalived dying on lb1"
# A keepalived killed this way cannot remove the VIP: lb1 still has it configured (and its
# tcplb served the client until lb2's gratuitous ARPs moved it). Restarting keepalived
# removes it before anything else.
for pid in $pids; do wait_until 5 "the killed keepalived to be gone" gone "$pid"; done
start_keepalived lb1
failback "restarting keepalived"

say "== 3. the MASTER (lb1) loses its link, as if the machine were gone"
ip -n "$prefix-lb1" link set eth0 down
takeover master-lost "lb1's link going down"
ip -n "$prefix-lb1" link set eth0 up
failback "lb1's link coming back"

say "== 4. the MASTER (lb1) stays up but cannot reach a backend (its /healthz says 503)"
for node in be1 be2; do ip -n "$prefix-lb1" route add blackhole "${addr[$node]}/32"; done
start=$(now_us)
wait_served_by lb2 "$start" || die "the VIP did not move off lb1 within 20 s of lb1 losing its backends"
holds_vip lb1 && die "lb1 still holds the VIP after losing its backends"
say "moved master-unready: $took s (new connections failed for $longest_gap s of it;" \
    "tcplb's checks, then keepalived's, then 3 adverts missed at priority 200 or more)"

summary=$(printf '%s, ' "${results[@]}")
say "== takeover times (limit $limit s): ${summary%, }"
((${#over[@]} == 0)) || die "takeover slower than $limit s: ${over[*]}"
say "== all takeovers within $limit s"
