#!/bin/bash
# keepalived vrrp_script for tcplb: asks tcplb's admin endpoint `GET /healthz`.
#
#   check-tcplb.sh [HOST:PORT]          # exit 0 when /healthz answers 200: a backend
#                                       # would take a session here (ready)
#   check-tcplb.sh --alive [HOST:PORT]  # exit 0 when tcplb answers at all, 200 or 503
#
# HOST:PORT is tcplb's --admin address, default 127.0.0.1:9090. Any other outcome (tcplb
# not running, not answering, not HTTP) exits non-zero.
#
# Needs nothing but bash: the request goes through bash's own /dev/tcp, so it runs on a
# minimal Debian without curl. The answer must come within 1 s (`read -t 1`); a connect
# that hangs (an admin address that is not local) is cut by the `timeout` of the
# vrrp_script block, which keepalived counts as a failure.
set -u

want='200'
if [[ ${1:-} == --alive ]]; then
    want='[0-9][0-9][0-9]'
    shift
fi
addr=${1:-127.0.0.1:9090}
host=${addr%:*}
port=${addr##*:}
host=${host#[} # [::1]:9090 -> ::1
host=${host%]}

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$addr" >&3 || exit 1
IFS= read -r -t 1 status <&3 || exit 1
# The status line: "HTTP/1.1 200 OK\r"
# shellcheck disable=SC2053 # $want is a pattern
[[ $status == HTTP/1.[01]\ $want\ * ]]
