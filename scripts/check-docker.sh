#!/usr/bin/env bash
# Checks the Docker kit offline (deploy/docker; no Docker engine needed): compose.yml parses and
# keeps the model private, scoregate.toml reaches the model by its service name, the config is
# mounted where the image's SCOREGATE_CONFIG points, and the image has its HEALTHCHECK
# (deploy/docker/test_compose.py). Needs python3 with PyYAML (Debian: python3-yaml). The
# config itself is parsed by the gateway's own parser in `cargo test --test operator`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! python3 -c 'import yaml' 2>/dev/null; then
    command -v apt-get >/dev/null 2>&1 || { echo "check-docker: PyYAML is missing (pip install PyYAML)" >&2; exit 1; }
    echo "installing python3-yaml" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null
fi
python3 deploy/docker/test_compose.py
