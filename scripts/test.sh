#!/usr/bin/env bash
# The whole test suite (CPU; gpu/weights-marked tests are deselected, see pyproject.toml).
# Expected: all pass in under 15 minutes on 2 cores. Zero collected tests is a failure (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=15 "$@"
