"""Scoring speed: vectorised ``score`` vs the per-lesion reference, side by side.

    python benchmarks/bench_scoring.py [--slices 80] [--lesions 60] [--repeat 5]

Builds a 512x512xN volume with dozens of lesions spread over the four arteries plus dense
unlabelled structures, checks both implementations agree, and prints the best-of-N time of
each and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from CoronaryCalciumDINOLib.scoring import score
from CoronaryCalciumDINOLib.scoring.reference import reference_score


def make_volume(n_slices: int, n_lesions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, (n_slices, 512, 512)).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    hu[:, 380:460, 200:310] = 700.0  # a "spine": dense, never labelled
    zz, yy, xx = np.mgrid[-4:5, -4:5, -4:5]
    for _ in range(n_lesions):
        z = rng.integers(5, n_slices - 5)
        y, x = rng.integers(100, 400, 2)
        r = rng.uniform(1.0, 4.0)
        blob = (zz**2 * 4 + yy**2 + xx**2) <= r**2
        sl = (slice(z - 4, z + 5), slice(y - 4, y + 5), slice(x - 4, x + 5))
        hu[sl][blob] = rng.uniform(150, 900)
        labels[sl][blob] = rng.integers(1, 5)
    # vessel labels around lesions, below threshold
    return hu, labels


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=80)
    ap.add_argument("--lesions", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    hu, labels = make_volume(args.slices, args.lesions)
    spacing = (3.0, 0.488, 0.488)
    t_fast, fast = best_of(lambda: score(hu, labels, spacing), args.repeat)
    t_ref, ref = best_of(lambda: reference_score(hu, labels, spacing), max(1, args.repeat // 2))
    for a, s in fast.arteries.items():
        assert abs(s.agatston - ref[a]["agatston"]) < 1e-6, a
    print(f"volume 512x512x{args.slices}, {fast.total.lesions} kept lesions, total Agatston {fast.total.agatston:.1f}")
    print(f"vectorised score : {t_fast * 1000:8.1f} ms")
    print(f"per-lesion ref.  : {t_ref * 1000:8.1f} ms")
    print(f"speed-up         : {t_ref / t_fast:8.1f}x")


if __name__ == "__main__":
    main()
