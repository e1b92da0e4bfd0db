"""What stage *name*'s check on the aorta's names counts and finds, study by study.

    python training/naming_check.py [--seeds 900000:900100] [--cache runs/eval/heldout]
        [--bundle PATH] [--out FILE]

For each synthetic study of the seeds (generated into ``--cache`` once, as ``ccdino evaluate
--cache`` does, then reused) the whole pipeline runs on the CPU
(:func:`..pipeline.run_pipeline`, detector-gated, the default scoring definition), and its
``names_check`` (:class:`..pipeline.naming.NamingCheck`) says what the check that decides
whether the ascending aorta found is trusted counted: the calcium outside the aortic root's
zone (all of it where none lies outside), the share of it whose side the segmenter is sure of
(:data:`..pipeline.naming.SURE_SIDE`), whether the check was made
(:data:`..pipeline.naming.MIN_SURE_SHARE`) and on how much of the calcium counted the aorta
and the segmenter disagree (:data:`..pipeline.naming.MAX_SIDE_DISAGREEMENT`). Printed (and
written to ``--out``): one line per study in which the pipeline labelled calcium, then the
totals. The same
figures for real scans: ``training/evaluate_real.py`` (its "Artery names").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python training/naming_check.py``
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:  # the library not installed: use the checkout's
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))


def study_check(study, bundle) -> dict:
    """{"id", "source", "check"}: where the pipeline's artery names of one loaded study came
    from and what the check on the aorta's names found (``check``: its ``as_dict``, or None
    where there was no check)."""
    from CoronaryCalciumDINOLib.pipeline import run_pipeline
    from CoronaryCalciumDINOLib.scoring import ScoringParams

    res = run_pipeline(study.ct, bundle, device="cpu", params=ScoringParams())
    return {"id": study.id, "source": res.names_from,
            "check": None if res.names_check is None else res.names_check.as_dict()}


def study_line(r: dict) -> str:
    """One study's line: its id, and its names as ``training/evaluate_real.py`` lists a scan's."""
    from training.evaluate_real import names_line

    return f"{r['id']}: {names_line({'names_from': r['source'], 'names_check': r['check']})}"


def totals(rows: list[dict]) -> str:
    """One line: the studies by names source, and the check's figures over them."""
    named = [r for r in rows if r["source"]]
    by = {s: sum(r["source"] == s for r in named) for s in dict.fromkeys(r["source"] for r in named)}
    outside = [r["check"] for r in named if r["check"] and not r["check"]["zone_only"]]
    sure = [c["segmenter_sure_share"] for c in outside]
    made = [c for c in outside if c["check_made"]]
    failed = [r["check"]["sides_disagree_share"] for r in named if r["source"] == "segmenter: the aorta disagrees"]
    text = (f"{len(named)} studies with calcium the pipeline labelled: " + ", ".join(f"{n} {s}" for s, n in by.items()) + ". "
            f"Calcium outside the root's zone checked in {len(outside)}")
    if sure:
        text += (f": segmenter sure of {100 * min(sure):.1f}-{100 * max(sure):.1f} % (median "
                 f"{100 * float(np.median(sure)):.1f} %), the check made in {len(made)}")
    if failed:
        text += f"; where the aorta disagrees, the sides disagree on {100 * min(failed):.1f}-{100 * max(failed):.1f} %"
    return text


def main(argv=None) -> int:
    from CoronaryCalciumDINOLib.data.studies import load_study
    from CoronaryCalciumDINOLib.models.bundle import load_bundle

    from training.evaluate_kernels import held_out_run

    run = held_out_run(argv, "naming_check", __doc__, "model bundle (default: the default bundle)", load_bundle)
    if run is None:
        return 2
    args, seeds, bundle, dirs = run
    rows, lines = [], []
    for d in dirs:
        rows.append(study_check(load_study(d, with_heart=False), bundle))
        if rows[-1]["source"]:
            lines.append(study_line(rows[-1]))
            print(lines[-1], flush=True)
    lines.append(f"seeds {seeds.start}:{seeds.stop} ({len(dirs)} studies), {bundle.name} {bundle.version}: "
                 + totals(rows))
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
