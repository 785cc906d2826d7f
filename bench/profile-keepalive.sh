#!/usr/bin/env bash
# profile-keepalive.sh - instructions per keep-alive HTTP/1.1 request, and where they go.
#
# The gateway runs under callgrind (instruction counts do not drift with the machine's other
# load), with one worker thread, in front of a small Python backend; `scoregate bench` (not under
# callgrind) drives 4 keep-alive HTTPS connections. The counters are zeroed once the connections
# are open (handshakes excluded) and dumped when the load has stopped, so the window holds the
# requests, the 4 connection closes and the idle timers of a second or two; the request count comes
# from scoregate_requests_total, read just before the zeroing and after the dump.
#
#   cargo build --profile profiling && bench/profile-keepalive.sh            # access log off, then on
#   VARIANTS=on SECS=30 bench/profile-keepalive.sh
#   CLOSE=1 bench/profile-keepalive.sh          # the backend closes every connection (azmlinfsrv)
#   KEEP=DIR bench/profile-keepalive.sh         # keep the callgrind profiles in DIR
#   VARIANTS="off split mirror" bench/profile-keepalive.sh   # one deployment vs blue/green 50/50
#                                                 # vs that + a 10 % mirror (access log off)
#
#   LOAD_ARGS="--mode h2 --streams 4" CONNS=16 bench/profile-keepalive.sh   # HTTP/2 instead
#
# Knobs: BIN (default target/profiling/scoregate: release code with symbols), VARIANTS ("off on":
# access log), SECS (measured seconds, default 20), CONNS (4), CLOSE (0), TOP (15), W (gateway
# worker threads, 1; under callgrind they take turns, so W=2 counts the multi-thread scheduler's
# instructions without its cache effects). Prints, per
# variant, the requests, the instructions per request, and the window's instructions grouped by
# where they ran (tools/callgrind_groups.py: exclusive costs, each instruction in one group). Needs valgrind, curl, openssl,
# python3. Instructions leave out the kernel: a write(2) costs one call here, whatever it costs
# the kernel.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/bench/tools"
BIN=${BIN:-$REPO/target/profiling/scoregate}
VARIANTS=${VARIANTS:-off on}
SECS=${SECS:-20}
CONNS=${CONNS:-4}
CLOSE=${CLOSE:-0}
WARM=${WARM:-6}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --profile profiling" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/scoregate-prof.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR"
read -r BACKEND_PORT LISTEN_PORT ADMIN_PORT <<<"$(python3 "$TOOLS/free_ports.py" 3)"
# shellcheck source=tools/gateway-files.sh
. "$TOOLS/gateway-files.sh"
gateway_files
cat > backend.py <<'PY'
import http.server, socketserver, sys
CLOSE = sys.argv[2] == "1"
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        b = b'{"result":[0.1,0.9]}'
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b)))
        if CLOSE:
            self.send_header("connection", "close"); self.close_connection = True
        self.end_headers(); self.wfile.write(b)
    do_GET = do_POST
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; request_queue_size = 1024
S((sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 backend.py "$BACKEND_PORT" "$CLOSE" &
PIDS+=($!)
if [[ " $VARIANTS " == *" split "* || " $VARIANTS " == *" mirror "* ]]; then
    # green and the mirror's candidate: the same backend code on 127.0.0.2 and 127.0.0.3 (a
    # backend URL may belong to one deployment only).
    python3 backend.py "$BACKEND_PORT" "$CLOSE" 127.0.0.2 & PIDS+=($!)
    python3 backend.py "$BACKEND_PORT" "$CLOSE" 127.0.0.3 & PIDS+=($!)
fi
KEY=bench-primary-0123456789abcdef0123456789abcdef
metric() {  # the sum of scoregate_requests_total
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^scoregate_requests_total/ {s += $2} END {print s + 0}'
}
echo "| access log | backend | requests | instructions / request |"
echo "|---|---|---|---|"
for v in $VARIANTS; do
    access=false; [[ $v == on ]] && access=true
    backends="backends = [\"http://127.0.0.1:$BACKEND_PORT\"]" deployments=""
    if [[ $v == split || $v == mirror ]]; then
        backends='traffic = { blue = 50, green = 50 }'
        [[ $v == mirror ]] && backends+=$'\nmirror_traffic = { candidate = 10 }'
        for d in blue:1 green:2 $([[ $v == mirror ]] && echo candidate:3); do
            deployments+=$'\n[[service.deployment]]\nname = "'${d%%:*}$'"\nbackends = ["http://127.0.0.'${d##*:}:$BACKEND_PORT$'"]'
        done
    fi
    { gateway_toml "$LISTEN_PORT" "$ADMIN_PORT" "state-$v" "${W:-1}" "$access"; cat <<TOML; } > $v.toml
[[service]]
name = "iris"
auth = "key"
primary_key = "$KEY"
secondary_key = "bench-secondary-fedcba9876543210fedcba9876543210"
$backends
health = { period = "1h" }
$deployments
TOML
    valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.$v" "$BIN" serve --config $v.toml \
        > gw.$v.out 2> gw.$v.log &
    vp=$!
    PIDS+=($vp)
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" > /dev/null && break; sleep 1; done
    "$BIN" bench --target "https://localhost:$LISTEN_PORT/api/v1/service/iris/score" --insecure --key "$KEY" \
        --connections "$CONNS" --warmup 0s --duration "$((WARM + SECS))s" --quiet --json ${LOAD_ARGS:-} > load.$v.json 2>&1 &
    lp=$!
    sleep "$WARM"
    r0=$(metric)
    callgrind_control -z $vp > /dev/null 2>&1
    wait $lp || true
    sleep 1
    callgrind_control -d $vp > /dev/null 2>&1
    r1=$(metric)
    kill -INT $vp; wait $vp 2>/dev/null || true
    n=$((r1 - r0))
    ir=$(grep -m1 '^summary:' "$DIR/cg.$v.1" | awk '{print $2}')
    echo "| $v | $([[ $CLOSE == 1 ]] && echo closes || echo keep-alive) | $n | $((ir / n)) |"
    # Where they went: exclusive cost per group, and the top functions.
    python3 "$REPO/bench/tools/callgrind_groups.py" "$DIR/cg.$v.1" "$n" --top "${TOP:-15}" | sed 's/^/    /' || true
    if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP"; cp "$DIR/cg.$v.1" "$KEEP/callgrind.keepalive-$([[ $CLOSE == 1 ]] && echo close-)access-$v"; fi
done
