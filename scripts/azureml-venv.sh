#!/usr/bin/env bash
# azureml-venv.sh - install the Azure ML inference server (azmlinfsrv, PyPI package
# azureml-inference-server-http), `requests` and `httpx[http2]` into a venv for the end-to-end
# tests (tests/azureml.rs; tests/hardening_h2.rs drives httpx over HTTP/2), and print the absolute
# path of the azmlinfsrv executable.
#
#   SCOREGATE_AZMLINFSRV="$(scripts/azureml-venv.sh)" cargo test --test azureml
#
# The venv is ${SCOREGATE_VENV:-<repo>/target/azml-venv}. Idempotent: when the pinned version is
# already installed it only checks and prints (well under a second). Stdout carries the path and
# nothing else; progress goes to stderr.
set -euo pipefail

# The versions the tests were written and measured against.
AZML_VERSION="1.5.1"
HTTPX_VERSION="0.28.1"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCOREGATE_VENV:-$REPO/target/azml-venv}"
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
SRV="$VENV/bin/azmlinfsrv"
PY="$VENV/bin/python"

installed() {
    [[ -x "$SRV" && -x "$PY" ]] || return 1
    # No pip here: `pip show` costs a second; importlib.metadata reads the same record.
    "$PY" - "$AZML_VERSION" "$HTTPX_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("azureml-inference-server-http") == sys.argv[1]
         and version("requests")
         and version("httpx") == sys.argv[2]
         and version("h2") else 1)
EOF
}

if ! installed; then
    if [[ ! -x "$PY" ]]; then
        echo "azureml-venv: creating $VENV" >&2
        python3 -m venv "$VENV" >&2
    fi
    echo "azureml-venv: installing azureml-inference-server-http==$AZML_VERSION, requests and httpx[http2]==$HTTPX_VERSION" >&2
    "$PY" -m pip install -q --disable-pip-version-check \
        "azureml-inference-server-http==$AZML_VERSION" requests "httpx[http2]==$HTTPX_VERSION" >&2
    installed || { echo "azureml-venv: install did not produce $SRV" >&2; exit 1; }
fi
echo "azureml-venv: azureml-inference-server-http $AZML_VERSION, httpx $HTTPX_VERSION in $VENV" >&2
echo "$SRV"
