#!/usr/bin/env bash
# Instructions per request of the gateway under callgrind (a load-independent cost measure for a
# noisy, shared machine), with and without a `by = "client"` rate limit (BENCHMARKS.md, "Rate
# limits"). Needs valgrind, curl, openssl, python3 and a release build:
#   cargo build --release && bench/instructions-ab.sh [seconds]
# Prints, per variant, the requests in the window and the instructions per request.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/scoregate}
SECS=${1:-15}
DIR=$(mktemp -d /tmp/scoregate-instr.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
cd "$DIR"
mkdir certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout certs/key.pem \
    -out certs/fullchain.pem -days 2 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" 2>/dev/null
cat > backend.py <<'PY'
import http.server, socketserver
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
S(("127.0.0.1", 15001), H).serve_forever()
PY
python3 backend.py &
KEY=bench-primary-0123456789abcdef0123456789abcdef
for v in none rl; do
    rl=""
    [[ $v == rl ]] && rl=$'[[service.rate_limit]]\nby = "client"\nrequests = 1000000\nper = "1s"\nburst = 1000'
    cat > $v.toml <<TOML
[listen]
address = "127.0.0.1:18443"
[[tls.certificates]]
cname = "localhost"
cert = "certs/fullchain.pem"
key = "certs/key.pem"
[admin]
address = "127.0.0.1:19090"
token_file = "admin-token"
[state]
dir = "state-$v"
[runtime]
worker_threads = 1
[log]
access = false
[[service]]
name = "iris"
auth = "key"
backends = ["http://127.0.0.1:15001"]
primary_key = "$KEY"
secondary_key = "bench-secondary-fedcba9876543210fedcba9876543210"
health = { period = "1h" }
$rl
TOML
    valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.$v" "$BIN" serve --config $v.toml > gw.$v.log 2>&1 &
    vp=$!
    for _ in $(seq 1 120); do curl -sf http://127.0.0.1:19090/readyz > /dev/null && break; sleep 1; done
    load="$BIN bench --target https://localhost:18443/api/v1/service/iris/score --insecure --key $KEY --connections 4 --quiet --json"
    $load --duration 3s > /dev/null 2>&1
    count() { curl -s http://127.0.0.1:19090/metrics | awk '/^scoregate_requests_total/ {s += $2} END {print s}'; }
    callgrind_control -z $vp > /dev/null
    r0=$(count)
    $load --duration "${SECS}s" > /dev/null 2>&1
    r1=$(count)
    callgrind_control -d $vp > /dev/null
    sleep 2
    kill -INT $vp; wait $vp 2>/dev/null || true
    ir=$(grep -m1 '^summary:' "$DIR/cg.$v.1" | awk '{print $2}')
    check=$(callgrind_annotate --inclusive=yes "$DIR/cg.$v.1" 2>/dev/null | awk '/ServiceLimits::check \[/ {gsub(",", "", $1); print $1}')
    echo "$v: $((r1 - r0)) requests, $((ir / (r1 - r0))) instructions/request (4 handshakes included), limit phase ${check:-0} in all"
done
