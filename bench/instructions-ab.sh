#!/usr/bin/env bash
# Instructions per request of the gateway under callgrind (a load-independent cost measure for a
# noisy, shared machine), for two variants of one binary. Needs valgrind, curl, openssl, python3
# and a release build:
#   cargo build --release && bench/instructions-ab.sh [seconds]        # rate limit: none vs one by = "client" policy
#   AB=store bench/instructions-ab.sh [seconds]                         # file store vs Redis store (needs redis-server)
#   AB=store AUTH=token bench/instructions-ab.sh [seconds]              # the same with token auth
#   AB=deploy bench/instructions-ab.sh [seconds]                        # 1 deployment vs blue/green 50/50 vs that + a 10 % mirror
# (BENCHMARKS.md, "Rate limits" and "Shared store"). Prints, per variant, the requests in the
# window and the instructions per request. BIN overrides the binary; KEEP=DIR keeps the
# callgrind profiles there.
set -euo pipefail
TOOLS="$(cd "$(dirname "$0")" && pwd)/tools"
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/scoregate}
SECS=${1:-15}
AB=${AB:-ratelimit}
AUTH=${AUTH:-key}
case $AB in
    ratelimit) variants="none rl" ;;
    store) variants="file redis"; command -v redis-server >/dev/null || { echo "needs redis-server" >&2; exit 1; } ;;
    deploy) variants="one split mirror" ;;
    *) echo "AB must be ratelimit, store or deploy" >&2; exit 2 ;;
esac
variants=${VARIANTS:-$variants}   # e.g. VARIANTS=none: one variant (with BIN=, an old binary)
DIR=$(mktemp -d /tmp/scoregate-instr.XXXXXX)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    [[ -f $DIR/redis.pid ]] && kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    sleep 0.5
    rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR"
read -r BACKEND_PORT LISTEN_PORT ADMIN_PORT REDIS_PORT BACKEND2_PORT BACKEND3_PORT <<<"$(python3 "$TOOLS/free_ports.py" 6)"
# shellcheck source=tools/gateway-files.sh
. "$TOOLS/gateway-files.sh"
gateway_files
cat > backend.py <<'PY'
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        b = b'{"result":[0.1,0.9]}'
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b))); self.end_headers(); self.wfile.write(b)
    do_GET = do_POST
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 backend.py "$BACKEND_PORT" &
if [[ $AB == deploy ]]; then python3 backend.py "$BACKEND2_PORT" & python3 backend.py "$BACKEND3_PORT" & fi
if [[ $AB == store ]]; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$DIR" \
        --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    echo "redis://127.0.0.1:$REDIS_PORT/0" > redis-url
    openssl rand -base64 32 > store-key
fi
KEY=bench-primary-0123456789abcdef0123456789abcdef
for v in $variants; do
    extra="" state=""
    [[ $v == rl ]] && extra=$'[[service.rate_limit]]\nby = "client"\nrequests = 1000000\nper = "1s"\nburst = 1000'
    backends="backends = [\"http://127.0.0.1:$BACKEND_PORT\"]"
    if [[ $v == split || $v == mirror ]]; then
        backends=$'traffic = { blue = 50, green = 50 }'
        deps=$'[[service.deployment]]\nname = "blue"\nbackends = ["http://127.0.0.1:'$BACKEND_PORT$'"]\n[[service.deployment]]\nname = "green"\nbackends = ["http://127.0.0.1:'$BACKEND2_PORT$'"]'
        if [[ $v == mirror ]]; then
            backends+=$'\nmirror_traffic = { candidate = 10 }'
            deps+=$'\n[[service.deployment]]\nname = "candidate"\nbackends = ["http://127.0.0.1:'$BACKEND3_PORT$'"]'
        fi
        extra=$deps
    fi
    [[ $v == redis ]] && state=$'store = "redis"\n[state.redis]\nurl_file = "redis-url"\nprefix = "instr:"\nsecret_key_file = "store-key"'
    if [[ $AUTH == token ]]; then svc_auth='auth = "token"'; else
        svc_auth=$'auth = "key"\nprimary_key = "'$KEY$'"\nsecondary_key = "bench-secondary-fedcba9876543210fedcba9876543210"'; fi
    { gateway_toml "$LISTEN_PORT" "$ADMIN_PORT" "state-$v" 1 false "$state"; cat <<TOML; } > $v.toml
[[service]]
name = "iris"
$svc_auth
$backends
health = { period = "1h" }
$extra
TOML
    valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.$v" "$BIN" serve --config $v.toml > gw.$v.log 2>&1 &
    vp=$!
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" > /dev/null && break; sleep 1; done
    if [[ $AUTH == token ]]; then
        curl -sf -X POST -H "Authorization: Bearer $(cat admin-token)" "http://127.0.0.1:$ADMIN_PORT/v1/services/iris/token" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])' > cred
        credarg=(--token-file "$DIR/cred")
    else
        credarg=(--key "$KEY")
    fi
    load=("$BIN" bench --target "https://localhost:$LISTEN_PORT/api/v1/service/iris/score" --insecure "${credarg[@]}"
        --connections 4 --quiet --json)
    "${load[@]}" --duration 3s > /dev/null 2>&1
    count() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^scoregate_requests_total/ {s += $2} END {print s}'; }
    ok() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^scoregate_requests_total.*class="2xx"/ {s += $2} END {print s + 0}'; }
    mirrored() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^scoregate_mirror_requests_total/ {s += $2} END {print s + 0}'; }
    # The counts are read outside the window: a /metrics scrape costs as much as a few
    # thousand requests' share, more with every metric family the gateway gains.
    r0=$(count) o0=$(ok) m0=$(mirrored)
    callgrind_control -z $vp > /dev/null
    "${load[@]}" --duration "${SECS}s" > /dev/null 2>&1
    callgrind_control -d $vp > /dev/null
    r1=$(count) o1=$(ok) m1=$(mirrored)
    sleep 2
    kill -INT $vp; wait $vp 2>/dev/null || true
    ir=$(grep -m1 '^summary:' "$DIR/cg.$v.1" | awk '{print $2}')
    if [[ $AB == ratelimit ]]; then
        check=$(callgrind_annotate --inclusive=yes "$DIR/cg.$v.1" 2>/dev/null | awk '/ServiceLimits::check \[/ {gsub(",", "", $1); print $1}')
        echo "$v: $((r1 - r0)) requests, $((ir / (r1 - r0))) instructions/request (4 handshakes included), limit phase ${check:-0} in all"
    elif [[ $AB == deploy ]]; then
        echo "$v: $((r1 - r0)) live requests ($((o1 - o0)) 2xx), $((ir / (r1 - r0))) instructions per live request (4 handshakes and the copies included), $((m1 - m0)) copies"
    else
        # Instructions in the Redis client and the store's own code (exclusive costs, summed).
        store=$(callgrind_annotate --threshold=100 "$DIR/cg.$v.1" 2>/dev/null |
            awk '/fred::|redis_protocol::|scoregate::store::|scoregate::state::store_sync/ {gsub(",", "", $1); s += $1} END {print s + 0}')
        echo "$v ($AUTH auth): $((r1 - r0)) requests ($((o1 - o0)) 2xx), $((ir / (r1 - r0))) instructions/request (4 handshakes included), store and Redis client code $store in all"
    fi
    if [[ -n ${KEEP:-} ]]; then cp "$DIR/cg.$v.1" "$KEEP/callgrind.$AB-$AUTH-$v"; fi
done
