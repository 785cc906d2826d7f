#!/usr/bin/env bash
# compare.sh - scoregate next to nginx and HAProxy, in one command.
#
# Builds the release binary if it is missing, then runs peers.sh with scoregate as its third
# peer (run-scoregate.sh): the same backend, certificates, load tools and contract checks for all
# three, runs of the peers interleaved, and tables with each peer's paired ratio to nginx. Then
# plot.py draws results/<stamp>/plot.svg and prints scoregate's paired ratios to nginx and HAProxy.
#
#   ./bench/compare.sh                                        # peers.sh's defaults (~20 minutes)
#   RUNS=1 DURATION=3 WORKERS=1 CERTS=ecdsa TESTS_ecdsa=keepalive TESTS_rsa= ./bench/compare.sh
#   RUNS=5 H2_RUNS=3 ./bench/compare.sh                       # as in PEERS.md
#
# Every knob of peers.sh passes through the environment (RUNS, H2_RUNS, DURATION, WARMUP,
# WORKERS, CERTS, TESTS_ecdsa, TESTS_rsa, WRK_CONNS, H2_OPTS, IDLE_CONNS, ONLY, MAX_OTHER, ...);
# see the top of peers.sh. Own knobs:
#   RES=DIR               results folder (default bench/results/<UTC stamp>/, gitignored)
#   BUILD=1               run `cargo build --release` even if the binary exists
#   SCOREGATE_BIN=PATH    another scoregate binary
#   SCOREGATE_PORT=N      its port (default 20443)
#   SCOREGATE_ACCESS_LOG=1  access log on
# Needs (Debian): nginx haproxy wrk nghttp2-client curl openssl python3 iproute2 procps.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

export SCOREGATE_BIN="${SCOREGATE_BIN:-$REPO/target/release/scoregate}"
export SCOREGATE_PORT="${SCOREGATE_PORT:-20443}"
if [[ ! -x "$SCOREGATE_BIN" || "${BUILD:-0}" == 1 ]]; then
    echo "compare.sh: building $SCOREGATE_BIN" >&2
    (cd "$REPO" && cargo build --release --locked)
fi

missing=()
for tool in nginx haproxy wrk h2load curl openssl python3 ss pgrep; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
    echo "compare.sh: missing tools: ${missing[*]}" >&2
    echo "  install: apt-get install -y nginx haproxy wrk nghttp2-client curl openssl python3 iproute2 procps" >&2
    exit 1
fi

export RES="${RES:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}"
export EXTRA_PEER="scoregate $SCOREGATE_PORT exec $(printf '%q' "$HERE/run-scoregate.sh")"
mkdir -p "$RES"
{
    echo "scoregate: $("$SCOREGATE_BIN" --version 2>&1) ($SCOREGATE_BIN)"
    echo "git: $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
} > "$RES/scoregate.txt"

"$HERE/peers.sh"

echo
python3 "$HERE/plot.py" "$RES/results.jsonl" "$RES/plot.svg" --target scoregate | tee "$RES/ratios.md"
echo "compare.sh: results, tables and plot in $RES" >&2
