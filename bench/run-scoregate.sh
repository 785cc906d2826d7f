#!/usr/bin/env bash
# run-scoregate.sh - scoregate as a peer of peers.sh (next to nginx and HAProxy).
#
# peers.sh starts it with its peer variables exported and tracks the PID it gets, so this script
# renders the config and then `exec`s the gateway in the foreground:
#
#   EXTRA_PEER='scoregate 20443 exec /abs/path/bench/run-scoregate.sh' ./peers.sh
#   (./compare.sh does exactly this)
#
# The config matches the peers' contract (conf/nginx-proxy.conf.in, conf/haproxy.cfg.in):
# 127.0.0.1:$SCOREGATE_PORT, the leaf+CA chain $CHAIN with key $KEY (CNAME scoring.example.test),
# services iris and other-model-2 in key mode with the preset keys $KEY1/$KEY2, backend
# http://$BACKEND, 1 MiB body limit, $W runtime worker threads, no access log.
#
# Inputs (exported by peers.sh): CHAIN KEY KEY1 KEY2 BACKEND W PRUN
# Knobs:  SCOREGATE_BIN         the binary (default: this repo's target/release/scoregate)
#         SCOREGATE_PORT        listen port (default 20443; must match EXTRA_PEER's port)
#         SCOREGATE_ACCESS_LOG  1: access log on, to $PRUN/stdout.log (default off, like the peers)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

for v in CHAIN KEY KEY1 KEY2 BACKEND W PRUN; do
    if [[ -z "${!v:-}" ]]; then
        echo "run-scoregate.sh: \$$v is not set; run me from peers.sh (see ./compare.sh)" >&2
        exit 2
    fi
done
BIN="${SCOREGATE_BIN:-$REPO/target/release/scoregate}"
if [[ ! -x "$BIN" ]]; then
    echo "run-scoregate.sh: $BIN not found; build it with: cargo build --release" >&2
    exit 2
fi
PORT="${SCOREGATE_PORT:-20443}"
ACCESS=false
[[ "${SCOREGATE_ACCESS_LOG:-0}" == 1 ]] && ACCESS=true

mkdir -p "$PRUN"
# service NAME: one [[service]] table in the peers' contract
service() {
    cat <<EOF

[[service]]
name = "$1"
auth = "key"
backends = ["http://$BACKEND"]
max_body = "1MiB"
primary_key = "$KEY1"
secondary_key = "$KEY2"
# The peers' nginx backend has no route that answers GET with 2xx, and neither peer
# health-checks its backend: probe once a day, i.e. never within a benchmark.
[service.health]
period = "24h"
EOF
}
{
    cat <<EOF
# Rendered by bench/run-scoregate.sh for one peers.sh round.
[listen]
address = "127.0.0.1:$PORT"

[[tls.certificates]]
cname = "scoring.example.test"
cert = "$CHAIN"
key = "$KEY"

[admin]
address = "127.0.0.1:0"
token_file = "admin-token"

[state]
dir = "state"

[runtime]
worker_threads = $W

[server]
drain_timeout = "2s"

[limits]
# The idle test opens 5 000 connections from one address; the peers cap none per client, and
# scoregate's default cap (1 000 per client address) would refuse 4 000 of them.
max_connections_per_client = 10000

[log]
access = $ACCESS
EOF
    service iris
    service other-model-2
} > "$PRUN/scoregate.toml"

exec "$BIN" serve --config "$PRUN/scoregate.toml"
