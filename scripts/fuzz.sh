#!/usr/bin/env bash
# Fuzzing (README, "Fuzzing"): runs every cargo-fuzz target in fuzz/ for SECONDS each (default
# 30), one after another, one worker, at the lowest CPU priority. Each run starts from a copy of
# the committed corpus (fuzz/corpus/<target>/ is never modified). Prints execs/s and corpus size
# per target; exits non-zero if any target crashed, failed an assertion or hung (the input is
# left in fuzz/artifacts/<target>/). Needs the nightly toolchain; installs cargo-fuzz if missing.
#
#   ./scripts/fuzz.sh          # 30 s per target
#   ./scripts/fuzz.sh 600      # 10 min per target
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
secs="${1:-30}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

# No sanitizer: scoregate forbids unsafe code, and without ASan a run does about twice the
# executions. Debug assertions and overflow checks on: an overflow is a finding.
build=(--sanitizer none --debug-assertions)
nice -n 19 cargo +nightly fuzz build "${build[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
printf '%-18s %7s %12s %9s %7s  %s\n' target seconds execs execs/s corpus result
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/$target"
    if [[ -d "corpus/$target" ]]; then cp -r "corpus/$target/." "$work/$target/"; fi
    log="$work/$target.log"
    result=ok
    nice -n 19 cargo +nightly fuzz run "${build[@]}" "$target" "$work/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || result=FAILED
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    corpus="$(find "$work/$target" -type f | wc -l)"
    printf '%-18s %7s %12s %9s %7s  %s\n' "$target" "$secs" "${execs:--}" "${rate:--}" "$corpus" "$result"
    if [[ "$result" != ok ]]; then
        failed+=("$target")
        grep -E -A40 '^==[0-9]+==|panicked at|^SUMMARY|Test unit written' "$log" | head -80 >&2 || tail -40 "$log" >&2
    fi
done
if ((${#failed[@]})); then
    echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all targets ran ${secs}s without a crash"
