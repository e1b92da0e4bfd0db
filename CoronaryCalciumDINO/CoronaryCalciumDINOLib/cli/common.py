"""Options and helpers shared by the ``ccdino`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..filenames import SINGLE_FILE_SUFFIXES, split_volume_suffix


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


def scoring_options_from_args(args):
    """The score-definition options (:func:`add_scoring_options`) as
    :class:`..scoring.ScoringOptions`; its ``resolve`` gives the parameters for a CT's kVp."""
    from ..scoring import ScoringOptions

    return ScoringOptions(
        kvp=args.kvp,
        min_area_mm2=args.min_area,
        slice_correction=not args.no_slice_correction,
        calibration_factor=args.calibration_factor,
    )


def attention_paths(path: str | Path, heads: int) -> list[Path]:
    """[mean file, head 1 file, ..., head ``heads`` file] for ``--attention path``."""
    path = Path(path)
    stem, suffix = split_volume_suffix(path.name) or (path.name, ".nrrd")
    if suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise InputError(f"--attention {path.name}: write the maps as {', '.join(SINGLE_FILE_SUFFIXES)} "
                         "(header and data in one file)")
    if not path.name.lower().endswith(suffix):
        path = path.with_name(stem + suffix)
    return [path] + [path.with_name(f"{stem}.head{h}{suffix}") for h in range(1, heads + 1)]


def write_dicom(labels, ct, report: dict, paths, quiet: bool = False) -> None:
    """Write the DICOM SEG and SR of a result to ``paths`` (SEG, SR) and say what was written
    (or why there is no SEG) on stderr."""
    import sys

    from ..report.dicom import write_dicom_results

    written = write_dicom_results(labels, ct, report, *paths)
    for note in written.notes:
        print(f"ccdino: note: {note}", file=sys.stderr)
    if not quiet:
        names = [str(p) for p in (written.seg, written.sr) if p is not None]
        print(f"ccdino: DICOM results: {', '.join(names)}", file=sys.stderr)
