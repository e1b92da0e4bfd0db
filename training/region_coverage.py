"""How much of the generator's labelled coronary calcium the heart region keeps.

    python training/region_coverage.py [--seeds 900000:900100] [--cache runs/eval/heldout]
        [--bundle PATH] [--out FILE]

For each synthetic study of the seeds (generated into ``--cache`` once, as ``ccdino evaluate
--cache`` does, then reused), the pipeline's stages *orient*, *anatomy* and *candidates* run
on its CT with the bundle's candidate settings, as :func:`..pipeline.run_pipeline` runs
them; each candidate takes the label of the generator's calcium it holds
(:meth:`..pipeline.candidates.Candidates.targets`). A labelled candidate is *left out* when
the heart region does not keep it (:func:`..pipeline.inference.keep_heart_region`: under
half its voxels in the region, or part of a calcified structure leaving it). Printed (and
written to ``--out``): per study with a candidate left out, how many of how many and their
voxels; then the totals. Unlike ``region_coverage`` of ``training/evaluate_broad_plaques.py``
(labelled voxels reaching the networks), calcium the candidates miss (below the threshold or
the minimum area) does not count here: this is the region's cut alone (no network), against
the synthetic anatomy. The region must not cut coronary calcium.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python training/region_coverage.py``
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:  # the library not installed: use the checkout's
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))


def coverage(study, facts) -> dict:
    """{"labelled", "left_out", "voxels", "voxels_left_out"}: the labelled candidates of one
    loaded study and those the heart region leaves out, and their voxels."""
    from CoronaryCalciumDINOLib.pipeline import inference as inf
    from CoronaryCalciumDINOLib.pipeline import preprocess as pp
    from CoronaryCalciumDINOLib.scoring import ScoringParams

    ct = study.ct
    view, _ = inf.orient(ct, np.asarray(ct.hu))
    axes = pp.flip_axes(view.flips)
    labels = np.flip(study.labels, axes) if axes else np.asarray(study.labels)
    anatomy, (z0, z1), cands = inf.locate_and_find(view.hu, ct.spacing, inf.candidate_config(facts, ScoringParams()))
    target = cands.targets(labels[z0:z1]) if len(cands) else np.zeros(0, int)
    kept, _ = inf.keep_heart_region(cands, anatomy, view.hu[z0:z1])
    out = ~np.isin(np.asarray(cands.uid), np.asarray(kept.uid))
    lab = target > 0
    return {"labelled": int(lab.sum()), "left_out": int((lab & out).sum()),
            "voxels": int(cands.voxels[lab].sum()), "voxels_left_out": int(cands.voxels[lab & out].sum())}


def main(argv=None) -> int:
    from CoronaryCalciumDINOLib.data.studies import load_study
    from CoronaryCalciumDINOLib.models.bundle import load_manifest

    from training.evaluate_kernels import held_out_run

    run = held_out_run(argv, "region_coverage", __doc__, "bundle whose candidate settings are used (default: the default bundle)", load_manifest)
    if run is None:
        return 2
    args, seeds, facts, dirs = run
    lines, total, cut = [], {"labelled": 0, "left_out": 0, "voxels": 0, "voxels_left_out": 0}, 0
    for d in dirs:
        c = coverage(load_study(d, with_heart=False), facts)
        total = {k: total[k] + c[k] for k in total}
        if c["left_out"]:
            cut += 1
            lines.append(f"{d.name}: {c['left_out']} of {c['labelled']} labelled candidates left out "
                         f"({c['voxels_left_out']} of {c['voxels']} voxels)")
            print(lines[-1], flush=True)
    lines.append(f"seeds {seeds.start}:{seeds.stop} ({len(dirs)} studies), {facts.name} {facts.version}'s candidate "
                 f"settings: {total['left_out']} of {total['labelled']} labelled candidates left out by the heart "
                 f"region ({total['voxels_left_out']} of {total['voxels']} voxels), in {cut} studies")
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
