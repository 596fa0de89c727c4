#!/usr/bin/env bash
# Fresh machine -> .venv with everything installed -> the main job run on the bundled sample photos.
# Expected: ~5 minutes of installs, then "enhance summary ... ok 6, failed 0" and images in demo/out/images.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# pip's output goes to a log that is shown only when a step fails (it is otherwise build-backend and
# index-configuration chatter)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
step() { echo "setup: $1"; shift; "$@" >"$LOG" 2>&1 || { cat "$LOG" >&2; echo "setup: failed: $*" >&2; exit 1; }; }

[ -x .venv/bin/python ] || step "creating .venv" "$PY" -m venv .venv
step "upgrading pip" .venv/bin/pip install -q --upgrade pip
# every dependency at the version tested together (torch 2.14.1 included; GPU users may install their
# own torch build afterwards); refresh the lock with scripts/lock.sh
step "installing requirements.lock (a few minutes)" .venv/bin/pip install -q -r requirements.lock
# the project itself (editable) with its eval and dev extras, all satisfied by the lock
step "installing rasr (editable)" .venv/bin/pip install -q --no-deps --no-build-isolation -e .

# Debian packages the tests use, installed where this user can (root, or sudo without a password); else a
# note with the command. $1: the packages; $2: what goes without them.
apt_install() {
    local install="apt-get install -y $1"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive $install -qq) >/dev/null 2>&1 \
            || echo "note: \`$install\` failed; $2" >&2
    elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $install -qq) >/dev/null 2>&1 \
            || echo "note: \`sudo $install\` failed; $2" >&2
    else
        echo "note: $2. Install with: sudo $install" >&2
    fi
}

# headless Chromium renders the HTML reports in the tests (tests/research/test_evaluate.py, tests/results/test_run_report.py)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    apt_install chromium "the report rendering tests will be skipped"
fi
# ICC profiles the colour tests convert real photos into (tests/icc_profiles.py): Adobe RGB and ProPhoto from
# colord-data, a grey gamma and a CMYK profile from Ghostscript's libgs-common
if [ ! -f /usr/share/color/icc/colord/AdobeRGB1998.icc ] || [ ! -f /usr/share/color/icc/ghostscript/default_cmyk.icc ]; then
    apt_install "colord-data libgs-common" "the colour tests fail until the ICC profiles are installed"
fi

export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
.venv/bin/rasr sample demo
.venv/bin/rasr index demo/gallery --db demo/refs.lance
.venv/bin/rasr enhance demo/archive demo/out --db demo/refs.lance --generator realesrgan
