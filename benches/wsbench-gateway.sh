#!/bin/sh
# wsbench's gateway under test: wsgate on 127.0.0.1:$PORT with one route, /, to wsbench's
# TCP echo on $ECHOPORT (run.sh exports both), the per-address connection cap off: wsbench's
# idle test opens 4,000 connections from each loopback address, where the default
# `max_connections_per_ip = 100` would refuse the rest. Everything else is the default.
#
#   ../shared/wsbench/run.sh all -- benches/wsbench-gateway.sh [WSGATE] [FLAGS...]
#   ../shared/wsbench/run.sh custom --scheme wss -- benches/wsbench-gateway.sh --tls CERT KEY [WSGATE] [FLAGS...]
#
# With `--tls CERT KEY` the listener serves TLS with that chain and key (wss://; for
# example certs/dev/localhost.pem and .key from certs/make-dev-certs.sh).
# WSGATE defaults to target/release/wsgate; FLAGS go to wsgate after `--config FILE`.
set -eu
tls=""
if [ "${1:-}" = "--tls" ]; then
    [ $# -ge 3 ] || { echo "usage: $0 --tls CERT KEY [WSGATE] [FLAGS...]" >&2; exit 2; }
    tls="
[listener.tls]
cert_file = \"$(realpath "$2")\"
key_file = \"$(realpath "$3")\""
    shift 3
fi
bin=${1:-target/release/wsgate}
[ $# -gt 0 ] && shift
: "${PORT:?run by wsbench run.sh, which exports PORT}" "${ECHOPORT:?and ECHOPORT}"
config=${TMPDIR:-/tmp}/wsgate-wsbench-$PORT.toml
cat >"$config" <<TOML
[[listener]]
address = "127.0.0.1:$PORT"
$tls

[limits]
max_connections_per_ip = 0

[[route]]
name = "bench"
path = "/"
backend = "tcp://127.0.0.1:$ECHOPORT"
TOML
exec "$bin" --config "$config" "$@"
