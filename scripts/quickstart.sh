#!/usr/bin/env bash
# Set up the environment, then score the bundled sample CT (a real phantom scan, DICOM)
# with the bundled default model. Outputs go to out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
CCDINO_EXTRAS=ai bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out/quickstart
ccdino score Testing/Data/qrm-phantom-canon --out out/quickstart --overwrite \
    --attention out/quickstart/qrm-phantom-canon.attention.nrrd
echo "Outputs (report JSON, score CSV, label map, Slicer segmentation, attention): out/quickstart/"
python - <<'EOF'
import json
r = json.load(open("out/quickstart/qrm-phantom-canon.json"))
sel = [s["index"] for s in r["slices"] if s["selected"]]
n = len(r["lesions"])
print()
print("What this scan is: a QRM thorax phantom, not a patient. It has no coronary arteries; its only")
print("calcium-like objects are the insert's hydroxyapatite cylinders (slices 20-23) and its bone-equivalent")
print("spine, ribs and sternum.")
if n == 0:
    print("What the model found: no coronary calcium (total Agatston 0). It labels no bone, and it does not")
    print("take the insert's cylinders for coronary calcium either: it was trained on synthetic patients,")
    print("where coronary calcium sits in epicardial fat on the heart; cylinders in a water-equivalent")
    print("plastic insert look like nothing it was trained on.")
else:
    print(f"What the model found: {n} lesion(s) on slices {sorted({l['slice'] for l in r['lesions']})}: these")
    print("are the insert's hydroxyapatite cylinders, which the model takes for coronary calcium; the artery")
    print("names are its guesses (a phantom has no arteries).")
print(f"Slices the detector selected: {sel if sel else 'none'}"
      + (" (the segmenter found no calcium there)." if sel and n == 0 else "."))
print("To score the insert itself, give a label map: ccdino score CT --labels LABELS (see README).")
EOF
