"""``ccdino evaluate``: measure a model bundle (or two) on labelled held-out studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .progress import progress_printer


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
    p.add_argument("--bundle", metavar="PATH", help="model bundle folder or manifest (default: the bundled default model)")
    p.add_argument("--bundle-b", metavar="PATH", help="second bundle to compare with (e.g. DINO-LG against DINO)")
    p.add_argument("--synthetic-seeds", metavar="START:END",
                   help="held-out synthetic seeds START..END-1 (default: the first 20 held-out seeds)")
    p.add_argument("--cache", metavar="DIR", help="keep / reuse the generated studies here (default: OUT's folder/eval-studies)")
    p.add_argument("--coca", metavar="DIR", help="also evaluate a folder of COCA study folders (converted with 'ccdino coca')")
    p.add_argument("--out", required=True, metavar="FILE", help="metrics JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="auto, cpu, cuda or cuda:N (default auto)")
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


def _fig(value, digits: int = 3) -> str:
    """A figure for people: rounded; '-' when undefined (None or NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{float(value):.{digits}f}"


def summary_line(a: dict) -> str:
    """The one-line summary of a bundle's metrics (rounded; the JSON keeps them unrounded)."""
    t = a["slices"]["at_threshold"]
    return (f"bundle A on {a['n_studies']} synthetic studies: slice sensitivity {_fig(t['sensitivity'])}, "
            f"specificity {_fig(t['specificity'])}, AUROC {_fig(a['slices']['auroc'])}; risk accuracy pipeline "
            f"{_fig(a['pipeline']['risk']['accuracy'])} vs UNET on all slices "
            f"{_fig(a['unet_all_slices']['risk']['accuracy'])}")


def coca_study_dirs(root) -> list[Path]:
    """The labelled study folders of ``root`` (the study definition of every command,
    :func:`..data.studies.list_study_inputs`); a study without labels is an error."""
    from ..data.studies import is_study_dir, list_study_inputs
    from ..errors import InputError

    studies = list_study_inputs(root)
    bad = [s.name for s in studies if s.labels is None or not is_study_dir(s.labels.parent)]
    if bad:
        raise InputError(f"--coca: {len(bad)} studies of {root} are not labelled study folders "
                         f"(ct.nrrd, labels.nrrd, study.json; see 'ccdino coca'): {', '.join(bad[:5])}")
    return [s.labels.parent for s in studies]


def run(args: argparse.Namespace) -> int:
    from ..data.splits import HELDOUT_SYNTHETIC_SEEDS
    from ..errors import InputError
    from ..evaluation.pipeline_eval import compare_slice_detection, evaluate_bundle, summarise, synthetic_study_dirs
    from ..pipeline import load_bundle
    from ..report import write_json

    from ..outputs import check_output_files

    out = Path(args.out)
    check_output_files([(out, "--out")], overwrite=args.overwrite)
    seeds = parse_seeds(args.synthetic_seeds)
    outside = [s for s in seeds if s not in HELDOUT_SYNTHETIC_SEEDS]
    if outside:
        print(f"ccdino: warning: {len(outside)} seed(s) are outside the held-out range "
              f"{HELDOUT_SYNTHETIC_SEEDS.start}:{HELDOUT_SYNTHETIC_SEEDS.stop}; a model may have been trained on them",
              file=sys.stderr)

    progress = progress_printer(in_place=True)

    cache = Path(args.cache) if args.cache else out.parent / "eval-studies"
    print(f"studies: synthetic seeds {seeds.start}:{seeds.stop} in {cache}", file=sys.stderr)
    sets = {"synthetic": synthetic_study_dirs(seeds, cache, progress)}
    if args.coca:
        sets["coca"] = coca_study_dirs(args.coca)

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
    print(summary_line(result["synthetic"]["A"]), file=sys.stderr)
    print(f"wrote {out}")
    return 0
