#!/usr/bin/env bash
# Checks the Kubernetes manifests offline (deploy/kubernetes): renders the base and the Redis
# overlay with `kubectl kustomize`, validates them with `kubernetes-validate --strict` and
# asserts their invariants (deploy/kubernetes/test_manifests.py; extra arguments go to it).
# Works on a fresh Debian machine with kubectl and python3: the first run makes a venv with
# kubernetes-validate and PyYAML (about 100 MB, from PyPI) under
# ${XDG_CACHE_HOME:-$HOME/.cache}/scoregate-k8s-venv; later runs reuse it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "check-kubernetes: $*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and there is no apt-get to install it"
    echo "installing $1" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

command -v kubectl >/dev/null 2>&1 \
    || die "kubectl is needed (it renders with its built-in kustomize, offline; https://kubernetes.io/docs/tasks/tools/)"
command -v python3 >/dev/null 2>&1 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

# Pinned, so that a run today and a run next year check against the same schemas.
REQUIREMENTS='kubernetes-validate==1.37.0
PyYAML==6.0.4
tomli==2.2.1; python_version < "3.11"'
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/scoregate-k8s-venv"
STAMP="$VENV/requirements.txt"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null \
    || [[ "$(cat "$STAMP" 2>/dev/null)" != "$REQUIREMENTS" ]]; then
    echo "check-kubernetes: making the venv $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv --clear "$VENV"
    printf '%s\n' "$REQUIREMENTS" > "$VENV/requirements.in"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/requirements.in"
    printf '%s' "$REQUIREMENTS" > "$STAMP"   # written last: an interrupted install is redone
fi

"$VENV/bin/python" deploy/kubernetes/test_manifests.py "$@"
