"""How the naming rule names the generator's own calcium (no network involved).

    python training/naming_on_synthetic.py [--seeds 100:130] [--heights]

For each synthetic study of the seeds (``synth.generator.render_study``) that has calcium:
the anatomy step on its CT (``pipeline.anatomy.find_anatomy``), then the naming rule round
the aorta it finds (``pipeline.naming.name_by_aorta``) applied to the study's *true*
calcium labels. Prints the confusion of true against named artery (voxels), the share of
each artery's voxels that keeps its name, and the studies where no aorta was found. What
it measures is the rule and the aorta finder alone, against the synthetic coronary tree.

``--heights`` prints instead how high the LAD and LCX centrelines of the generator's tree
rise above the left coronary ostium (no image is rendered).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CoronaryCalciumDINO"))

from CoronaryCalciumDINOLib.constants import ARTERIES  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.anatomy import find_anatomy  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.naming import name_by_aorta  # noqa: E402
from CoronaryCalciumDINOLib.synth.generator import render_study  # noqa: E402


def confusion(seeds) -> tuple[np.ndarray, list[int]]:
    """(5, 5) voxel counts [true label, named label] over ``seeds``, and the seeds with
    calcium but no aorta found."""
    conf = np.zeros((5, 5), np.int64)
    missed = []
    for seed in seeds:
        st = render_study(seed).study
        lab = np.asarray(st.labels)
        if not lab.any():
            continue
        an = find_anatomy(np.asarray(st.ct.hu, np.float32), st.ct.spacing)
        if an.aorta_axis is None:
            missed.append(seed)
            continue
        root = None if an.heart_levels is None else an.heart_levels[1]
        named = name_by_aorta(lab, an.aorta_axis, an.aorta_radius_mm, root, st.ct.spacing)
        m = lab > 0
        np.add.at(conf, (lab[m].astype(np.int64), named[m].astype(np.int64)), 1)
    return conf, missed


def heights(seeds) -> dict[str, np.ndarray]:
    """Per seed, the highest point of the LAD and of the LCX centreline above the left
    coronary ostium (mm; the generator's z points to the head)."""
    from CoronaryCalciumDINOLib.synth import anatomy, coronaries, generator

    out: dict[str, list[float]] = {"LAD": [], "LCX": []}
    for seed in seeds:
        streams = generator._streams(seed, 9)  # the anatomy's and the tree's own streams, as render_study draws them
        tree = coronaries.build_coronaries(anatomy.sample_anatomy(streams[1]), streams[2])
        ostium = tree["LM"].points[0, 2]
        for a in out:
            out[a].append(float(tree[a].points[:, 2].max() - ostium))
    return {a: np.asarray(v) for a, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="100:130", help="START:END (default 100:130)")
    ap.add_argument("--heights", action="store_true", help="how high the LAD and LCX rise above the left ostium")
    args = ap.parse_args(argv)
    start, end = (int(v) for v in args.seeds.split(":"))
    if args.heights:
        for a, h in heights(range(start, end)).items():
            print(f"{a} highest point above the left ostium (mm): median {np.median(h):.1f}, "
                  f"90th percentile {np.percentile(h, 90):.1f}, max {h.max():.1f} ({h.size} trees)")
        return 0
    conf, missed = confusion(range(start, end))
    print("true \\ named (voxels): " + " ".join(f"{a:>7}" for a in ARTERIES))
    for i, a in enumerate(ARTERIES, start=1):
        print(f"{a:>21}: " + " ".join(f"{v:7d}" for v in conf[i, 1:]))
    kept = np.diag(conf)[1:] / np.maximum(conf[1:].sum(axis=1), 1)
    print("named right: " + ", ".join(f"{a} {100 * k:.0f} %" for a, k in zip(ARTERIES, kept)))
    print(f"no aorta found: {missed if missed else 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
