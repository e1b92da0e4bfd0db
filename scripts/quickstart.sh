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
lesions = r["lesions"]
phantom = r["model"].get("taken_for_phantom", False)
insert = [les for les in lesions if 21 <= les["slice"] <= 23]
other = [les for les in lesions if not 21 <= les["slice"] <= 23]
print()
print("What this scan is: a QRM thorax phantom, not a patient. It has no coronary arteries; its")
print("calcium-like objects are the insert's hydroxyapatite cylinders (slices 21-23), a calibration rod")
print("and its bone-equivalent spine and ribs.")
if phantom:
    print("The model saw that too (its slices hold almost no fat) and used its phantom detector, trained on")
    print("synthetic phantoms; the artery names are a convention (patient right RCA, left anterior LAD, left")
    print("posterior LCX). Read the total.")
print(f"What the model found: {len(lesions)} lesion(s), total Agatston {r['total']['agatston']:.0f}; slices selected: "
      f"{sel if sel else 'none'}.")
if insert:
    print(f"  {len(insert)} on slices 21-23: the insert's cylinders ({sum(les['agatston'] for les in insert):.0f} points; "
          "the same scan with the insert labelled by hand scores 960).")
if other:
    big = max(les["area_mm2"] for les in other)
    print(f"  {len(other)} elsewhere (slices {sorted({les['slice'] for les in other})}, at most {big:.1f} mm^2, "
          f"{sum(les['agatston'] for les in other):.0f} points): "
          + ("most likely specks of image noise (the insert holds no calcification there)." if big < 5
             else "look at them in the label map."))
print("To score your own labels instead: ccdino score CT --labels LABELS (see README).")
EOF
