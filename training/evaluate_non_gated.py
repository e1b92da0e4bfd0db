"""A bundle on gated and non-gated reconstructions of the same synthetic patients.

    python training/evaluate_non_gated.py [--seeds 900000:900020] [--bundle PATH]

For each seed, :func:`CoronaryCalciumDINOLib.synth.generate_study` renders the gated study
and its non-gated reconstruction (``non_gated=True``: 5 mm slices, cardiac motion blur);
:func:`CoronaryCalciumDINOLib.pipeline.run_pipeline` scores both on the CPU. The reference
of each reconstruction is the Agatston score of its own labels. Prints one line per study
and a table (studies with calcium, reference and model totals, risk categories right,
calcium-free studies scored 0), per reconstruction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))


def summary(rows: list[tuple[int, bool, float, float]], non_gated: bool) -> dict:
    """Figures of one reconstruction from (seed, non_gated, reference, model) rows
    (:func:`training.evaluate_kernels.summary`, the reconstruction named by ``non_gated``)."""
    from training.evaluate_kernels import summary as of_reconstruction

    return of_reconstruction(rows, non_gated)


def table(rows) -> str:
    from training.evaluate_kernels import summary_table

    return summary_table(rows, ((False, "gated"), (True, "non-gated 5 mm, motion blur")), first="")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="900000:900020", metavar="START:END", help="seeds START..END-1")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    args = ap.parse_args(argv)
    from training.evaluate_kernels import parse_seeds, score_reconstructions

    seeds = parse_seeds(args.seeds, "evaluate_non_gated")
    if seeds is None:
        return 2
    start, end = seeds.start, seeds.stop

    from CoronaryCalciumDINOLib.pipeline import load_bundle

    bundle = load_bundle(args.bundle)
    rows = score_reconstructions(seeds, {False: {}, True: {"non_gated": True}}, bundle)
    print()
    print(f"model {bundle.name} {bundle.version}, seeds {start}-{end - 1}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
