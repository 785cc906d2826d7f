#!/usr/bin/env bash
# Paired runs of `scoregate bench`: A and B alternate, round after round, so that a noisy machine
# moves both alike; prints each round's gateway CPU µs per request and the ratio B/A, then the
# median ratio over the rounds (the figure BENCHMARKS.md quotes) and the errors of each side.
#
#   bench/paired.sh "ARGS A" "ARGS B"            # same binary, two sets of bench arguments
#   BIN_A=old/scoregate BIN_B=new/scoregate bench/paired.sh "" ""   # two binaries, same arguments
#
# Environment: ROUNDS (default 5), DURATION (default 6s: give the run's length here, not as
# --duration), BIN_A / BIN_B (default target/release/scoregate). Every run uses --gateway-threads 1
# unless the arguments give their own, and bench's default mode, keepalive, unless they give
# --mode (clap refuses a flag given twice).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -eq 2 ]] || { sed -n '2,12p' "$0"; exit 2; }
rounds=${ROUNDS:-5}
duration=${DURATION:-6s}
bin_a=${BIN_A:-target/release/scoregate}
bin_b=${BIN_B:-target/release/scoregate}
for b in "$bin_a" "$bin_b"; do
    [[ -x $b ]] || { echo "paired.sh: $b is not an executable (cargo build --release first)" >&2; exit 1; }
done
results=$(mktemp)
trap 'rm -f "$results"' EXIT
run() { # BIN ARGS -> "µs/req req/s errors"
    local threads=(--gateway-threads 1)
    [[ " $2" =~ \ --gateway-threads[=\ ] ]] && threads=()
    # shellcheck disable=SC2086
    "$1" bench "${threads[@]}" --duration "$duration" --quiet --json $2 |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["gateway_cpu_us_per_req"], d["rps"], d["errors"]["total"])'
}
printf '%-6s %12s %12s %8s\n' round "A µs/req" "B µs/req" "B/A"
for r in $(seq 1 "$rounds"); do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    if (( r % 2 )); then a=$(run "$bin_a" "$1"); b=$(run "$bin_b" "$2"); else b=$(run "$bin_b" "$2"); a=$(run "$bin_a" "$1"); fi
    echo "$a $b" >>"$results"
    read -r ua _ _ ub _ _ <<<"$a $b"
    printf '%-6s %12s %12s %8.3f\n' "$r" "$ua" "$ub" "$(python3 -c "print($ub/$ua)")"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
ratios = sorted(r[3] / r[0] for r in rows)
print(f"median B/A {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}) over {len(rows)} rounds;"
      f" A {statistics.median(r[0] for r in rows):.1f} µs/req, B {statistics.median(r[3] for r in rows):.1f} µs/req (medians);"
      f" errors A {int(sum(r[2] for r in rows))}, B {int(sum(r[5] for r in rows))}")
PY
