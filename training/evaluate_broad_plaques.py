"""A bundle on synthetic patients whose plaques are broad: calcium filling the artery.

    python training/evaluate_broad_plaques.py [--seeds 610000:610020] [--noise 20,40]
        [--bundle PATH] [--out training/results/synthetic-broad-plaques]

Heavy real calcification is often a band that fills the artery over many slices, not a
crescent on one side of it (the generator's ``broad_plaques``, see docs/synthetic-data.md).
For each seed and image noise (HU, the generator's ``noise_sd``),
:func:`CoronaryCalciumDINOLib.synth.generate_study` renders the patient with plaques forced,
once as drawn (crescents) and once with every plaque broad (``broad_plaques=1``: the same
patient, anatomy and noise stream); :func:`CoronaryCalciumDINOLib.pipeline.run_pipeline`
scores each on the CPU, and each reference is the Agatston score of its own labels. Besides
the totals, the table gives the share of the labelled calcium voxels that lie in the heart
region the anatomy step keeps (in the region, off bone and off calcified structures leaving
it): calcium outside it never reaches the networks. Writes ``OUT.md`` and ``OUT.json``.
The default seeds are apart from every seed the bundle recipe trains, calibrates or tests on.
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

from training.evaluate_kernels import parse_seeds, results_head, summary, write_results  # noqa: E402

CRESCENTS = "crescents (as drawn)"
BROAD = "broad (every plaque)"


def region_coverage(study, bundle) -> tuple[int, int]:
    """(labelled calcium voxels of ``study`` in the candidates the anatomy step keeps, all
    labelled calcium voxels of the slices it looks at): what reaches the networks."""
    import numpy as np

    from CoronaryCalciumDINOLib.pipeline.inference import candidate_config, keep_heart_region, locate_and_find, orient
    from CoronaryCalciumDINOLib.scoring import ScoringParams

    ct = study.ct
    view, _ = orient(ct, np.asarray(ct.hu))
    anatomy, (z0, z1), cands = locate_and_find(view.hu, ct.spacing, candidate_config(bundle, ScoringParams()))
    kept, _ = keep_heart_region(cands, anatomy, np.ascontiguousarray(view.hu[z0:z1], np.float32))
    labelled = np.asarray(study.labels)[z0:z1] > 0
    inside = kept.paint(np.ones(len(kept), np.uint8)) > 0
    return int((labelled & inside).sum()), int(labelled.sum())


def parse_noise(text: str) -> list[float] | None:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
        if not levels or any(not 0 <= v <= 200 for v in levels):
            raise ValueError
    except ValueError:
        print(f"evaluate_broad_plaques: error: --noise must be HU values 0..200, comma-separated, got {text}",
              file=sys.stderr)
        return None
    return levels


def run(seeds: range, levels: list[float], bundle) -> list[dict]:
    """One row per seed, noise level and kind of plaque: reference, model, labelled voxels
    in the region and in all; one line printed per study."""
    from CoronaryCalciumDINOLib.pipeline import run_pipeline
    from CoronaryCalciumDINOLib.scoring import score
    from CoronaryCalciumDINOLib.synth import generate_study

    rows = []
    for noise in levels:
        for seed in seeds:
            for kind, over in ((CRESCENTS, {}), (BROAD, {"broad_plaques": 1.0})):
                st = generate_study(seed, plaques=True, noise_sd=noise, **over)
                ref = float(score(st.ct.hu, st.labels, st.ct.spacing).total.agatston)
                ai = float(run_pipeline(st.ct, bundle, device="cpu").score.total.agatston)
                inside, labelled = region_coverage(st, bundle)
                rows.append({"seed": seed, "noise_hu": noise, "plaques": kind, "reference": ref, "model": ai,
                             "labelled_in_region": inside, "labelled": labelled})
                print(f"{st.id} noise {noise:g} {kind}: reference {ref:.1f}, model {ai:.1f}, "
                      f"labelled voxels in the region {inside} of {labelled}", flush=True)
    return rows


def figures(rows: list[dict], noise: float, kind: str) -> dict:
    r = [x for x in rows if x["noise_hu"] == noise and x["plaques"] == kind]
    s = summary([(x["seed"], kind, x["reference"], x["model"]) for x in r], kind)
    s["found_share"] = s["model_total"] / s["reference_total"] if s["reference_total"] else None
    s["labelled_in_region"] = sum(x["labelled_in_region"] for x in r)
    s["labelled"] = sum(x["labelled"] for x in r)
    return s


def table(rows: list[dict]) -> str:
    lines = ["| noise (HU) | plaques | reference total | model total | model / reference | risk category right "
             "| labelled calcium voxels in the heart region |", "|---|---|---|---|---|---|---|"]
    for noise in dict.fromkeys(x["noise_hu"] for x in rows):
        for kind in (CRESCENTS, BROAD):
            s = figures(rows, noise, kind)
            share = "-" if s["found_share"] is None else f"{s['found_share']:.3f}"
            lines.append(f"| {noise:g} | {kind} | {s['reference_total']:.0f} | {s['model_total']:.0f} | {share} | "
                         f"{s['risk_right']} of {s['studies']} | {s['labelled_in_region']} of {s['labelled']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="610000:610020", metavar="START:END", help="seeds START..END-1")
    ap.add_argument("--noise", default="20,40", help="image noise levels (HU), comma-separated (default 20,40)")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    ap.add_argument("--out", default=None, metavar="OUT", help="write OUT.md and OUT.json")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds, "evaluate_broad_plaques")
    levels = parse_noise(args.noise)
    if seeds is None or levels is None:
        return 2
    from CoronaryCalciumDINOLib.pipeline import load_bundle

    bundle = load_bundle(args.bundle)
    t0 = time.perf_counter()
    rows = run(seeds, levels, bundle)
    text = table(rows)
    head = results_head(bundle, seeds, t0, "plaques forced")
    print()
    print(head)
    print(text)
    if args.out:
        write_results(Path(args.out), "Synthetic patients with broad plaques (calcium filling the artery)",
                      "evaluate_broad_plaques.py", argv, [head], text, {
                          "model": bundle.model_info(), "seeds": [seeds.start, seeds.stop], "noise_hu": levels,
                          "rows": rows,
                          "summary": {f"{n:g}": {k: figures(rows, n, k) for k in (CRESCENTS, BROAD)} for n in levels}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
