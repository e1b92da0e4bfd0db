"""The common start of the supervised training stages (detector, segmenter)."""

from __future__ import annotations

import sys
from pathlib import Path


def split_dirs(dirs, val_fraction: float, seed: int):
    """Patient-level (here: study-level) train / validation split of study folders.

    Stratified: studies with and without calcium are split separately, so that the
    validation set holds calcified slices whenever at least two studies have some.
    """
    from CoronaryCalciumDINOLib.data.splits import make_splits
    from CoronaryCalciumDINOLib.data.studies import read_study_meta

    by_id = {Path(d).name: Path(d) for d in dirs}
    calcified = {i for i, d in by_id.items() if read_study_meta(d).get("slices_with_calcium")}
    train, val = [], []
    for group in (sorted(calcified), sorted(set(by_id) - calcified)):
        if len(group) == 1:
            train += group
        elif group:
            sp = make_splits(group, (1.0 - val_fraction, val_fraction, 0.0), seed=seed)
            train += sp["train"]
            val += sp["val"]
    return [by_id[i] for i in sorted(train)], [by_id[i] for i in sorted(val)]


def start_stage(args, name: str):
    """Threads, output folder, device and the study split of a stage's ``args``.

    Returns ``(out_dir, device, train_dirs, val_dirs)``.
    """
    import torch

    from CoronaryCalciumDINOLib.data.studies import list_studies
    from CoronaryCalciumDINOLib.pipeline.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(args.device)
    train_dirs, val_dirs = split_dirs(list_studies(args.studies), args.val_fraction, args.seed)
    print(f"[{name}] {len(train_dirs)} train / {len(val_dirs)} validation studies", file=sys.stderr)
    return out, dev, train_dirs, val_dirs
