#!/usr/bin/env bash
# soak.sh - a long run at a steady fraction of the saturating rate, with reloads and key
# regenerations, to show that nothing fails, leaks or drifts (issue 16's soak).
#
#   cargo build --release && bench/soak.sh                # 60 minutes at 50 %
#   MINUTES=5 bench/soak.sh                               # a short trial
#
# What it does:
#   1. starts the peers' fixed nginx backend (conf/backend-nginx.conf.in, keep-alive) and the
#      gateway (one service, key auth, $W worker threads, certificate and key from openssl);
#   2. measures the saturating rate of each client kind alone, closed loop, $SAT_S seconds each:
#      HTTP/1.1 keep-alive (64 connections), HTTP/2 (16 connections × 4 streams), and a new
#      TCP + full TLS handshake per request (64 at a time);
#   3. runs the three kinds at once for $MINUTES, open loop (`scoregate bench --rate`), each at
#      $FRACTION % ÷ 3 of its own saturating rate, so that together they offer $FRACTION % of
#      what the setup can do (the gateway's CPU or the clients' and backend's, whichever ran out
#      first in step 2; summary.md gives the gateway's CPU use); beside them a fourth kind, the
#      "parked" one: $PARKED_CONNS keep-alive connections sharing a fixed $PARKED_RATE requests/s,
#      so that each one idles $PARKED_CONNS ÷ $PARKED_RATE s between requests (2 s by default,
#      more than the 1 s after which the gateway parks an idle HTTP/1.1 connection), and every
#      one of its requests takes up a parked connection; every $RELOAD_S s the gateway gets
#      SIGHUP (certificate, config and keys re-read), every $REGEN_S s the service's secondary
#      key is regenerated through the admin API (the clients use the primary one, as a client
#      does while the other slot is rotated), and every 10 s the gateway's RSS and its count of
#      parked connections are read;
#   4. writes to $OUT: each kind's report (result-*.json) and second-by-second timeline
#      (timeline-*.jsonl), rss.jsonl, events.jsonl (each reload and regeneration and its result),
#      the gateway's /metrics at the end, summary.md, and soak.svg (p99 per second per kind, and
#      RSS, over the run) - drawn by tools/soak_report.py.
#
# With two or more CPUs the gateway is pinned to CPU 0 and the backend and the load generators to
# the others (PIN=0: no pinning), so that the clients' own CPU use does not queue in front of the
# gateway's and its latency is what the plot shows.
#
# Knobs: BIN (default target/release/scoregate), MINUTES (60), FRACTION (50), W (gateway worker
# threads, 1), PIN (1), RELOAD_S (30), REGEN_S (60), SAT_S (10), ACCESS (0; 1: access log on, to a file in
# the scratch dir), PARKED_CONNS (200; 0: no parked kind), PARKED_RATE (100), OUT (default bench/results/soak-<UTC stamp>). Needs nginx, openssl, curl,
# python3. Exits non-zero when any request failed, a reload or regeneration failed, or the gateway
# died.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/bench/tools"
BIN=${BIN:-$REPO/target/release/scoregate}
MINUTES=${MINUTES:-60}
FRACTION=${FRACTION:-50}
W=${W:-1}
RELOAD_S=${RELOAD_S:-30}
REGEN_S=${REGEN_S:-60}
SAT_S=${SAT_S:-10}
ACCESS=${ACCESS:-0}
PIN=${PIN:-1}
PARKED_CONNS=${PARKED_CONNS:-200}
PARKED_RATE=${PARKED_RATE:-100}
GW_CPUS=() REST_CPUS=()
if [[ $PIN == 1 ]] && (( $(nproc) >= 2 )) && command -v taskset >/dev/null; then
    GW_CPUS=(taskset -c 0) REST_CPUS=(taskset -c 1-$(( $(nproc) - 1 )))
