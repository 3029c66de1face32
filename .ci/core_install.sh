#!/usr/bin/env bash
# Install checks in throw-away venvs (the README's "Install and extras"):
#   .ci/core_install.sh core     pip install . (no extras): only the core dependencies are pulled,
#                                and import mixcache + apply_mixcache work (check_core_install.py)
#   .ci/core_install.sh lowest   the lowest diffusers pyproject.toml allows, with the dev extras,
#                                runs tests/core against it
# PY (default python3) makes the venvs; TORCH_PIN as in the Makefile (CPU wheel first, alone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
LOWEST_DIFFUSERS=${LOWEST_DIFFUSERS:-diffusers==0.41.0}
mode=${1:-core}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
$PY -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "$TORCH_PIN"
case "$mode" in
  core)
    "$venv/bin/pip" install -q "$TORCH_PIN" .
    "$venv/bin/pip" list
    (cd "$(dirname "$venv")" && "$venv/bin/python" "$OLDPWD/.ci/check_core_install.py" \
      --console-script "$venv/bin/mixcache")
    ;;
  lowest)
    "$venv/bin/pip" install -q "$TORCH_PIN" "$LOWEST_DIFFUSERS" ".[dev]"
    "$venv/bin/pip" list | grep -i '^diffusers '
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests/core
    ;;
  *)
    echo "usage: $0 core|lowest" >&2
    exit 2
    ;;
esac
