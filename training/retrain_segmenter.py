"""A bundle with its segmenter trained again on a candidate cache; the rest of it kept.

    python -m training.retrain_segmenter --bundle B (--train T.npz [--val V.npz] | --studies DIR [--n-val 30]) --out OUT
        [--steps 2000] [--seed 0] [--outside-max-mm2 20] [--size-power 0.5] [--coarse-dropout 0.5] [--dropped-learn calcium]
        [--version V] [--name N] [--note TEXT] [--overwrite]
        [--device auto]

The segmenter (the per-artery 2D UNet on candidate crops) is trained as the recipe's
supervised stage trains it (:func:`training.train_candidates.train_segmenter`, the
architecture of the bundle's own segmenter) on a cache of :mod:`training.candidate_data`
(e.g. built from other studies, or from studies with broad plaques). With ``--studies DIR``
(synthetic study folders, e.g. from ``ccdino synth``) the two caches are built first with
the bundle's own candidate settings, in ``DIR`` (``segmenter-train.npz``: all studies but the
last ``--n-val``, at most :data:`MAX_NEG` non-coronary candidates each; ``segmenter-val.npz``:
the last ``--n-val``, every candidate), and reused while their settings and study names
match (``--rebuild`` builds them again, e.g. after the pipeline's candidates changed). The backbone, the
detector and its threshold, the noise rule and the phantom head are the bundle's, unchanged.
The cache must hold the bundle's own candidates (crop size, pixel, HU windows, threshold and
context); a segmenter trained on other crops would be given inputs it never saw.

Written: a bundle folder ``OUT`` (name and version from the bundle unless given; its manifest
says what was retrained and on what; ``--note`` adds a paragraph to its model card, e.g. how
to rebuild it and where it was measured; the bundle's metrics are not carried over, as they
measured the old segmenter: measure the new bundle, e.g. ``ccdino evaluate --bundle OUT``).
The shipped bundle's folder is never written. With ``--val``, the segmenter's figures on the
validation cache are printed and recorded: the share of coronary candidates it calls calcium
(mean probability over the candidate >= 0.5, as the pipeline decides) and of the others.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

#: Non-coronary candidates kept per study in a training cache built from ``--studies``.
MAX_NEG = 500
#: Candidate settings a cache must share with the bundle.
SAME_CANDIDATES = ("threshold_hu", "min_area_mm2", "field_mm", "crop_px", "pixel_mm", "windows", "context")


def _error(msg: str) -> int:
    print(f"retrain_segmenter: error: {msg}", file=sys.stderr)
    return 2


def mismatch(bundle_candidates: dict, cache_config: dict) -> str | None:
    """The first candidate setting in which a cache differs from the bundle (None: none)."""
    for key in SAME_CANDIDATES:
        a, b = bundle_candidates.get(key), cache_config.get(key)
        if key == "windows":
            a, b = [list(map(float, w)) for w in a or []], [list(map(float, w)) for w in b or []]
        if a != b:
            return f"{key} (bundle {a!r}, cache {b!r})"
    return None


#: Candidate size bins (mm^2) of the validation figures: specks, small, large, very large.
SIZE_BINS = ((0.0, 5.0), (5.0, 20.0), (20.0, 50.0), (50.0, float("inf")))


def validation_figures(net, val: dict) -> dict:
    """The share of the validation cache's coronary candidates the segmenter calls calcium and
    of the others, in all and per size bin (:data:`SIZE_BINS`; ``by_size``: bin -> [coronary,
    their share called calcium, others, their share]; a share is None where there are none)."""
    from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_INDEX
    from training.train_candidates import segmenter_candidate_probs

    pos = val["target"] > 0
    if pos.size == 0:  # a validation cache without candidates
        return {"candidates": 0, "coronary": 0, "coronary_called_calcium": None, "others_called_calcium": None}
    called = (1.0 - segmenter_candidate_probs(net, val, val["masks"])[:, 0]) >= 0.5
    area = np.exp(np.asarray(val["context"])[:, CONTEXT_INDEX["log_area_mm2"]])

    def share(m):
        return float(called[m].mean()) if m.any() else None

    by_size = {}
    for lo, hi in SIZE_BINS:
        b = (area >= lo) & (area < hi)
        by_size[f"{lo:g}-{hi:g}"] = [int((b & pos).sum()), share(b & pos), int((b & ~pos).sum()), share(b & ~pos)]
    return {"candidates": int(pos.size), "coronary": int(pos.sum()),
            "coronary_called_calcium": share(pos), "others_called_calcium": share(~pos), "by_size": by_size}


def main(argv=None) -> int:
    from training.candidate_data import SEGMENTER_OUTSIDE_MAX_MM2, add_segmenter_draw_arguments, segmenter_draw_problem

    ap = argparse.ArgumentParser(prog="python -m training.retrain_segmenter", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, metavar="PATH", help="bundle to start from (default: the default bundle)")
    ap.add_argument("--train", type=Path, default=None, help="training cache (training.candidate_data)")
    ap.add_argument("--val", type=Path, default=None, help="validation cache: figures printed and recorded")
    ap.add_argument("--studies", type=Path, default=None, metavar="DIR",
                    help="synthetic study folders: the caches are built from them (instead of --train / --val)")
    ap.add_argument("--n-val", type=int, default=None, help="with --studies: the last N studies validate (default 30)")
    ap.add_argument("--rebuild", action="store_true",
                    help="with --studies: build the caches again even where they match (e.g. after the pipeline changed)")
    ap.add_argument("--out", required=True, type=Path, help="new bundle folder")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--steps", type=int, default=2000, help="segmenter steps (default 2000, the recipe's)")
    ap.add_argument("--outside-max-mm2", type=float, default=SEGMENTER_OUTSIDE_MAX_MM2,
                    help="of a --train cache that also holds the candidates the heart region leaves out (the recipe's), "
                         f"those of at most this area train too, as in the recipe (default {SEGMENTER_OUTSIDE_MAX_MM2:g}; "
                         "0: none)")
    add_segmenter_draw_arguments(ap, prefix="--")  # as in the recipe
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="bundle name (default: the bundle's)")
    ap.add_argument("--version", default=None, help="bundle version (default: the bundle's + '-seg')")
    ap.add_argument("--note", default=None, metavar="TEXT",
                    help="a paragraph for the new bundle's model card (e.g. how to rebuild it, where it was measured)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from CoronaryCalciumDINOLib.errors import CCDinoError
    from CoronaryCalciumDINOLib.models.bundle import DEFAULT_BUNDLE_DIR, MODEL_CARD, load_bundle, save_bundle

    if args.out.resolve() == Path(DEFAULT_BUNDLE_DIR).resolve():
        return _error(f"--out {args.out} is the shipped bundle's folder; give another one")
    if args.out.exists() and not args.overwrite:
        return _error(f"--out {args.out} exists (use --overwrite)")
    if args.steps < 1:
        return _error("--steps must be >= 1")
    problem = segmenter_draw_problem(args.size_power, args.coarse_dropout, args.dropped_learn, prefix="--")
    if problem:
        return _error(problem)
    if (args.train is None) == (args.studies is None):
        return _error("give either --train (a cache) or --studies (study folders)")
    if args.studies is not None and args.val is not None:
        return _error("--val comes with --train; with --studies the last --n-val studies validate")
    if args.studies is None and (args.n_val is not None or args.rebuild):
        return _error("--n-val and --rebuild come with --studies")
    for cache in (args.train, args.val):
        if cache is not None and not cache.is_file():
            return _error(f"no cache file {cache}")
    import torch

    from training.candidate_data import load_cache
    from training.train_candidates import region_part, segmenter_config, train_segmenter

    torch.set_num_threads(max(1, args.threads))
    try:
        b = load_bundle(args.bundle)
    except CCDinoError as exc:
        return _error(str(exc).splitlines()[0])
    m = b.manifest
    if args.studies is not None:
        from CoronaryCalciumDINOLib.data.studies import list_studies

        try:
            dirs = list_studies(args.studies)
        except CCDinoError as exc:
            return _error(str(exc).splitlines()[0])
        n_val = 30 if args.n_val is None else args.n_val
        if len(dirs) < 2:
            return _error(f"{args.studies} holds {len(dirs)} study folder(s); --studies needs at least 2")
        if not 1 <= n_val < len(dirs):
            return _error(f"--n-val must be 1..{len(dirs) - 1} ({len(dirs)} studies in {args.studies})")
        from training.candidate_data import build_cache

        caches = (args.studies / "segmenter-train.npz", args.studies / "segmenter-val.npz")
        try:
            if args.rebuild:
                for cache in caches:
                    cache.unlink(missing_ok=True)
            args.train = build_cache(dirs[:-n_val], caches[0], b.candidate_config, max_neg=MAX_NEG)
            args.val = build_cache(dirs[-n_val:], caches[1], b.candidate_config, max_neg=None, n_random=0)
        except (CCDinoError, OSError) as exc:
            return _error(f"building the caches from {args.studies}: {str(exc).splitlines()[0]}")
    train = load_cache(args.train)
    val = load_cache(args.val) if args.val is not None else None
    for name, cache in (("--train", train), ("--val", val)):
        if cache is not None:
            bad = mismatch(m["candidates"], cache["meta"]["config"])
            if bad:
                return _error(f"{name} holds other candidates than the bundle's: {bad}")
    if not (train["target"] > 0).any():
        return _error(f"the training cache {args.train} holds no coronary candidate")
    cfg = segmenter_config(train, tuple(m["segmenter"]["channels"]))
    t0 = time.perf_counter()
    part = region_part(train, args.outside_max_mm2)
    net = train_segmenter(part, cfg, steps=args.steps, seed=args.seed, device=args.device,
                          size_power=args.size_power, coarse_dropout=args.coarse_dropout,
                          dropped_learn=args.dropped_learn)
    seconds = time.perf_counter() - t0
    what = {"train_cache": str(args.train), "train_candidates": int(part["target"].size),
            "cache_candidates": int(train["target"].size), "outside_max_mm2": args.outside_max_mm2,
            "train_studies": len(train["meta"].get("studies", [])), "steps": args.steps, "seed": args.seed,
            "size_power": args.size_power, "coarse_dropout": args.coarse_dropout,
            "dropped_learn": args.dropped_learn,
            "seconds": round(seconds, 1), "from_bundle": f"{m['name']} {m['version']}", "from_sha256": b.sha256,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if val is not None:
        what["validation"] = validation_figures(net, val)
        print("segmenter (validation):", what["validation"])
    version = args.version or f"{m['version']}-seg"
    name = args.name or m["name"]
    note = (f"segmenter retrained on {what['train_studies']} studies' candidates ({args.train.name}, "
            f"{args.steps} steps, seed {args.seed}, size power {args.size_power:g}, coarse dropout "
            f"{args.coarse_dropout:g}" + (f", dropped draws learn {args.dropped_learn}" if args.coarse_dropout else "")
            + "); backbone, detector, threshold, noise rule and phantom head "
            f"those of {m['name']} {m['version']}")
    old_card = (b.path / MODEL_CARD).read_text(encoding="utf-8") if (b.path / MODEL_CARD).is_file() else ""
    extra = f"{args.note.strip()}\n\n" if args.note and args.note.strip() else ""
    card = (f"# {name} {version}\n\n{note}. Its metrics are not those of {m['name']} {m['version']}: measure "
            f"it again.\n\n{extra}## The bundle it started from\n\n{old_card}")
    try:
        out = save_bundle(
            args.out, name=name, version=version, trained_on=f"{m['trained_on']}; {note}",
            not_validated_on=m["not_validated_on"], backbone_config=m["backbone"],
            backbone_state=b.backbone.state_dict(), detector_state=b.detector.state_dict(),
            detector_info=m["detector"], segmenter_config=net.config.to_dict(), segmenter_state=net.state_dict(),
            candidates=m["candidates"], noise_rule=m.get("noise_rule"),
            phantom_state=None if b.phantom_detector is None else b.phantom_detector.state_dict(),
            phantom_info=m.get("phantom_detector"), scoring_threshold_hu=float(m["scoring"]["threshold_hu"]),
            metrics={"segmenter_retrained": what}, model_card=card, overwrite=args.overwrite)
    except CCDinoError as exc:
        return _error(str(exc).splitlines()[0])
    print(f"wrote {out} ({name} {version}; segmenter trained in {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
