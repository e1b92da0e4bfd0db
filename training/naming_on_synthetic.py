"""How the naming rule names the generator's own calcium (no network involved).

    python training/naming_on_synthetic.py [--seeds 100:130] [--root-zone | --heights | --lcx-deg-below DEG]

For each synthetic study of the seeds (``synth.generator.render_study``) that has calcium:
the anatomy step on its CT (``pipeline.anatomy.find_anatomy``), then the naming rule round
the aorta it finds (``pipeline.naming.name_by_aorta``) applied to the study's *true*
calcium labels. Prints the confusion of true against named artery (voxels), the share of
each artery's voxels that keeps its name, and the studies where no aorta was found. What
it measures is the rule and the aorta finder alone, against the synthetic coronary tree.

``--root-zone`` prints instead how the side rule of the root's zone
(``pipeline.naming.root_zone``: near the aortic root the side of the tree is the aorta's)
sides the true calcium: the lesions and voxels in the zone and those it gives the wrong
side (left tree or RCA), with the module's settings and with two others (reaching 15 mm
below the top heart level; without the two sectors).

``--lcx-deg-below DEG`` prints the confusion with the LAD / LCX boundary below the root's
levels (``pipeline.naming.LCX_DEG_BELOW``) set to DEG degrees behind the patient's left.

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
from CoronaryCalciumDINOLib.pipeline.naming import LCX_DEG_BELOW, ROOT_ZONE_BELOW_MM, name_by_aorta, root_zone  # noqa: E402
from CoronaryCalciumDINOLib.synth.generator import render_study  # noqa: E402


def studies_with_calcium(seeds):
    """Per seed whose study has calcium: (seed, true labels, spacing, the anatomy step's
    findings on its CT, the top heart level or None)."""
    for seed in seeds:
        st = render_study(seed).study
        lab = np.asarray(st.labels)
        if not lab.any():
            continue
        an = find_anatomy(np.asarray(st.ct.hu, np.float32), st.ct.spacing)
        yield seed, lab, st.ct.spacing, an, (None if an.heart_levels is None else an.heart_levels[1])


def confusion(seeds, lcx_deg_below: float | None = None) -> tuple[np.ndarray, list[int]]:
    """(5, 5) voxel counts [true label, named label] over ``seeds`` (``lcx_deg_below``: as
    :func:`name_by_aorta`; None: the module's), and the seeds with calcium but no aorta
    found."""
    conf = np.zeros((5, 5), np.int64)
    missed = []
    for seed, lab, spacing, an, root in studies_with_calcium(seeds):
        if an.aorta_axis is None:
            missed.append(seed)
            continue
        named = name_by_aorta(lab, an.aorta_axis, an.aorta_radius_mm, root, spacing, lcx_deg_below=lcx_deg_below)
        m = lab > 0
        np.add.at(conf, (lab[m].astype(np.int64), named[m].astype(np.int64)), 1)
    return conf, missed


#: the zone settings measured by --root-zone: (label, keyword arguments of root_zone)
ZONE_SETTINGS = (
    (f"as used ({ROOT_ZONE_BELOW_MM:g} mm below the top heart level, left / right sectors)", {}),
    ("15 mm below the top heart level", {"below_mm": 15.0}),
    ("without the sectors", {"sectors": False}),
)


def root_zone_sides(seeds) -> tuple[list[dict], int]:
    """Per setting of :data:`ZONE_SETTINGS`: {"lesions", "voxels", "wrong_lesions",
    "wrong_voxels", "wrong_seeds"} over ``seeds`` (a lesion is wrong when the rule's side,
    its centroid's side of the aorta's centre, is not that of most of its true voxels; a
    voxel when its true side is not the rule's), and the number of studies measured (with
    calcium and an aorta found)."""
    from scipy import ndimage

    from CoronaryCalciumDINOLib.scoring.agatston import _INPLANE_8

    out = [{"lesions": 0, "voxels": 0, "wrong_lesions": 0, "wrong_voxels": 0, "wrong_seeds": []} for _ in ZONE_SETTINGS]
    studies = 0
    for seed, lab, spacing, an, root in studies_with_calcium(seeds):
        if an.aorta_axis is None:
            continue
        studies += 1
        rule_rca = name_by_aorta(lab, an.aorta_axis, an.aorta_radius_mm, root, spacing) == 4
        comp, _ = ndimage.label(lab > 0, structure=_INPLANE_8)
        for res, (_, kw) in zip(out, ZONE_SETTINGS):
            zone = root_zone(lab, an.aorta_axis, an.aorta_radius_mm, root, spacing, **kw)
            if not zone.any():
                continue
            c = comp[zone]
            wrong = rule_rca[zone] != (lab[zone] == 4)
            ids = np.unique(c)
            bad = [i for i in ids if 2 * wrong[c == i].sum() > (c == i).sum()]
            res["lesions"] += ids.size
            res["voxels"] += int(zone.sum())
            res["wrong_lesions"] += len(bad)
            res["wrong_voxels"] += int(wrong.sum())
            if wrong.any():
                res["wrong_seeds"].append(seed)
    return out, studies


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
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--root-zone", action="store_true", help="the sides the root's zone rule gives the true calcium")
    what.add_argument("--heights", action="store_true", help="how high the LAD and LCX rise above the left ostium")
    ap.add_argument("--lcx-deg-below", type=float, default=None, metavar="DEG",
                    help="the confusion with the LAD / LCX boundary below the root's levels DEG degrees behind the "
                         f"patient's left (default: the module's, {LCX_DEG_BELOW:g})")
    args = ap.parse_args(argv)
    if args.lcx_deg_below is not None and (args.root_zone or args.heights):
        ap.error("--lcx-deg-below goes with the confusion (no --root-zone, no --heights)")
    start, end = (int(v) for v in args.seeds.split(":"))
    if args.heights:
        for a, h in heights(range(start, end)).items():
            print(f"{a} highest point above the left ostium (mm): median {np.median(h):.1f}, "
                  f"90th percentile {np.percentile(h, 90):.1f}, max {h.max():.1f} ({h.size} trees)")
        return 0
    if args.root_zone:
        res, studies = root_zone_sides(range(start, end))
        print(f"command: python training/naming_on_synthetic.py --root-zone --seeds {start}:{end}")
        print(f"{studies} studies with calcium and an aorta found")
        for (label, _), r in zip(ZONE_SETTINGS, res):
            print(f"{label}: {r['lesions']} lesions ({r['voxels']} voxels) in the zone; wrong side: "
                  f"{r['wrong_lesions']} lesions, {r['wrong_voxels']} voxels, seeds {r['wrong_seeds'] or 'none'}")
        return 0
    below = LCX_DEG_BELOW if args.lcx_deg_below is None else args.lcx_deg_below
    conf, missed = confusion(range(start, end), below)
    print(f"LAD / LCX boundary below the root's levels: {below:g} degrees behind the patient's left")
    print("true \\ named (voxels): " + " ".join(f"{a:>7}" for a in ARTERIES))
    for i, a in enumerate(ARTERIES, start=1):
        print(f"{a:>21}: " + " ".join(f"{v:7d}" for v in conf[i, 1:]))
    kept = np.diag(conf)[1:] / np.maximum(conf[1:].sum(axis=1), 1)
    print("named right: " + ", ".join(f"{a} {100 * k:.0f} %" for a, k in zip(ARTERIES, kept)))
    print(f"no aorta found: {missed if missed else 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
