#!/usr/bin/env bash
# The fleet figure (contract §6, issue 12): 3 scoregate replicas sharing their state through a
# real redis-server, behind HAProxy in TCP mode sending PROXY protocol v2, under steady load,
# while the secondary key of one service is regenerated through one replica's admin API every
# second, and Redis is killed (SIGKILL) and restarted empty on the same port in the middle.
#
#   BIN=target/release/scoregate bench/fleet.sh
#
# Reports: requests and failed requests of the load (scoregate bench --target through HAProxy,
# every error counted: connect, TLS, I/O, timeout and every non-2xx answer; the load uses the
# primary key, which never changes), the propagation time of each change (from the admin
# answer until every replica, probed directly, accepts the new key: median and max; and the
# replaced key refused by every replica), and when admin writes answered 503 during the outage.
# Everything runs on loopback; the backend is bench/tools/backend.py (asyncio, keep-alive).
# Every process started here is stopped at the end. Results (JSON, logs) go to
# bench/results/fleet-<UTC stamp>/ (gitignored).
#
# Environment: BIN (default target/release/scoregate), DURATION (30: seconds of regenerations),
# KILL_AT (10.5) and RESTART_AT (15.5): seconds into the regenerations (halfway between two
# writes), KILL_AFTER_WRITE (set: kill Redis right after the first write answered from KILL_AT
# on, before the other replicas have read it: a write that Redis loses; see BENCHMARKS.md),
# CONNECTIONS (16: load connections), REPLICAS (3). Needs redis-server, haproxy, openssl, curl, python3
# (apt-get install -y redis-server haproxy; stop the system Redis if the package started one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOOLS="$(pwd)/bench/tools"
bin=$(realpath "${BIN:-target/release/scoregate}")
duration=${DURATION:-30}
kill_at=${KILL_AT:-10.5}
restart_at=${RESTART_AT:-15.5}
connections=${CONNECTIONS:-16}
replicas=${REPLICAS:-3}
[[ -x $bin ]] || { echo "fleet.sh: $bin is not an executable (cargo build --release, or BIN=...)" >&2; exit 1; }
for c in redis-server haproxy openssl curl python3; do
    command -v "$c" >/dev/null || { echo "fleet.sh: needs $c (apt-get install -y redis-server haproxy)" >&2; exit 1; }
