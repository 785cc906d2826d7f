#!/usr/bin/env bash
# What the shared store costs a request: paired runs (bench/paired.sh) of the built-in gateway
# with the file store (A) against the Redis store (B), for key auth and then token auth. Starts
# its own redis-server on a free loopback port and stops it at the end.
#
#   bench/store.sh            # ROUNDS (default 5) and DURATION (default 6s) as for paired.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v redis-server >/dev/null || { echo "store.sh: needs redis-server (apt-get install redis-server)" >&2; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
for auth in key token; do
    echo "== $auth auth: A = file store, B = redis store"
    bench/paired.sh "--auth $auth" "--auth $auth --store redis://127.0.0.1:$port"
done
echo "keys left in Redis after the runs: $(redis-cli -p "$port" dbsize)"
