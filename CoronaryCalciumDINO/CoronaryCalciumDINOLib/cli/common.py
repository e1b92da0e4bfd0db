"""Options and helpers shared by the ``ccdino`` subcommands."""

from __future__ import annotations

import argparse

from ..errors import InputError


def check_ct(ct) -> list[str]:
    """Checks of a loaded CT that the user must see (today: does it look contrast-enhanced,
    :mod:`..pipeline.contrast`). New warnings are appended to ``ct.warnings``, which every
    report of the ``score`` subcommand includes (``--labels`` and AI paths alike); returns
    ``ct.warnings``."""
    from ..pipeline.contrast import check_contrast

    check_contrast(ct)
    return ct.warnings


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("score definition")
    g.add_argument("--kvp", default=None, metavar="auto|N",
                   help="use kVp-adapted thresholds (Graeni 2018): 'auto' reads the DICOM KVP tag; "
                        "default: the classic 120 kVp definition")
    g.add_argument("--min-area", type=float, default=1.0, metavar="MM2",
                   help="minimum lesion area in mm^2 (default 1.0)")
    g.add_argument("--no-slice-correction", action="store_true",
                   help="do not multiply by slice spacing / 3 mm")
    g.add_argument("--calibration-factor", type=float, default=None, metavar="C",
                   help="mass calibration factor, mg HA/cm^3 per HU (without it mass is not reported)")


def scoring_params_from_args(args, ct_kvp: float | None):
    """Build :class:`ScoringParams` from the score-definition options."""
    from ..scoring import params_for_kvp

    kvp = None
    if args.kvp is not None:
        if str(args.kvp).lower() == "auto":
            if ct_kvp is None:
                raise InputError("--kvp auto: the input has no KVP tag; give the tube voltage, e.g. --kvp 100")
            kvp = float(ct_kvp)
        else:
            try:
                kvp = float(args.kvp)
            except ValueError:
                raise InputError(f"--kvp must be 'auto' or a number, got {args.kvp!r}") from None
    return params_for_kvp(
        kvp,
        min_area_mm2=args.min_area,
        slice_correction=not args.no_slice_correction,
        calibration_factor=args.calibration_factor,
    )
