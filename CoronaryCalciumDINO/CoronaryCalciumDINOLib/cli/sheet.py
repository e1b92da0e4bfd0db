"""``ccdino sheet``: picture of example synthetic slices beside a real slice."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "sheet",
        help="picture of example synthetic slices with calcium outlines next to a real slice",
        description="Draw a PNG sheet of synthetic studies (slices with and without calcium, soft-tissue "
        "and calcium windows, calcium labels outlined in artery colours) next to a real non-contrast "
        "cardiac CT slice, with HU histograms of both.",
    )
    p.add_argument("source", help="a study folder, a folder of studies, or seeds to generate (e.g. 1,2,3 or 0-2)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=3, help="number of studies shown (default 3)")
    p.add_argument("--real", default=None, help="real CT (DICOM folder or volume file) to show; "
                   "default: the real slices of the test data when present")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth.sheet import REAL_SLICES, load_sheet_studies, make_sheet

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out must be a .png file, got {out.name}")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; use --force to overwrite it")
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    studies = load_sheet_studies(args.source, args.n)
    real = Path(args.real) if args.real else REAL_SLICES
    if args.real and not real.exists():
        raise InputError(f"real CT not found: {real}")
    make_sheet(studies, out, real if real.exists() else None)
    print(f"wrote {out}")
    return 0
