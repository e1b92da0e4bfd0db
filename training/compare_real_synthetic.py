"""Synthetic studies side by side with real scans: bone HU, candidates per slice by kind, noise.

    python training/compare_real_synthetic.py [--dev real-dev/coca-nongated] [--seeds 900000:900010]

For each scan, on the slices a cardiac scan would hold (the pipeline's anatomy step,
:func:`CoronaryCalciumDINOLib.pipeline.inference.locate`):

- bone: the sternum's and the vertebral bodies' HU (the 99th percentile: cortex, and the
  median: marrow, of the voxels >= 150 HU in the bone the anatomy step found in the front
  and back thirds of the image);
- candidates per slice (regions >= 130 HU of >= 1 mm^2 in the heart field): all of them,
  those on bone or outside the heart region (never shown to the networks), and those left;
- noise: the median over slices of the image noise SD (:func:`..candidates.slice_noise`),
  and its grain (:func:`noise_grain`: 1 for white noise, lower for the coarser texture of
  a smoother reconstruction kernel).

``--kernels smooth,sharp`` adds rows of each synthetic study reconstructed with those
kernels (``generate_study(seed, kernel=...)``). Prints a markdown table (numbers only: no
pixels of the real scans are written).
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


def noise_grain(f: np.ndarray, pixel_mm, noise: np.ndarray) -> float:
    """Median over slices of SD(difference of neighbouring pixels along a row) / (sqrt(2) x
    the slice's noise SD), over the pixels of homogeneous soft tissue (8 mm windows whose
    mean is 0-100 HU and whose SD is at most 1.5 x the noise): 1 for white noise, lower for
    a coarser texture (a smoother kernel, larger pixels)."""
    from scipy import ndimage

    wy = max(3, int(round(8.0 / float(pixel_mm[0]))) | 1)
    wx = max(3, int(round(8.0 / float(pixel_mm[1]))) | 1)
    out = []
    for k in range(f.shape[0]):
        a = f[k].astype(np.float64)
        m = ndimage.uniform_filter(a, (wy, wx), mode="nearest")
        sd = np.sqrt(np.maximum(ndimage.uniform_filter(a * a, (wy, wx), mode="nearest") - m * m, 0))
        ok = (m > 0) & (m < 100) & (sd <= 1.5 * noise[k])
        both = ok[:, 1:] & ok[:, :-1]
        if both.sum() >= 500:
            out.append(float(np.diff(a, axis=1)[both].std() / (np.sqrt(2.0) * noise[k])))
    return float(np.median(out)) if out else float("nan")


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
    kept, outside = keep_heart_region(c, anatomy, hu)
    n = max(hu.shape[0], 1)
    out["candidates"] = (len(c) / n, outside / n, len(kept) / n)
    f = cd.extract_field(hu, c.field)
    noise = cd.slice_noise(f, ct.spacing[1:])
    out["noise"] = float(np.median(noise))
    out["grain"] = noise_grain(f, ct.spacing[1:], noise)
    return out


def row(name: str, f: dict) -> str:
    b = lambda t: "-" if t is None else f"{t[0]:.0f} / {t[1]:.0f}"  # noqa: E731
    a, o, k = f["candidates"]
    return (f"| {name} | {f['dz']:g} / {f['pixel']:.2f} | {f['slices']} | {b(f['sternum'])} | {b(f['spine'])} | "
            f"{a:.1f} | {o:.1f} | {k:.1f} | {f['noise']:.0f} | {f['grain']:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dev", type=Path, default=REPO / "real-dev" / "coca-nongated")
    p.add_argument("--seeds", default="900000:900010", help="synthetic held-out seeds START:END")
    p.add_argument("--kernels", default="", help="also each synthetic study with these kernels (e.g. smooth,sharp)")
    args = p.parse_args(argv)
    from CoronaryCalciumDINOLib.io import load_ct
    from CoronaryCalciumDINOLib.synth.generator import generate_study

    print("| scan | slice / pixel mm | slices looked at | sternum HU p99 / median | vertebra HU p99 / median "
          "| candidates per slice | of which on bone or outside the heart | left for the networks | noise SD HU "
          "| noise grain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    if args.dev.is_dir():
        for d in sorted((x for x in args.dev.iterdir() if x.is_dir()), key=lambda x: (len(x.name), x.name)):
            print(row(f"real {d.name}", figures(load_ct(d))), flush=True)
    a, b = (int(v) for v in args.seeds.split(":"))
    kernels = [k for k in args.kernels.split(",") if k]
    for s in range(a, b):
        print(row(f"synthetic {s}", figures(generate_study(s).ct)), flush=True)
        for k in kernels:
            print(row(f"synthetic {s}, {k} kernel", figures(generate_study(s, kernel=k).ct)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
