"""``ccdino coca``: convert the Stanford COCA dataset into study folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .progress import progress_printer


def register(sub) -> None:
    p = sub.add_parser(
        "coca",
        help="convert the Stanford COCA dataset (gated scans + calcium XML) into study folders",
        description="Convert the gated scans of the Stanford COCA dataset into the project's study "
        "folders (ct.nrrd, labels.nrrd with 1 LM, 2 LAD, 3 LCX, 4 RCA, study.json) for training "
        "and evaluation. Each patient's outcome is appended to a JSON-lines log (patient, status, "
        "reason, warnings). Known bad cases (012, 197, 598, 159, 238, 398) are skipped unless "
        "--include-known-bad. Existing study folders are kept unless --overwrite.",
    )
    p.add_argument("root", help="COCA folder holding Gated_release_final (and deidentified_nongated)")
    p.add_argument("--out", required=True, help="output folder of the study folders")
    p.add_argument("--include-known-bad", action="store_true", help="also convert the known bad cases")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="convert only the first N patients")
    p.add_argument("--patients", nargs="+", metavar="PID", help="convert only these patient ids")
    p.add_argument("--missing-xml-as-empty", action="store_true",
                   help="convert a patient without calcium XML as having no calcium (default: skip it)")
    p.add_argument("--min-hu", type=float, default=130.0,
                   help="keep labels only where HU >= this (default 130, the Agatston threshold)")
    p.add_argument("--overwrite", action="store_true", help="replace existing study folders")
    p.add_argument("--log", help="conversion log (JSON lines; default: OUT/coca_conversion.jsonl)")
    p.add_argument("--nongated-scores", action="store_true",
                   help="also write OUT/coca_nongated_scores.json from deidentified_nongated/scores.csv|xlsx")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.coca import GATED_DIR, NONGATED_DIR, convert_gated, read_nongated_scores
    from ..report import write_json

    root = Path(args.root)
    gated = (root / GATED_DIR).is_dir()
    if not gated and not (args.nongated_scores and (root / NONGATED_DIR).is_dir()):
        raise InputError(f"{root} is not a COCA folder (no {GATED_DIR} inside"
                         + (")" if args.nongated_scores else f"; with only {NONGATED_DIR}, use --nongated-scores)"))
    if args.limit is not None and args.limit < 0:
        raise InputError(f"--limit must be >= 0, got {args.limit}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else out / "coca_conversion.jsonl"

    progress = progress_printer()

    results = [] if not gated else convert_gated(
        root,
        out,
        include_known_bad=args.include_known_bad,
        limit=args.limit,
        patients=args.patients,
        log_path=log_path,
        progress=progress,
        missing_xml_as_empty=args.missing_xml_as_empty,
        min_hu=args.min_hu,
        overwrite=args.overwrite,
    )
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no patients"
    if gated:
        print(f"COCA gated: {summary}; log: {log_path}")
    if args.nongated_scores:
        scores = read_nongated_scores(root)
        path = write_json({"source": "coca-nongated", "scores": scores}, out / "coca_nongated_scores.json")
        print(f"COCA non-gated scores: {len(scores)} scans -> {path}")
    failed = counts.get("failed", 0)
    if failed:
        print(f"ccdino: warning: {failed} patient(s) failed; see {log_path}", file=sys.stderr)
    return 0 if not failed else 1

