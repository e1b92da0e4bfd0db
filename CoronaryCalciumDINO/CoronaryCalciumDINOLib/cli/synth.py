"""``ccdino synth``: generate synthetic non-contrast cardiac CT studies with calcium labels."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic cardiac CT studies with per-artery calcium labels",
        description="Generate synthetic non-contrast ECG-gated cardiac CT studies (ct.nrrd, labels.nrrd, "
        "heart.nrrd, study.json per folder synth-<seed>). Seeds S .. S+N-1; the same seed always "
        "gives the same study. Complete study folders already in OUT are skipped.",
    )
    p.add_argument("--n", type=int, required=True, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--slices-range", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="allowed number of slices per study (default 40 80)")
    p.add_argument("--matrix", type=int, default=None,
                   help="pixels per side (default 512; smaller keeps the field of view, for quick tests)")
    p.add_argument("--non-gated", action="store_true",
                   help="non-gated chest-CT reconstructions: 5 mm slices and cardiac motion blur "
                        "(ids synth-nongated-<seed>)")
    p.add_argument("--kernel", choices=("smooth", "standard", "sharp"), default=None,
                   help="reconstruct with this kernel (point spread, noise grain and strength, a sharp kernel's "
                        "edge enhancement; ids synth-<kernel>-<seed>); default: the body kernel each study draws")
    p.add_argument("--broad-plaques", type=float, default=None, metavar="SHARE",
                   help="draw this share (0-1) of the plaques broad: a band of calcium filling the artery, as "
                        "heavy calcification is (default 0; write them to their own folder: the ids stay synth-<seed>)")
    p.add_argument("--phantoms", action="store_true",
                   help="calcium-scoring phantoms (a thorax phantom with a calcification insert; folders "
                        "synth-phantom-<seed>) instead of patients")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth import write_studies

    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    overrides = {}
    if args.slices_range is not None:
        lo, hi = args.slices_range
        if not 1 <= lo <= hi:
            raise InputError(f"--slices-range needs 1 <= MIN <= MAX, got {lo} {hi}")
        overrides["slices_range"] = (lo, hi)
    if args.matrix is not None:
        if args.matrix < 16:
            raise InputError(f"--matrix must be >= 16, got {args.matrix}")
        overrides["matrix"] = args.matrix
    if args.phantoms:
        overrides["phantom"] = True
    if args.non_gated:
        if args.phantoms:
            raise InputError("--non-gated makes patients' chest-CT reconstructions; it does not apply to --phantoms")
        overrides["non_gated"] = True
    if args.kernel is not None:
        if args.phantoms:
            raise InputError("--kernel applies to patients' studies; it does not apply to --phantoms")
        overrides["kernel"] = args.kernel
    if args.broad_plaques is not None:
        if args.phantoms:
            raise InputError("--broad-plaques applies to patients' studies; it does not apply to --phantoms")
        if not 0.0 <= args.broad_plaques <= 1.0:
            raise InputError(f"--broad-plaques must be a share between 0 and 1, got {args.broad_plaques:g}")
        overrides["broad_plaques"] = args.broad_plaques
    t0 = time.perf_counter()
    n = args.n

    def progress(frac: float, msg: str) -> None:
        print(f"[{round(frac * n)}/{n}] {msg}", flush=True)

    done = write_studies(range(args.seed, args.seed + n), args.out, workers=args.workers, progress=progress, **overrides)
    print(f"{len(done)} studies in {args.out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0
