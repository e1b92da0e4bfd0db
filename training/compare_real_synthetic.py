"""Synthetic studies side by side with real scans: bone HU, candidates per slice by kind, noise.

    python training/compare_real_synthetic.py [--dev real-dev/coca-nongated] [--seeds 900000:900010]

For each scan, on the slices a cardiac scan would hold (the pipeline's anatomy step,
:func:`CoronaryCalciumDINOLib.pipeline.inference.locate`):

- bone: the sternum's and the vertebral bodies' HU (the 99th percentile: cortex, and the
  median: marrow, of the voxels >= 150 HU in the bone the anatomy step found in the front
  and back thirds of the image);
- candidates per slice (regions >= 130 HU of >= 1 mm^2 in the heart field): all of them,
  those on bone or outside the heart region (never shown to the networks), and those left;
- noise: the median over slices of the image noise SD (:func:`..candidates.slice_noise`).

Prints a markdown table (numbers only: no pixels of the real scans are written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

import numpy as np  # noqa: E402

from CoronaryCalciumDINOLib.pipeline import candidates as cd  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.inference import keep_heart_region, locate, orient  # noqa: E402


def figures(ct) -> dict:
    view, _ = orient(ct, np.asarray(ct.hu))
    anatomy, (z0, z1) = locate(view.hu, ct.spacing)
    hu = view.hu[z0:z1]
    fy, fx = anatomy.factor
    bone = np.repeat(np.repeat(anatomy.bone, fy, axis=1), fx, axis=2)[:, : hu.shape[1], : hu.shape[2]]
    dense = bone & (hu >= 150.0)
    third = hu.shape[1] // 3
    out = {"slices": f"{z0}-{z1 - 1} of {ct.shape[0]}", "dz": float(ct.spacing[0]), "pixel": float(ct.spacing[1])}
    for name, rows in (("sternum", slice(0, third)), ("spine", slice(2 * third, None))):
        v = hu[:, rows][dense[:, rows]]
        out[name] = (float(np.percentile(v, 99)), float(np.median(v))) if v.size > 100 else None
    c = cd.find_candidates(hu, ct.spacing)
    kept, outside = keep_heart_region(c, anatomy)
    n = max(hu.shape[0], 1)
    out["candidates"] = (len(c) / n, outside / n, len(kept) / n)
    f = cd.extract_field(hu, c.field)
    out["noise"] = float(np.median(cd.slice_noise(f, ct.spacing[1:])))
    return out


def row(name: str, f: dict) -> str:
    b = lambda t: "-" if t is None else f"{t[0]:.0f} / {t[1]:.0f}"  # noqa: E731
    a, o, k = f["candidates"]
    return (f"| {name} | {f['dz']:g} / {f['pixel']:.2f} | {f['slices']} | {b(f['sternum'])} | {b(f['spine'])} | "
            f"{a:.1f} | {o:.1f} | {k:.1f} | {f['noise']:.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", type=Path, default=REPO / "real-dev" / "coca-nongated")
    p.add_argument("--seeds", default="900000:900010", help="synthetic held-out seeds START:END")
    args = p.parse_args(argv)
    from CoronaryCalciumDINOLib.io import load_ct
    from CoronaryCalciumDINOLib.synth.generator import generate_study

    print("| scan | slice / pixel mm | slices looked at | sternum HU p99 / median | vertebra HU p99 / median "
          "| candidates per slice | of which on bone or outside the heart | left for the networks | noise SD HU |")
    print("|---|---|---|---|---|---|---|---|---|")
    if args.dev.is_dir():
        for d in sorted((x for x in args.dev.iterdir() if x.is_dir()), key=lambda x: (len(x.name), x.name)):
            print(row(f"real {d.name}", figures(load_ct(d))), flush=True)
    a, b = (int(v) for v in args.seeds.split(":"))
    for s in range(a, b):
        print(row(f"synthetic {s}", figures(generate_study(s).ct)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
