"""``ccdino evaluate``: measure a model bundle (or two) on labelled held-out studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate model bundles on held-out synthetic studies (and COCA)",
        description="Run the AI pipeline of a bundle on labelled studies and write metrics as JSON: slice "
        "detection (sensitivity, specificity, FN/FP rates, AUROC, AUPRC), per-artery and total Agatston "
        "agreement (ICC, Pearson, MAE, Bland-Altman), risk categories (accuracy, per-category sensitivity / "
        "specificity, weighted kappa), for the detector-gated pipeline and for the segmenter on every slice. "
        "With --bundle-b, both bundles and their slice-detection comparison (e.g. DINO vs DINO-LG).",
    )
    p.add_argument("--bundle", help="model bundle folder or manifest (default: the bundled default model)")
    p.add_argument("--bundle-b", help="second bundle to compare with (e.g. DINO-LG against DINO)")
    p.add_argument("--synthetic-seeds", metavar="START:END",
                   help="held-out synthetic seeds START..END-1 (default: the first 20 held-out seeds)")
    p.add_argument("--cache", metavar="DIR", help="keep / reuse the generated studies here (default: OUT's folder/eval-studies)")
    p.add_argument("--coca", metavar="DIR", help="also evaluate a folder of COCA study folders (converted with 'ccdino coca')")
    p.add_argument("--out", required=True, help="metrics JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=run)


def parse_seeds(text: str | None) -> range:
    """``START:END`` -> range(START, END); None -> the first 20 held-out synthetic seeds."""
    from ..data.splits import HELDOUT_SYNTHETIC_SEEDS
    from ..errors import InputError

    if text is None:
        return range(HELDOUT_SYNTHETIC_SEEDS.start, HELDOUT_SYNTHETIC_SEEDS.start + 20)
    try:
        a, b = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise InputError(f"--synthetic-seeds must be START:END (integers), got {text!r}") from None
    if b <= a:
        raise InputError(f"--synthetic-seeds: END must be > START, got {text!r}")
    return range(a, b)


def run(args: argparse.Namespace) -> int:
    from ..data.splits import HELDOUT_SYNTHETIC_SEEDS
    from ..data.studies import list_studies
    from ..errors import InputError
    from ..evaluation.pipeline_eval import compare_slice_detection, evaluate_bundle, summarise, synthetic_study_dirs
    from ..pipeline import load_bundle
    from ..report import write_json

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists; use --overwrite to replace it")
    seeds = parse_seeds(args.synthetic_seeds)
    outside = [s for s in seeds if s not in HELDOUT_SYNTHETIC_SEEDS]
    if outside:
        print(f"ccdino: warning: {len(outside)} seed(s) are outside the held-out range "
              f"{HELDOUT_SYNTHETIC_SEEDS.start}:{HELDOUT_SYNTHETIC_SEEDS.stop}; a model may have been trained on them",
              file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        print(f"\r[{int(fraction * 100):3d}%] {message:<50}", end="\n" if fraction >= 1 else "", file=sys.stderr, flush=True)

    cache = Path(args.cache) if args.cache else out.parent / "eval-studies"
    print(f"studies: synthetic seeds {seeds.start}:{seeds.stop} in {cache}", file=sys.stderr)
    sets = {"synthetic": synthetic_study_dirs(seeds, cache, progress)}
    if args.coca:
        sets["coca"] = list_studies(args.coca)

    bundles = {"A": load_bundle(args.bundle)}
    if args.bundle_b:
        bundles["B"] = load_bundle(args.bundle_b)
    result: dict = {
        "bundles": {k: b.model_info() | {"threshold": b.threshold} for k, b in bundles.items()},
        "synthetic_seeds": [seeds.start, seeds.stop],
    }
    for key, b in bundles.items():
        for set_name, dirs in sets.items():
            print(f"bundle {key} ({b.name}) on {set_name}: {len(dirs)} studies", file=sys.stderr)
            outcomes = evaluate_bundle(b, dirs, device=args.device, progress=progress)
            target = float(b.manifest["detector"].get("target_sensitivity", 0.90))
            result.setdefault(set_name, {})[key] = summarise(outcomes, b.threshold, target)
    if "B" in bundles:
        for set_name in sets:
            r = result[set_name]
            result[set_name]["comparison"] = compare_slice_detection(r["A"], r["B"], "A", "B")
    write_json(result, out)
    a = result["synthetic"]["A"]
    t = a["slices"]["at_threshold"]
    print(f"bundle A on {a['n_studies']} synthetic studies: slice sensitivity {t['sensitivity']}, specificity "
          f"{t['specificity']}, AUROC {a['slices']['auroc']}; risk accuracy pipeline "
          f"{a['pipeline']['risk']['accuracy']:.3f} vs UNET on all slices {a['unet_all_slices']['risk']['accuracy']:.3f}",
          file=sys.stderr)
    print(f"wrote {out}")
    return 0
