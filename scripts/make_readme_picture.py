"""Regenerate the README's example report picture and print the numbers the README quotes.

    python scripts/make_readme_picture.py [--bundle PATH] [--seed 900002] [--out docs/images/batch-report-example.png]

It generates the held-out synthetic study ``synth-<seed>`` (seeded, so always the same
study), scores it with the batch runner (the same code as ``ccdino batch``, on the CPU,
one thread) with the given model bundle (default: the bundled default model), copies the
study's report picture to ``--out`` and prints, next to the study's reference scores, what
the model gives: per artery and in total, risk category and CAC-DRS, and every lesion the
model adds (no reference label there; whether it lies in the heart) or misses. The same
bundle gives the same picture and numbers on every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CoronaryCalciumDINO"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="model bundle (default: the bundled default model)")
    ap.add_argument("--seed", type=int, default=900002, help="held-out synthetic seed (default 900002)")
    ap.add_argument("--out", default=str(ROOT / "docs/images/batch-report-example.png"), help="picture file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from CoronaryCalciumDINOLib.batch import process_study
    from CoronaryCalciumDINOLib.constants import ARTERIES
    from CoronaryCalciumDINOLib.data.studies import list_study_inputs, load_study, read_study_meta
    from CoronaryCalciumDINOLib.io.segfile import read_seg_labels
    from CoronaryCalciumDINOLib.pipeline import load_bundle
    from CoronaryCalciumDINOLib.report.picture import scored_lesions
    from CoronaryCalciumDINOLib.synth.generator import write_studies

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ccdino-readme-") as tmp:
        tmp = Path(tmp)
        write_studies([args.seed], tmp / "synth")
        (study,) = list_study_inputs(tmp / "synth")
        bundle = load_bundle(args.bundle)
        row = process_study(study, tmp / "report", bundle=bundle, device="cpu")
        if row["status"] != "ok":
            print(f"scoring failed: {row['error']}", file=sys.stderr)
            return 1
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp / "report" / f"{study.name}.png", out)

        import json

        model = json.loads((tmp / "report" / f"{study.name}.json").read_text())
        ref = read_study_meta(tmp / "synth" / study.name)["scores"]
        truth = load_study(tmp / "synth" / study.name)
        ct = truth.ct
        labels = read_seg_labels(tmp / "report" / f"{study.name}.seg.nrrd", ct)
        lesions = scored_lesions(ct, labels, model)
        ref_lesions = scored_lesions(ct, truth.labels, ref)

    info = model.get("model", {})
    print(f"study {study.name}; model {info.get('name')} {info.get('version')} (sha256 {str(info.get('sha256'))[:12]})")
    print(f"{'':8}{'reference':>10}{'model':>10}")
    for a in ARTERIES:
        print(f"{a:8}{ref['arteries'][a]['agatston']:>10.1f}{model['arteries'][a]['agatston']:>10.1f}")
    print(f"{'total':8}{ref['total']['agatston']:>10.1f}{model['total']['agatston']:>10.1f}")
    print(f"risk category: reference {ref['risk_category']}, model {model['risk_category']}")
    print(f"CAC-DRS: reference {ref['cac_drs']}, model {model['cac_drs']}")
    print(f"lesions: reference {ref['total']['lesions']}, model {model['total']['lesions']}")

    def overlaps(les, others) -> bool:
        mine = set(zip(les["rows"].tolist(), les["cols"].tolist()))
        return any(o["slice"] == les["slice"] and mine & set(zip(o["rows"].tolist(), o["cols"].tolist()))
                   for o in others)

    heart = truth.heart
    added = [les for les in lesions if not overlaps(les, ref_lesions)]
    missed = [les for les in ref_lesions if not overlaps(les, lesions)]
    print(f"model lesions with no reference calcium there: {len(added)}")
    for les in added:
        inside = heart is not None and bool(np.any(heart[les["slice"], les["rows"], les["cols"]]))
        print(f"  #{les['number']} {les['artery']} slice {les['slice']}: {les['area_mm2']:.1f} mm2, "
              f"Agatston {les['agatston']:.1f}, {'inside' if inside else 'outside'} the heart mask")
    print(f"reference lesions the model misses: {len(missed)}")
    for les in missed:
        print(f"  {les['artery']} slice {les['slice']}: {les['area_mm2']:.1f} mm2, Agatston {les['agatston']:.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
