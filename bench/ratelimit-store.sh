#!/usr/bin/env bash
# What fleet-wide rate limits cost a request: the built-in gateway with one by = "client" policy
# that never refuses (`--rate-limit`), on the file store (A: the local limiter) against the Redis
# store (B: one store script per request), and the Redis store without the policy (C: what the
# store alone costs, nothing on the hot path). Alternated round after round (the order rotates),
# as in bench/paired.sh; prints each run's gateway CPU µs per request and p99, then the medians,
# and Redis's own time per script call (INFO commandstats). Starts its own redis-server on a
# free loopback port and stops it at the end.
#
#   bench/ratelimit-store.sh      # ROUNDS (default 3), DURATION (default 6s), CONNECTIONS (64)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v redis-server >/dev/null || { echo "ratelimit-store.sh: needs redis-server" >&2; exit 1; }
bin=${BIN:-target/release/scoregate}
[[ -x $bin ]] || { echo "ratelimit-store.sh: $bin is not an executable (cargo build --release first)" >&2; exit 1; }
rounds=${ROUNDS:-3}
duration=${DURATION:-6s}
connections=${CONNECTIONS:-64}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" >/dev/null
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
store="--store redis://127.0.0.1:$port"
declare -A args=([A]="--rate-limit" [B]="--rate-limit $store" [C]="$store")
run() { # ARGS -> "µs/req p99_ms req/s errors"
    # shellcheck disable=SC2086
    "$bin" bench --mode keepalive --connections "$connections" --gateway-threads 1 --duration "$duration" --quiet --json $1 |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["gateway_cpu_us_per_req"], d["latency_ms"]["p99"], d["rps"], d["errors"]["total"])'
}
results=$(mktemp)
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir" "$results"' EXIT
redis-cli -p "$port" config resetstat >/dev/null
printf '%-6s %-4s %10s %9s %9s %7s\n' round side "µs/req" "p99 ms" "req/s" errors
orders=("A B C" "B C A" "C A B")
for r in $(seq 1 "$rounds"); do
    for side in ${orders[$(( (r - 1) % 3 ))]}; do
        out=$(run "${args[$side]}")
        echo "$r $side $out" >>"$results"
        read -r us p99 rps err <<<"$out"
        printf '%-6s %-4s %10s %9s %9s %7s\n' "$r" "$side" "$us" "$p99" "$rps" "$err"
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, side, us, p99, rps, err in rows:
    by.setdefault(side, []).append((int(r), float(us), float(p99), float(rps), int(float(err))))
names = {"A": "file store + policy (local)", "B": "redis store + policy (script)", "C": "redis store, no policy"}
for side in "ABC":
    v = by[side]
    print(f"{side} {names[side]}: median {statistics.median(x[1] for x in v):.1f} µs/req, "
          f"p99 {statistics.median(x[2] for x in v):.2f} ms, {statistics.median(x[3] for x in v):.0f} req/s, errors {sum(x[4] for x in v)}")
ra = {x[0]: x for x in by["A"]}
rc = {x[0]: x for x in by["C"]}
ba = sorted(x[1] / ra[x[0]][1] for x in by["B"])
bc = sorted(x[1] / rc[x[0]][1] for x in by["B"])
print(f"B/A per round: {' '.join(f'{x:.3f}' for x in ba)} (median {statistics.median(ba):.3f})")
print(f"B/C per round: {' '.join(f'{x:.3f}' for x in bc)} (median {statistics.median(bc):.3f})")
PY
echo "Redis, per script call (INFO commandstats):"
redis-cli -p "$port" info commandstats | grep -E 'cmdstat_(evalsha|eval|script)' | tr -d '\r' || true
echo "keys left in Redis after the runs: $(redis-cli -p "$port" dbsize)"