done
res=bench/results/fleet-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$res"
res=$(realpath "$res")
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    local rp
    rp=$(cat "$tmp/redis.pid" 2>/dev/null || true)
    [[ -n $rp ]] && kill "$rp" 2>/dev/null || true
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    # Redis is not our child (it daemonizes): wait for it to go before removing its directory.
    for _ in $(seq 50); do [[ -n $rp ]] && kill -0 "$rp" 2>/dev/null || break; sleep 0.1; done
    cp "$tmp"/*.log "$tmp"/haproxy.cfg "$tmp"/gw1/scoregate.toml "$res"/ 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports below the ephemeral range, so that nobody else's bind(0) or outgoing
# connection takes Redis's port while it is down.
read -r -a ports <<<"$(python3 "$TOOLS/free_ports.py" $((3 + 2 * replicas)))"
redis_port=${ports[0]} backend_port=${ports[1]} lb_port=${ports[2]}

bench/gen-certs.sh "$tmp/certs" >/dev/null 2>&1
openssl rand -hex 24 >"$tmp/admin-token"
openssl rand -base64 32 >"$tmp/store-key"
echo "redis://127.0.0.1:$redis_port/0" >"$tmp/redis-url"
mkdir -p "$tmp/redis"
redis_cmd="redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no --dir $tmp/redis --daemonize yes --pidfile $tmp/redis.pid --logfile $tmp/redis.log"
eval "$redis_cmd"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

python3 bench/tools/backend.py "$backend_port" 2>"$tmp/backend.log" &
pids+=($!)

servers=""
listen=() admin=()
for i in $(seq 1 "$replicas"); do
    l=${ports[$((1 + 2 * i))]} a=${ports[$((2 + 2 * i))]}
    listen+=("127.0.0.1:$l") admin+=("127.0.0.1:$a")
    mkdir -p "$tmp/gw$i"
    # HAProxy connects from 127.0.0.2, the only address trusted to send a PROXY header; the
    # propagation probes come from 127.0.0.1 and speak TLS directly.
    cat >"$tmp/gw$i/scoregate.toml" <<EOF
[listen]
address = "127.0.0.1:$l"
trusted_proxies = ["127.0.0.2"]
proxy_protocol = "v2"

[[tls.certificates]]
cname = "scoring.example.test"
cert = "../certs/ecdsa-chain.pem"
key = "../certs/ecdsa.key"

[admin]
address = "127.0.0.1:$a"
token_file = "../admin-token"

[state]
dir = "state"
store = "redis"

[state.redis]
url_file = "../redis-url"
prefix = "fleet:"
secret_key_file = "../store-key"

[runtime]
worker_threads = 1

[log]
access = false

[[service]]
name = "iris"
backends = ["http://127.0.0.1:$backend_port"]
EOF
    "$bin" serve --config "$tmp/gw$i/scoregate.toml" 2>"$tmp/gw$i.log" &
    pids+=($!)
    servers+="    server gw$i 127.0.0.1:$l send-proxy-v2 check port $a inter 1s fall 2 rise 2"$'\n'
done
cat >"$tmp/haproxy.cfg" <<EOF
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend scoring
    bind 127.0.0.1:$lb_port
    default_backend scoregate

backend scoregate
    balance roundrobin
    source 127.0.0.2
    option httpchk GET /readyz
$servers
EOF
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

for a in "${admin[@]}"; do
    for _ in $(seq 300); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$a/readyz") == 200 ]] && continue 2
        sleep 0.1
    done
    echo "fleet.sh: the replica with admin $a did not turn ready; its log:" >&2
    cat "$tmp"/gw*.log >&2
    exit 1
done
auth=(-H "Authorization: Bearer $(cat "$tmp/admin-token")")
keys=$(curl -sf "${auth[@]}" -X POST "http://${admin[0]}/v1/services/iris/listKeys")
python3 -c 'import json,sys; print(json.loads(sys.argv[1])["primaryKey"])' "$keys" >"$tmp/primary"
secondary=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["secondaryKey"])' "$keys")
url=https://127.0.0.1:$lb_port/api/v1/service/iris/score
for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --cacert "$tmp/certs/ca.pem" -H "Authorization: Bearer $(cat "$tmp/primary")" \
        -H 'Content-Type: application/json' -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}' "$url") == 200 ]] && break
    sleep 0.1
done

load_s=$((duration + 8))
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "binary: $bin ($("$bin" --version))"
    echo "redis: $(redis-server --version | cut -d' ' -f3)  haproxy: $(haproxy -v | head -1 | cut -d' ' -f3)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$res/env.txt"
echo "load: $connections keep-alive connections through HAProxy for ${load_s}s; regenerations for ${duration}s from 2s in; Redis killed at ${kill_at}s, restarted at ${restart_at}s" | tee -a "$res/env.txt"
"$bin" bench --target "$url" --ca "$tmp/certs/ca.pem" --key-file "$tmp/primary" --connections "$connections" \
    --client-threads 1 --warmup 0s --duration "${load_s}s" --json --quiet >"$res/load.json" 2>"$tmp/load.log" &
load_pid=$!
pids+=("$load_pid")
sleep 2
python3 bench/tools/fleet_driver.py --admin "http://${admin[0]}" $(printf -- '--replica %s ' "${listen[@]}") \
    --ca "$tmp/certs/ca.pem" --admin-token-file "$tmp/admin-token" --service iris --secondary-key "$secondary" \
    --redis-pidfile "$tmp/redis.pid" --redis-restart "$redis_cmd" \
    --duration "$duration" --kill-at "$kill_at" --restart-at "$restart_at" ${KILL_AFTER_WRITE:+--kill-after-write} >"$res/driver.json" 2> >(tee "$tmp/driver.log" >&2)
wait "$load_pid"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$res/env.txt"
for i in $(seq 1 "$replicas"); do
    curl -s "http://${admin[$((i - 1))]}/metrics" >"$res/metrics-gw$i.txt"
done
echo "fleet.sh: results in $res"
python3 - "$res" <<'PY'
import glob, json, re, sys
res = sys.argv[1]
load = json.load(open(f"{res}/load.json"))
drv = json.load(open(f"{res}/driver.json"))
# The replicas' own count of scoring answers that were not 2xx, less the probes' (401 for a key
# not yet in force): what the load received, seen from the gateways.
gw_non2xx = 0
for f in glob.glob(f"{res}/metrics-gw*.txt"):
    for line in open(f):
        m = re.match(r'scoregate_requests_total\{([^}]*)\} (\S+)', line)
        if m and 'class="2xx"' not in m.group(1):
            gw_non2xx += float(m.group(2))
probe_non2xx = sum(v for a in drv["probe_answers"].values() for k, v in a.items() if k != "200")
errs = load["errors"]
p = drv["propagation_ms"]
summary = {
    "requests_ok": load["requests"], "requests_failed": errs["total"], "failures_by_kind": errs,
    "rps": load["rps"], "latency_ms": load["latency_ms"],
    "gateway_non2xx_less_probes": gw_non2xx - probe_non2xx,
    "changes": drv["changes"], "not_propagated": drv["not_propagated"],
    "old_key_still_accepted": drv["old_key_still_accepted"],
    "propagation_ms": p, "writes_by_status": drv["writes_by_status"],
    "redis_killed_at_s": drv["redis_killed_at_s"], "redis_restarted_at_s": drv["redis_restarted_at_s"],
    "first_503_at_s": drv["first_503_at_s"], "last_503_at_s": drv["last_503_at_s"],
    "first_write_ok_after_kill_at_s": drv["first_write_ok_after_kill_at_s"],
}
json.dump(summary, open(f"{res}/summary.json", "w"), indent=1)
print(f"requests: {load['requests']} ok, {errs['total']} failed ({load['rps']:.0f} req/s, p99 {load['latency_ms']['p99']} ms,"
      f" max {load['latency_ms']['max']} ms); non-2xx counted by the replicas, less the probes': {gw_non2xx - probe_non2xx:.0f}")
print(f"changes: {drv['changes']} measured; propagation median {p['median']} ms, max {p['max']} ms"
      f" (min {p['min']} ms); not propagated: {drv['not_propagated']}; replaced key still accepted: {drv['old_key_still_accepted']}")
k, r = drv["redis_killed_at_s"], drv["redis_restarted_at_s"]
if drv["first_503_at_s"] is not None:
    print(f"outage: Redis killed at {k:.2f}s, restarted at {r:.2f}s; writes answered 503 from {drv['first_503_at_s']:.2f}s"
          f" to {drv['last_503_at_s']:.2f}s ({drv['last_503_at_s'] - drv['first_503_at_s']:.2f}s; first 503 {drv['first_503_at_s'] - k:.2f}s"
          f" after the kill), first write after the kill landed at {drv['first_write_ok_after_kill_at_s']:.2f}s"
          f" ({drv['first_write_ok_after_kill_at_s'] - r:.2f}s after the restart); writes by status {drv['writes_by_status']}")
else:
    print(f"outage: Redis killed at {k}s, restarted at {r}s; no write answered 503; writes by status {drv['writes_by_status']}")
bad = [f"{errs['total']} failed requests"] if errs["total"] else []
bad += [f"{drv['not_propagated']} change(s) not in force on every replica within 40 s"] if drv["not_propagated"] else []
bad += [f"a replaced key still accepted {drv['old_key_still_accepted']} time(s)"] if drv["old_key_still_accepted"] else []
if bad:
    print("fleet.sh: FAILED: " + "; ".join(bad))
    sys.exit(1)
PY
