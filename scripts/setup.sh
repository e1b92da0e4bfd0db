#!/usr/bin/env bash
# Create .venv (if missing) and install CoronaryCalciumDINO into it with the extras named in
# CCDINO_EXTRAS (default "test": the AI, PyTorch included, and the test tools; the quick start
# uses "ai"). Without extras ("pip install ." ) the scoring, I/O and report path installs
# without PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON_BIN" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[${CCDINO_EXTRAS:-test}]"
