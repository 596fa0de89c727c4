#!/usr/bin/env bash
# Refresh requirements.lock: resolve pyproject.toml's dependencies (with the eval and dev extras) in a
# fresh virtualenv, with torch at the build this project is tested with, and freeze the result.
# Run after changing a dependency or to take newer releases, then run scripts/test.sh and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q --upgrade pip
"$TMP/venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
"$TMP/venv/bin/pip" install -q ".[eval,dev]"
{
    echo "# every package scripts/setup.sh installs, at the versions tested together; refresh: scripts/lock.sh"
    "$TMP/venv/bin/pip" freeze --all --exclude-editable | grep -v -E "^(rasr|pip|wheel)[=@ ]"
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
