#!/usr/bin/env bash
# Fresh machine -> .venv with everything installed -> the main job run on the bundled sample photos.
# Expected: ~3 minutes of installs, then "enhance summary ... ok 6, failed 0" and images in demo/out/images.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first, pinned to the build this project is tested with (GPU users may bring their own)
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
# the project, dev extras (pytest, moto server, ncnn reference inference) and the offline weight packages
.venv/bin/pip install -q -e ".[dev]"
# NIQE prior parameters: a data file of the basicsr 1.4.2 sdist (basicsr itself is not installed)
.venv/bin/python -m rasr.niqe_prior

export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
.venv/bin/rasr sample demo
.venv/bin/rasr index demo/gallery --db demo/refs.lance
.venv/bin/rasr enhance demo/archive demo/out --db demo/refs.lance --generator realesrgan
