"""Click-to-assign and review-flag times on a synthetic 512 x 512 patient (slicer-core scene).

    python benchmarks/bench_assign.py [--seed 11] [--clicks 5] [--repeat 3]

The study's own labels are the result (written as the module writes a Compute); then, best
of ``--repeat`` where it repeats:

* candidates: :func:`pipeline.candidate_area.candidate_mask` (anatomy + candidate search +
  heart region, no torch), what the first click or *Show candidates* computes once per CT;
* first click: one assignment including the candidates;
* click: one more assignment (candidates cached): find the region, write, rescore;
* undo: taking one back;
* show candidates: writing the candidates segmentation;
* review flags: :func:`report.flags.review_flags` of the study (heart field, no pipeline
  region), what ``ccdino score --labels`` adds.

Prints the figures; no timed assertion.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from CoronaryCalciumDINOLib.constants import ARTERIES
from CoronaryCalciumDINOLib.pipeline.candidate_area import candidate_mask
from CoronaryCalciumDINOLib.report import build_report
from CoronaryCalciumDINOLib.report.flags import review_flags
from CoronaryCalciumDINOLib.scene import assign as assign_glue
from CoronaryCalciumDINOLib.scene import logic as scene_logic
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, node_ijk_to_ras
from CoronaryCalciumDINOLib.scoring import ScoringParams, score
from CoronaryCalciumDINOLib.synth.generator import generate_study


class Result:
    def __init__(self, ct, labels):
        self.labels = labels
        self.score = score(ct.hu, labels, ct.spacing)
        self.slice_probabilities = None
        self.attention = None


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    st = generate_study(args.seed, matrix=512, plaques=True)
    ct = st.ct
    ct.hu = np.rint(ct.hu).astype(np.float32)  # integer HU, stored as int16 as Slicer stores DICOM CT
    labels = np.where(ct.hu >= 130, st.labels, 0).astype(np.uint8)
    print(f"study: seed {args.seed}, {ct.shape[0]} x {ct.shape[1]} x {ct.shape[2]} voxels, "
          f"{len(score(ct.hu, labels, ct.spacing).lesions)} lesions")

    t_cands, mask = best(lambda: candidate_mask(ct, ScoringParams()), args.repeat)
    print(f"candidates: {mask.count} regions, heart region used: {mask.heart_region_used}")

    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    seg = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels)).segmentation_node
    session = scene_logic.ResultSession(core.scene, volume, seg, ScoringParams())
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)

    # one voxel of each lesion; every click gives its lesion to the next artery (always a change)
    scored = score(ct.hu, labels, ct.spacing, keep_lesion_voxels=True)
    voxels = [np.unravel_index(int(v[len(v) // 2]), ct.shape) for v in scored.lesion_voxels]
    current = [les.artery for les in scored.lesions]
    ijk_to_ras = node_ijk_to_ras(volume)

    def click(n):
        i = n % len(voxels)
        z, y, x = voxels[i]
        ras = (ijk_to_ras @ np.array([x, y, z, 1.0]))[:3]
        current[i] = ARTERIES[(ARTERIES.index(current[i]) + 1) % 4]
        out = assigner.assign(ras, current[i])
        assert out.changed, out.message
        return out

    t = time.perf_counter()
    click(0)
    t_first = time.perf_counter() - t
    clicks = []
    for n in range(1, args.clicks + 1):
        t = time.perf_counter()
        click(n)
        clicks.append(time.perf_counter() - t)
    undos = []
    while assigner.can_undo:
        t = time.perf_counter()
        assert assigner.undo().changed
        undos.append(time.perf_counter() - t)
    t_show, _ = best(lambda: assign_glue.show_candidates(core.scene, seg, volume, assigner.candidates()), 1)
    report = build_report(score(ct.hu, labels, ct.spacing), "x")
    t_flags, flags = best(lambda: review_flags(ct, report), args.repeat)
    session.close()

    print(f"candidates (anatomy + search + heart region): {t_cands:.2f} s (best of {args.repeat})")
    print(f"first click (with the candidates):            {t_first:.2f} s")
    print(f"click, candidates cached:                      {min(clicks):.3f} s best, {np.median(clicks):.3f} s median "
          f"of {len(clicks)}")
    print(f"undo:                                          {min(undos):.3f} s best, {np.median(undos):.3f} s median "
          f"of {len(undos)}")
    print(f"show candidates (write the segmentation):      {t_show:.2f} s")
    print(f"review flags:                                  {t_flags:.2f} s (best of {args.repeat}); "
          f"flags: {[f['flag'] for f in flags]}")


if __name__ == "__main__":
    main()
