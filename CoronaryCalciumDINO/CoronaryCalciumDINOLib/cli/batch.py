"""``ccdino batch``: score every study of a folder (resumable, shardable)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..filenames import LABEL_SUFFIXES
from .common import add_scoring_options, scoring_options_from_args
from .progress import progress_printer


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="score every study of a folder (DICOM sub-folders, study folders or NIfTI/NRRD/MHA files)",
        description="Score every study of INPUT_DIR: each DICOM sub-folder, study folder (ct.nrrd, labels.nrrd, "
        "...) or NIfTI/NRRD/MHA file gives OUT/<study>.seg.nrrd, OUT/<study>.png and OUT/<study>.json, and the run "
        "gives OUT/summary.csv (OUT/summary-shard-I-of-N.csv with --shard); INPUT_DIR may also be one study folder. "
        "A study whose JSON exists and was scored with the same labels folder or model and scoring options is "
        "skipped (resume); one scored otherwise is an error row until --overwrite. "
        "Studies are scored in this process, on a local Dask cluster (--workers N) or on an existing one (--scheduler); "
        "a second batch over the same studies of OUT is refused while one runs. "
        "Exit status: 0 all studies scored, 1 some studies failed (see the summary), 2 bad arguments or OUT in use.",
    )
    p.add_argument("input_dir", metavar="INPUT_DIR", help="folder of studies")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created if needed)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes on this machine: N > 1 runs a local Dask cluster of N processes, each "
                   "loading the model once (needs the 'cluster' extra); default 1: in this process")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="score on an existing Dask cluster: its scheduler's address (tcp://host:8786) or scheduler "
                   "file; its workers need this package and the folders at the same paths (needs the 'cluster' extra)")
    p.add_argument("--shard", metavar="I/N",
                   help="process only studies I, I+N, I+2N, ... of the sorted list (0-based I), e.g. for job arrays")
    p.add_argument("--labels-dir", metavar="DIR",
                   help=f"score the label maps DIR/<study>{'|'.join(LABEL_SUFFIXES)} instead of running the AI")
    p.add_argument("--overwrite", action="store_true",
                   help="process studies again even when their JSON exists (their old outputs are removed first)")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write each DICOM study's SEG and SR as DIR/<study>.seg.dcm and DIR/<study>.sr.dcm "
                   "(e.g. DIR = OUT_DIR; every study must be DICOM; needs the dicom-out extra)")
    add_scoring_options(p)
    g = p.add_argument_group("AI pipeline (without --labels-dir)")
    g.add_argument("--bundle", metavar="PATH", help="model bundle folder or manifest (default: the bundled default model)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--quiet", action="store_true", help="print no per-study progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import parse_shard, run_batch, summary_name

    shard = parse_shard(args.shard)  # run_batch checks the rest before it creates --out
    if args.scheduler is not None and args.workers is not None:
        raise InputError("--workers sets the size of a local cluster; with --scheduler the cluster's workers are used")

    if args.dicom_out:  # before any study is scored: every study DICOM, highdicom installed
        from ..report.dicom import check_batch_dicom

        check_batch_dicom(args.input_dir, args.out, args.dicom_out, args.labels_dir)

    progress = progress_printer(quiet=args.quiet)
    dicom_failed: list[int] = []

    def dicom(rows: list[dict]) -> None:  # while the output folder is still this run's (no second run meanwhile)
        dicom_failed.append(_write_dicom(args, rows))

    rows = run_batch(
        args.input_dir,
        args.out,
        workers=1 if args.workers is None else args.workers,
        scheduler=args.scheduler,
        shard=shard,
        device=args.device,
        bundle=args.bundle,
        labels_dir=args.labels_dir,
        progress=progress,
        overwrite=args.overwrite,
        scoring=scoring_options_from_args(args),
        after=dicom if args.dicom_out else None,
    )
    failed = [r for r in rows if r["status"] != "ok"]
    summary = Path(args.out) / summary_name(shard)
    if failed and not args.quiet:  # each error was printed once, as its study finished
        print(f"{len(rows) - len(failed)} of {len(rows)} studies scored, {len(failed)} failed (errors above and "
              f"in the summary); summary: {summary}")
    else:
        print(f"{len(rows) - len(failed)} of {len(rows)} studies scored; summary: {summary}")
        for r in failed:
            print(f"ccdino: study {r['study']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed or sum(dicom_failed) else 0


def _write_dicom(args: argparse.Namespace, rows: list[dict]) -> int:
    """The DICOM SEG and SR of every study scored (:func:`..report.dicom.write_study_dicom`,
    from its outputs in OUT); returns how many failed (each said in one line)."""
    from ..data.studies import list_study_inputs
    from ..errors import CCDinoError
    from ..report.dicom import write_study_dicom

    studies = {s.name: s for s in list_study_inputs(args.input_dir, exclude=(args.out, args.labels_dir))}
    written, failed = 0, 0
    for row in rows:
        if row["status"] != "ok" or row["study"] not in studies:
            continue
        try:
            if write_study_dicom(studies[row["study"]], args.out, args.dicom_out, overwrite=args.overwrite):
                written += 1
        except (CCDinoError, OSError) as exc:
            failed += 1
            print(f"ccdino: study {row['study']}: DICOM results failed: {' '.join(str(exc).split())}", file=sys.stderr)
    if not args.quiet:
        print(f"DICOM SEG / SR of {written} studies written to {args.dicom_out}"
              + (f", {failed} failed" if failed else ""))
    return failed
