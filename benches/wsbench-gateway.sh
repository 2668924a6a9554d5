#!/bin/sh
# wsbench's gateway under test: wsgate on 127.0.0.1:$PORT with one route, /, to wsbench's
# TCP echo on $ECHOPORT (run.sh exports both), the per-address connection cap off: wsbench's
# idle test opens 4,000 connections from each loopback address, where the default
# `max_connections_per_ip = 100` would refuse the rest. Everything else is the default.
#
#   ../shared/wsbench/run.sh all -- benches/wsbench-gateway.sh [WSGATE] [FLAGS...]
#
# WSGATE defaults to target/release/wsgate; FLAGS go to wsgate after `--config FILE`.
set -eu
bin=${1:-target/release/wsgate}
[ $# -gt 0 ] && shift
: "${PORT:?run by wsbench run.sh, which exports PORT}" "${ECHOPORT:?and ECHOPORT}"
config=${TMPDIR:-/tmp}/wsgate-wsbench-$PORT.toml
cat >"$config" <<TOML
[[listener]]
address = "127.0.0.1:$PORT"

[limits]
max_connections_per_ip = 0

[[route]]
name = "bench"
path = "/"
backend = "tcp://127.0.0.1:$ECHOPORT"
TOML
exec "$bin" --config "$config" "$@"
