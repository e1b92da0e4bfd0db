#!/usr/bin/env bash
# Set up the environment if needed, lint (ruff: syntax and annotations that must hold on
# Python 3.9, the Python of Slicer 5.8), then run the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m ruff check --no-cache .
python -m pytest "$@"
