#!/usr/bin/env bash
# The test command (README, "Quick start"): sets up the Azure ML inference server in a venv for
# the end-to-end test, then runs every test, and ends with one total line (the sum of every test
# binary's `test result:` line, scripts/test-total.awk). The exit status is cargo test's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${SCOREGATE_AZMLINFSRV:-}" ]]; then
    SCOREGATE_AZMLINFSRV="$(scripts/azureml-venv.sh)"
    export SCOREGATE_AZMLINFSRV
fi
echo "azmlinfsrv: $SCOREGATE_AZMLINFSRV" >&2

log="$(mktemp "${TMPDIR:-/tmp}/scoregate-test.XXXXXX")"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "$@" | tee "$log" || status=$?
awk -f scripts/test-total.awk "$log"
exit "$status"
