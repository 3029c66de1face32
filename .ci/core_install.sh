#!/usr/bin/env bash
# Install checks in throw-away venvs (the README's "Install and extras"):
#   .ci/core_install.sh core     builds the core wheel (pip wheel --no-deps .), checks it holds no
#                                weights, no harness module and stays under its size limit
#                                (check_core_wheel.py), installs it alone in a fresh venv: only
#                                the core dependencies are pulled, and import mixcache +
#                                apply_mixcache work there (check_core_install.py --alone)
#   .ci/core_install.sh lowest   the lowest diffusers pyproject.toml allows, with the library and
#                                mixcache-lab's dev extra, runs tests/core against it
# PY (default python3) makes the venvs; TORCH_PIN as in the Makefile (CPU wheel first, alone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
LOWEST_DIFFUSERS=${LOWEST_DIFFUSERS:-diffusers==0.41.0}
mode=${1:-core}
scratch=$(mktemp -d)
venv=$scratch/venv
trap 'rm -rf "$scratch"' EXIT
$PY -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "$TORCH_PIN"
case "$mode" in
  core)
    "$venv/bin/pip" wheel -q --no-deps . -w "$scratch/wheel"
    wheel=$(ls "$scratch"/wheel/mixcache-*.whl)
    "$venv/bin/python" .ci/check_core_wheel.py "$wheel"
    "$venv/bin/pip" install -q "$TORCH_PIN" "$wheel"
    "$venv/bin/pip" list
    (cd "$scratch" && "$venv/bin/python" "$OLDPWD/.ci/check_core_install.py" --alone)
    ;;
  lowest)
    "$venv/bin/pip" install -q "$TORCH_PIN" "$LOWEST_DIFFUSERS" . "./lab[dev]"
    "$venv/bin/pip" list | grep -i '^diffusers '
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests/core
    ;;
  *)
    echo "usage: $0 core|lowest" >&2
    exit 2
    ;;
esac
