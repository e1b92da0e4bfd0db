"""A bundle on synthetic patients whose scan ends at their calcium.

    python training/evaluate_scan_ends.py [--seeds 620000:620040] [--bundle PATH]
        [--out training/results/synthetic-scan-ends]

A calcium scan ends where it was set to end, not where the anatomy does: a gated scan runs
from about the carina to the apex, so a calcification can lie on its first or last slice.
For each seed, :func:`CoronaryCalciumDINOLib.synth.generate_study` renders a patient with
plaques forced; the study is cut to end at its most superior slice that holds labelled
coronary calcium ("top") and, separately, to begin at its most inferior one ("bottom");
:func:`CoronaryCalciumDINOLib.pipeline.run_pipeline` scores each cut on the CPU. The table
gives, per end, the reference Agatston score of the end slice (its own labels), the model's
there (all of it, and on the right artery: per artery the smaller of the two), and the
totals of the cut studies. Writes ``OUT.md`` and ``OUT.json``. The default seeds are apart
from every seed the bundle recipe trains, calibrates or tests on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

from training.evaluate_kernels import parse_seeds, results_head, write_results  # noqa: E402

ENDS = ("top", "bottom")


def cut(ct, k0: int, k1: int):
    """The CT's slices k0..k1-1 (storage order) as a CT of their own (origin moved to slice k0)."""
    import numpy as np

    from CoronaryCalciumDINOLib.io.volume import CTVolume

    d = np.asarray(ct.direction, dtype=float)
    origin = np.asarray(ct.origin, dtype=float) + k0 * float(ct.spacing[0]) * d[:, 2]
    return CTVolume(hu=np.ascontiguousarray(np.asarray(ct.hu)[k0:k1]), spacing=ct.spacing, origin=tuple(origin),
                    direction=d, kvp=ct.kvp, source=f"{ct.source} (slices {k0}-{k1 - 1})")


def end_cuts(ct, labels) -> dict:
    """{"top"|"bottom": (k0, k1, end slice)} in storage order: the study ending at its most
    superior calcified slice, and beginning at its most inferior one (none without calcium)."""
    import numpy as np

    ks = np.flatnonzero(np.asarray(labels).reshape(labels.shape[0], -1).max(1) > 0)
    if not ks.size:
        return {}
    superior_up = float(np.asarray(ct.direction, dtype=float)[2, 2]) >= 0  # k towards +z (LPS superior)
    lo, hi = int(ks.min()), int(ks.max())
    n = labels.shape[0]
    if superior_up:
        return {"top": (0, hi + 1, hi), "bottom": (lo, n, 0)}
    return {"top": (lo, n, 0), "bottom": (0, hi + 1, hi)}


def slice_scores(hu, labels, spacing, k: int) -> dict:
    """Per-artery and total Agatston score of slice ``k`` alone."""
    import numpy as np

    from CoronaryCalciumDINOLib.scoring import score

    only = np.zeros_like(np.asarray(labels))
    only[k] = np.asarray(labels)[k]
    r = score(hu, only, spacing)
    return {"total": float(r.total.agatston), **{a: float(v.agatston) for a, v in r.arteries.items()}}


def run(seeds: range, bundle) -> list[dict]:
    """One row per seed with calcium and end; one line printed per cut study."""
    from CoronaryCalciumDINOLib.constants import ARTERIES
    from CoronaryCalciumDINOLib.pipeline import run_pipeline
    from CoronaryCalciumDINOLib.scoring import score
    from CoronaryCalciumDINOLib.synth import generate_study

    rows = []
    for seed in seeds:
        st = generate_study(seed, plaques=True)
        for end, (k0, k1, k) in end_cuts(st.ct, st.labels).items():
            ct = cut(st.ct, k0, k1)
            labels = st.labels[k0:k1]
            res = run_pipeline(ct, bundle, device="cpu")
            ref = slice_scores(ct.hu, labels, ct.spacing, k)
            ai = slice_scores(ct.hu, res.labels, ct.spacing, k)
            right = sum(min(ref[a], ai[a]) for a in ARTERIES)
            row = {"seed": seed, "end": end, "slices": k1 - k0, "reference_end": ref["total"], "model_end": ai["total"],
                   "model_end_right_artery": right,
                   "reference_total": float(score(ct.hu, labels, ct.spacing).total.agatston),
                   "model_total": float(res.score.total.agatston)}
            rows.append(row)
            print(f"{st.id} ending at its {end} calcium ({k1 - k0} slices): end slice reference {ref['total']:.1f}, "
                  f"model {ai['total']:.1f} ({right:.1f} on the right artery); total {row['reference_total']:.1f} / "
                  f"{row['model_total']:.1f}", flush=True)
    return rows


def _share(v: float, ref: float) -> str:
    """``v`` points and their share of ``ref`` (none when the end slices' labelled calcium all
    lies below the threshold: 0 reference points)."""
    return f"{v:.0f} ({v / ref:.0%})" if ref > 0 else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    lines = ["| scan ends at its | studies | end slice: reference | end slice: model | on the right artery | "
             "end slices with calcium the model scores 0 | total: reference | total: model |",
             "|---|---|---|---|---|---|---|---|"]
    for end in ENDS:
        r = [x for x in rows if x["end"] == end]
        if not r:
            continue
        ref, ai = sum(x["reference_end"] for x in r), sum(x["model_end"] for x in r)
        right = sum(x["model_end_right_artery"] for x in r)
        missed = sum(x["reference_end"] > 0 and x["model_end"] == 0 for x in r)
        lines.append(f"| {end} calcium | {len(r)} | {ref:.0f} | {_share(ai, ref)} | {_share(right, ref)} "
                     f"| {missed} of {sum(x['reference_end'] > 0 for x in r)} | "
                     f"{sum(x['reference_total'] for x in r):.0f} | {sum(x['model_total'] for x in r):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="620000:620040", metavar="START:END", help="seeds START..END-1")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    ap.add_argument("--out", default=None, metavar="OUT", help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds, "evaluate_scan_ends")
    if seeds is None:
        return 2
    from CoronaryCalciumDINOLib.pipeline import load_bundle

    bundle = load_bundle(args.bundle)
    t0 = time.perf_counter()
    rows = run(seeds, bundle)
    text = table(rows)
    head = results_head(bundle, seeds, t0, "plaques forced")
    print()
    print(head)
    print(text)
    if args.out:
        write_results(Path(args.out), "Synthetic patients whose scan ends at their calcium",
                      "evaluate_scan_ends.py", argv, [head], text,
                      {"model": bundle.model_info(), "seeds": [seeds.start, seeds.stop], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