fi
OUT=${OUT:-$REPO/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release" >&2; exit 2; }
for c in nginx openssl curl python3; do
    command -v $c >/dev/null || { echo "soak.sh needs $c" >&2; exit 2; }
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DIR=$(mktemp -d /tmp/scoregate-soak.XXXXXX)
PIDS=()
cleanup() {
    local p
    # Not `kill 0` for an empty list: that signals the whole process group, this script too.
    for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The gateway's log, also when the script stops early.
    cp "$DIR/gateway.log" "$OUT/gateway.log" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR"
read -r BP BP_CLOSE LISTEN ADMIN <<<"$(python3 "$TOOLS/free_ports.py" 4)"

# The backend: the peers' nginx, on free ports.
mkdir -p backend-tmp
sed -e "s|@RUN@|$DIR|g" -e "s|127.0.0.1:18080|127.0.0.1:$BP|" -e "s|127.0.0.1:18081|127.0.0.1:$BP_CLOSE|" \
    "$REPO/bench/conf/backend-nginx.conf.in" > backend.conf
${REST_CPUS[@]+"${REST_CPUS[@]}"} nginx -e "$DIR/backend-error.log" -p "$DIR" -c "$DIR/backend.conf" &
PIDS+=($!)

# shellcheck source=tools/gateway-files.sh
. "$TOOLS/gateway-files.sh"
gateway_files
KEY=soak-primary-0123456789abcdef0123456789abcdef
access=false; [[ $ACCESS == 1 ]] && access=true
{ gateway_toml "$LISTEN" "$ADMIN" state "$W" "$access"; cat <<TOML; } > soak.toml
[[service]]
name = "iris"
auth = "key"
primary_key = "$KEY"
secondary_key = "soak-secondary-fedcba9876543210fedcba9876543210"
backends = ["http://127.0.0.1:$BP"]
max_body = "1MiB"
# The peers' nginx backend answers no GET with 2xx (see run-scoregate.sh): no probes in the run.
health = { period = "24h" }
TOML
${GW_CPUS[@]+"${GW_CPUS[@]}"} "$BIN" serve --config soak.toml > gateway.out 2> gateway.log &
GW=$!
PIDS+=($GW)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null || { echo "the gateway did not get ready:" >&2; cat gateway.log >&2; exit 1; }

# By address, with the certificate's name as SNI: "localhost" may resolve to ::1 first.
URL="https://127.0.0.1:$LISTEN/api/v1/service/iris/score"
drive() {  # drive MODE ARGS...: scoregate bench against the gateway, key auth ($CONNS connections)
    local m=$1; shift
    local conns=${CONNS:-64}
    [[ $m == h2 ]] && conns=${CONNS:-16}
    ${REST_CPUS[@]+"${REST_CPUS[@]}"} "$BIN" bench --target "$URL" --insecure --sni localhost --key "$KEY" --pid "$GW" --mode "$m" --connections $conns --json --quiet "$@"
}
jget() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
MODES="keepalive h2 handshake"
declare -A RATE
echo "saturating rates (closed loop, ${SAT_S}s each, one kind at a time):"
for m in $MODES; do
    drive $m --warmup 2s --duration "${SAT_S}s" > "$OUT/saturate-$m.json"
    sat=$(jget "$OUT/saturate-$m.json" "['rps']")
    RATE[$m]=$(python3 -c "print(round($sat * $FRACTION / 100 / 3, 1))")
    echo "  $m: $sat/s -> soak at ${RATE[$m]}/s"
done

metric() {  # metric NAME_PREFIX: lines of the gateway's /metrics starting with it
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" | grep "^$1" || true
}
echo "soak: $MINUTES min, reload every ${RELOAD_S}s, secondary key regenerated every ${REGEN_S}s -> $OUT"
DRIVERS=()
WARMUP_S=5   # the drivers' timelines start after it; rss.jsonl and events.jsonl at their start
for m in $MODES; do
    drive $m --warmup "${WARMUP_S}s" --duration "${MINUTES}m" --rate "${RATE[$m]}" --timeline "$OUT/timeline-$m.jsonl" \
        > "$OUT/result-$m.json" 2> "$OUT/driver-$m.log" &
    DRIVERS+=($!)
    PIDS+=($!)
done
if (( PARKED_CONNS > 0 )); then
    CONNS=$PARKED_CONNS drive keepalive --warmup "${WARMUP_S}s" --duration "${MINUTES}m" --rate "$PARKED_RATE" \
        --timeline "$OUT/timeline-parked.jsonl" > "$OUT/result-parked.json" 2> "$OUT/driver-parked.log" &
    DRIVERS+=($!)
    PIDS+=($!)
fi
: > "$OUT/rss.jsonl"; : > "$OUT/events.jsonl"
T0=$(date +%s)
FAILED_OPS=0
alive() { local p; for p in "${DRIVERS[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
last_reload=0; last_regen=0; last_rss=-10
while alive; do
    sleep 1
    t=$(( $(date +%s) - T0 ))
    if ! kill -0 $GW 2>/dev/null; then
        echo "{\"t\": $t, \"event\": \"gateway died\"}" >> "$OUT/events.jsonl"
        echo "the gateway died at ${t}s" >&2
        FAILED_OPS=$((FAILED_OPS + 1))
        kill "${DRIVERS[@]}" 2>/dev/null || true
        break
    fi
    if (( t - last_rss >= 10 )); then
        last_rss=$t
        rss=$(awk '/^VmRSS:/ {print $2}' /proc/$GW/status 2>/dev/null || true)
        parked=$(metric 'scoregate_connections_parked ' | awk '{print $2}')
        [[ -n $rss ]] && echo "{\"t\": $t, \"rss_kb\": $rss, \"parked\": ${parked:-null}}" >> "$OUT/rss.jsonl"
    fi
    if (( t - last_reload >= RELOAD_S )); then
        last_reload=$t
        before=$(metric 'scoregate_reloads_total{result="ok"}' | awk '{print $2}')
        kill -HUP $GW 2>/dev/null || true
        ok=false
        for _ in $(seq 1 50); do
            now=$(metric 'scoregate_reloads_total{result="ok"}' | awk '{print $2}')
            [[ ${now:-0} != "${before:-0}" ]] && { ok=true; break; }
            sleep 0.1
        done
        $ok || FAILED_OPS=$((FAILED_OPS + 1))
        echo "{\"t\": $t, \"event\": \"reload\", \"ok\": $ok}" >> "$OUT/events.jsonl"
    fi
    if (( t - last_regen >= REGEN_S )); then
        last_regen=$t
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
            -H "Authorization: Bearer $(cat admin-token)" -H 'Content-Type: application/json' \
            -d '{"keyType": "Secondary"}' "http://127.0.0.1:$ADMIN/v1/services/iris/regenerateKeys" || true)
        [[ $code == 200 ]] || FAILED_OPS=$((FAILED_OPS + 1))
        echo "{\"t\": $t, \"event\": \"regenerate\", \"status\": \"$code\"}" >> "$OUT/events.jsonl"
    fi
done
DRIVER_FAIL=0
for p in "${DRIVERS[@]}"; do wait "$p" || DRIVER_FAIL=$((DRIVER_FAIL + 1)); done
curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" > "$OUT/metrics.txt" || true
python3 "$TOOLS/soak_report.py" "$OUT" --minutes "$MINUTES" --fraction "$FRACTION" --workers "$W" \
    --reload-s "$RELOAD_S" --regen-s "$REGEN_S" --warmup-s "$WARMUP_S" | tee "$OUT/summary.md"
if (( DRIVER_FAIL > 0 || FAILED_OPS > 0 )); then
    echo "soak FAILED: $DRIVER_FAIL client kind(s) saw failed requests, $FAILED_OPS reload/regeneration/gateway failure(s)" >&2
    exit 1
fi
