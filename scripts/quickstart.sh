#!/usr/bin/env bash
# Set up the environment, then score the bundled sample CT (a real phantom scan, DICOM)
# with the bundled default model. Outputs go to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out/quickstart
ccdino score Testing/Data/qrm-phantom-canon --out out/quickstart \
    --attention out/quickstart/qrm-phantom-canon.attention.nrrd
echo "Outputs (report JSON, score CSV, label map, Slicer segmentation, attention): out/quickstart/"
