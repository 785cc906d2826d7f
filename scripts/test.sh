#!/usr/bin/env bash
# The test command (README, "Quick start"): sets up the Azure ML inference server in a venv for
# the end-to-end test, then runs every test. Works on a fresh machine with Rust and Python 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${SCOREGATE_AZMLINFSRV:-}" ]]; then
    SCOREGATE_AZMLINFSRV="$(scripts/azureml-venv.sh)"
    export SCOREGATE_AZMLINFSRV
fi
echo "azmlinfsrv: $SCOREGATE_AZMLINFSRV" >&2

cargo test --locked "$@"
