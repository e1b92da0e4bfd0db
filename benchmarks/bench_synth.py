"""Synthetic study generation speed: seconds per study and where the time goes.

    python benchmarks/bench_synth.py [--n 10] [--seed 0] [--matrix 512] [--write]

Renders N studies in this process on one thread (wall-clock and CPU seconds per study,
mean time of each rendering stage, mean voxel count) and, with ``--write``, also times
writing them in the study format (compressed NRRD + scoring + study.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from CoronaryCalciumDINOLib.data.studies import write_study  # noqa: E402
from CoronaryCalciumDINOLib.synth import render_study  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--write", action="store_true", help="also time write_study")
    args = ap.parse_args()

    render_study(args.seed, matrix=64, n_slices=4)  # warm-up (imports, caches)
    walls, cpus, writes, voxels = [], [], [], []
    stages: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.n):
            t0, c0 = time.perf_counter(), time.process_time()
            res = render_study(seed, matrix=args.matrix)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            voxels.append(res.study.ct.hu.size)
            for k, v in res.timings.items():
                stages.setdefault(k, []).append(v)
            if args.write:
                t0 = time.perf_counter()
                write_study(res.study, tmp)
                writes.append(time.perf_counter() - t0)
            print(f"{res.study.id}: {res.study.ct.shape} render {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU", flush=True)
    print(f"\n{args.n} studies, matrix {args.matrix}, mean {np.mean(voxels) / 1e6:.1f} M voxels")
    print(f"render: {np.mean(walls):.2f} s/study wall (median {np.median(walls):.2f}), "
          f"{np.mean(cpus):.2f} s/study CPU")
    if writes:
        print(f"write (NRRD + score + json): {np.mean(writes):.2f} s/study wall")
    print("stage breakdown (mean wall s):")
    for k, v in stages.items():
        print(f"  {k:16s} {np.mean(v):.3f}")


if __name__ == "__main__":
    main()
