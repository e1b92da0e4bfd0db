"""``ccdino score``: score one CT, from a given label map or with the AI pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InputError
from .common import (
    add_scoring_options,
    attention_paths,
    check_ct,
    scoring_options_from_args,
    write_dicom,
)

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score one CT (DICOM folder or NIfTI/NRRD/MHA)",
        description="Score coronary calcium on one CT. With --labels, score the given per-artery "
        "label map (0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA; same grid as INPUT). Without it, "
        "run the AI pipeline (slice detector + segmenter) of a model bundle.",
    )
    p.add_argument("input", metavar="CT", help="DICOM folder, study folder (ct.nrrd ...), or a NIfTI / NRRD / MHA file")
    p.add_argument("--labels", help="per-artery label map on the CT grid (skips the AI)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to use when the folder holds several series")
    p.add_argument("--json", metavar="FILE", help="write the JSON report here")
    p.add_argument("--csv", metavar="FILE", help="write the per-artery score table here")
    p.add_argument("--out", metavar="DIR", help="write <study>.json, <study>.csv (and AI outputs) into this folder; <study> is "
                   "the folder name for a DICOM or study folder and for a file named ct.*, else the file name")
    p.add_argument("--dicom-out", metavar="DIR", help="write the DICOM SEG (per-artery calcium) and SR (TID 1500 scores) "
                   "of a DICOM CT as DIR/<study>.seg.dcm and DIR/<study>.sr.dcm (needs the dicom-out extra)")
    p.add_argument("--dicom-seg", metavar="FILE", help="write the DICOM SEG here (with --dicom-sr, instead of --dicom-out)")
    p.add_argument("--dicom-sr", metavar="FILE", help="write the DICOM SR here (with --dicom-seg)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="do not print the score table")
    add_scoring_options(p)
    g = p.add_argument_group("AI pipeline (without --labels)")
    g.add_argument("--bundle", metavar="PATH", help="model bundle folder or manifest (default: the bundled default model)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--attention", metavar="FILE", help="write the attention maps (mean and per head) to this NRRD/NIfTI file")
    g.add_argument("--naming", choices=("aorta", "segmenter"), default="aorta", metavar="aorta|segmenter",
                   help="how lesions get their artery: from the ascending aorta found on the scan, where it agrees "
                        "with the segmenter on the sides of the tree (default), or the segmenter's own names")
    # For programs that run the command (the Slicer module): machine-readable progress lines
    # on stdout (see .progress); not listed in --help or the README synopsis.
    g.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)
    # For the Slicer module: the attention maps quantised as it keeps them (..io.attention),
    # so that its main thread neither reads nor quantises the float maps; not in --help.
    g.add_argument("--attention-codes", metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def output_files(args: argparse.Namespace, stem: str) -> list[tuple[Path, str]]:
    """Every file this run will write, with the option that names it."""
    files: list[tuple[Path, str]] = []
    if args.out:
        out = Path(args.out)
        files += [(out / f"{stem}.json", "--out"), (out / f"{stem}.csv", "--out")]
        if not args.labels:
            files += [(out / f"{stem}.labels.nrrd", "--out"), (out / f"{stem}.seg.nrrd", "--out")]
    dicom = dicom_paths(args, stem)
    if dicom is not None:
        option = "--dicom-out" if args.dicom_out else "--dicom-seg"
        files += [(dicom[0], option), (dicom[1], "--dicom-out" if args.dicom_out else "--dicom-sr")]
    if args.json:
        files.append((Path(args.json), "--json"))
    if args.csv:
        files.append((Path(args.csv), "--csv"))
    if getattr(args, "attention_codes", None) and not args.labels:
        files.append((Path(args.attention_codes), "--attention-codes"))
    if args.attention and not args.labels:
        mean = attention_paths(args.attention, 0)[0]
        files.append((mean, "--attention"))
        head1 = attention_paths(args.attention, 1)[1]
        pattern = head1.name.replace(".head1", ".head*", 1)
        files += [(p, "--attention") for p in sorted(mean.parent.glob(pattern))] if mean.parent.is_dir() else []
    seen: dict[Path, str] = {}
    for path, option in files:
        key = path.resolve()
        if key in seen:
            raise InputError(f"{seen[key]} and {option} name the same file {path}; give each output its own name")
        seen[key] = option
    return files


def dicom_paths(args: argparse.Namespace, stem: str) -> tuple[Path, Path] | None:
    """(SEG, SR) files of ``--dicom-out`` (named by :func:`..report.dicom.dicom_output_paths`,
    as ``ccdino batch`` names them) or ``--dicom-seg`` / ``--dicom-sr``; None if not asked."""
    out, seg, sr = (getattr(args, k, None) for k in ("dicom_out", "dicom_seg", "dicom_sr"))
    if out and (seg or sr):
        raise InputError("give either --dicom-out DIR or --dicom-seg FILE with --dicom-sr FILE, not both")
    if bool(seg) != bool(sr):
        raise InputError("--dicom-seg and --dicom-sr go together (the SR references the SEG); or give --dicom-out DIR")
    if out:
        from ..report.dicom import dicom_output_paths  # no highdicom: that is imported when they are written

        return dicom_output_paths(out, stem)
    return (Path(seg), Path(sr)) if seg else None


def run(args: argparse.Namespace) -> int:
    from ..data.studies import study_input
    from ..io import load_ct
    from ..io.labels import read_labels
    from ..io.labelcheck import check_label_map
    from ..outputs import check_output_dir, check_output_files
    from ..report import build_report, write_json, write_score_csv
    from ..report.flags import review_flags
    from ..report.tables import format_summary
    from ..scoring import score

    options = scoring_options_from_args(args)  # bad options fail before the CT is read
    study = study_input(args.input)
    stem = study.name
    files = output_files(args, stem)  # two outputs of one name are refused before anything is created
    dicom = dicom_paths(args, stem)
    if dicom is not None:
        from ..report.dicom import require_dicom_input
        from ..requirements import require_dicom_out

        require_dicom_input(study.path, "--dicom-out" if args.dicom_out else "--dicom-seg/--dicom-sr")
        require_dicom_out()
    out_dir = check_output_dir(args.out, "--out") if args.out else None
    check_output_files(files, overwrite=args.overwrite)  # before any work

    ct = load_ct(study.path, series_uid=args.series)
    check_ct(ct)  # adds e.g. the contrast-enhanced-CT warning to ct.warnings (both paths report them)
    for w in ct.warnings:
        log.info(w)
        print(f"ccdino: warning: {w}", file=sys.stderr)
    params = options.resolve(ct.kvp)
    if ct.kvp is not None and abs(ct.kvp - 120.0) > 0.5 and params.kvp is None:
        print(f"ccdino: note: scored with the classic 120 kVp thresholds; --kvp auto uses the thresholds "
              f"adapted to this scan's {ct.kvp:g} kVp", file=sys.stderr)

    if args.labels:
        labels = read_labels(args.labels, ct)
        label_warnings = check_label_map(labels, ct.spacing, Path(args.labels).name)
        for w in label_warnings:
            print(f"ccdino: warning: {w}", file=sys.stderr)
        result = score(ct.hu, labels, ct.spacing, params)
        report = build_report(result, args.input, kvp=ct.kvp, warnings=[*ct.warnings, *label_warnings],
                              study=stem, labels=str(args.labels))
        report["review_flags"] = review_flags(ct, report)  # when the study needs a human look
        if dicom is not None:
            write_dicom(labels, ct, report, dicom, quiet=args.quiet)
    else:
        from .ai import score_with_ai  # the AI's modules, imported only when it runs

        report = score_with_ai(ct, args, params, stem=stem, out_dir=out_dir, dicom=dicom)
        report["study"] = stem

    if args.json:
        write_json(report, args.json)
    if args.csv:
        write_score_csv(report, args.csv)
    if out_dir is not None:
        write_json(report, out_dir / f"{stem}.json")
        write_score_csv(report, out_dir / f"{stem}.csv")
    if not args.quiet:
        print(format_summary(report))
        print(report["disclaimer"])
    return 0
