"""Train the per-artery calcium segmenter: MONAI 2D UNet, 5 classes, Dice + CE.

    python -m training.train_segmenter --studies DIR --out DIR

* Samples: every calcified slice of the training studies plus ``--neg-ratio`` times as
  many slices without calcium (random, seeded), patient-level split as the detector's.
* Input: the inference pipeline's segmenter input (heart field of ``--crop-mm`` resampled
  to ``--input-size`` px, HU windows of the slice and of ``--neighbours`` slices on each
  side; :func:`CoronaryCalciumDINOLib.pipeline.preprocess.segmenter_input`). Targets: the
  labels on the same field (nearest neighbour).
* Training on random ``--patch`` x ``--patch`` crops of the field, centred on a lesion
  pixel (with jitter) for ``--lesion-fraction`` of them; small HU offset / noise
  augmentation. No flips: a left-right flip would swap the arteries.
* Validation: per-artery Dice on the validation studies' calcified slices, whole field.

Outputs in ``--out``: ``segmenter.pt`` (state dict + config) and ``segmenter_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from CoronaryCalciumDINOLib.constants import ARTERIES

SEGMENTER_FILE = "segmenter.pt"
METRICS_FILE = "segmenter_metrics.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_segmenter", description=__doc__.split("\n")[0])
    p.add_argument("--studies", required=True, help="folder of study folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-mm", type=float, default=150.0)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--neighbours", type=int, default=1)
    p.add_argument("--channels", default="16,32,64,128", help="UNet channels per level")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="training crop (px, divisible by the UNet's stride product)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--neg-ratio", type=float, default=0.3, help="negative slices per calcified slice")
    p.add_argument("--lesion-fraction", type=float, default=0.8, help="share of crops centred on a lesion")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def config_from_args(args):
    from CoronaryCalciumDINOLib.models.unet import SegmenterConfig

    channels = [int(c) for c in str(args.channels).split(",")]
    return SegmenterConfig.from_dict({
        "neighbours": args.neighbours, "crop_mm": args.crop_mm, "input_size": args.input_size,
        "channels": channels, "strides": [2] * (len(channels) - 1),
    })


def study_samples(study_dir: Path, cfg, neg_ratio: float, rng: np.random.Generator, all_calcified_only: bool = False):
    """(hu (n, 2k+1, S, S) float16, labels (n, S, S) uint8) of one study's training slices.

    HU are the resampled field (windows are applied per batch, so augmentation can shift
    HU first); slices: all calcified ones + ``neg_ratio`` x as many negatives.
    """
    from CoronaryCalciumDINOLib.data.studies import load_study
    from CoronaryCalciumDINOLib.pipeline import preprocess as pp

    st = load_study(study_dir, with_heart=False)
    hu = np.ascontiguousarray(st.ct.hu, dtype=np.float32)
    pos = np.flatnonzero(st.labels.reshape(st.labels.shape[0], -1).any(axis=1))
    neg_all = np.setdiff1d(np.arange(hu.shape[0]), pos)
    n_neg = 0 if all_calcified_only else min(len(neg_all), int(round(neg_ratio * max(len(pos), 1))))
    neg = rng.choice(neg_all, size=n_neg, replace=False) if n_neg else np.zeros(0, int)
    idx = np.sort(np.concatenate([pos, neg]).astype(int))
    if idx.size == 0:
        return None
    field = pp.field_for(pp.heart_centre(hu, st.ct.spacing), st.ct.spacing, cfg.crop_mm)
    stack = pp.neighbour_stack(hu, idx, cfg.neighbours)
    n, m = stack.shape[:2]
    f = pp.resample_hu(pp.extract_field(stack.reshape(n * m, *stack.shape[2:]), field), cfg.input_size)
    x = f.reshape(n, m, cfg.input_size, cfg.input_size).numpy().astype(np.float16)
    y = pp.labels_to_field(st.labels[idx], field, cfg.input_size)
    return x, y


def windows_batch(hu, cfg):
    """(b, m, S, S) HU tensor -> (b, m * windows, S, S) network input."""
    from CoronaryCalciumDINOLib.data.slices import hu_to_windows

    w = hu_to_windows(hu.float(), cfg.windows)  # (b, m, w, S, S)
    return w.reshape(w.shape[0], -1, *w.shape[-2:])


def random_crops(x: np.ndarray, y: np.ndarray, idx: np.ndarray, patch: int, lesion_fraction: float, rng):
    """Patches (b, m, p, p) / (b, p, p), centred on a lesion pixel for ``lesion_fraction``."""
    s = x.shape[-1]
    xs, ys = [], []
    for i in idx:
        lab = y[i]
        if lab.any() and rng.random() < lesion_fraction:
            py, px = np.argwhere(lab > 0)[rng.integers(0, int((lab > 0).sum()))]
            cy = int(py + rng.integers(-patch // 4, patch // 4 + 1))
            cx = int(px + rng.integers(-patch // 4, patch // 4 + 1))
        else:
            cy, cx = rng.integers(patch // 2, s - patch // 2 + 1, size=2)
        y0 = int(np.clip(cy - patch // 2, 0, s - patch))
        x0 = int(np.clip(cx - patch // 2, 0, s - patch))
        xs.append(x[i, :, y0 : y0 + patch, x0 : x0 + patch])
        ys.append(y[i, y0 : y0 + patch, x0 : x0 + patch])
    return np.stack(xs), np.stack(ys)


def dice(p: np.ndarray, t: np.ndarray) -> float | None:
    """Dice of two boolean masks (None when both are empty)."""
    den = int(p.sum() + t.sum())
    return None if den == 0 else 2.0 * int((p & t).sum()) / den


def dice_per_class(pred: np.ndarray, target: np.ndarray) -> dict:
    """Dice of each artery over all given pixels (None where absent from both)."""
    return {name: dice(pred == k, target == k) for k, name in enumerate(ARTERIES, start=1)}


def evaluate(model, x: np.ndarray, y: np.ndarray, cfg, dev, batch: int = 8) -> dict:
    import torch

    from CoronaryCalciumDINOLib.pipeline.device import autocast_for

    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            inp = windows_batch(torch.from_numpy(x[s : s + batch]).to(dev), cfg)
            with autocast_for(dev):
                preds.append(model(inp).argmax(1).to(torch.uint8).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros_like(y)
    return {"dice": dice_per_class(pred, y), "dice_any_calcium": dice(pred > 0, y > 0), "n_slices": int(len(y))}


def main(argv=None) -> int:
    import torch
    from monai.losses import DiceCELoss

    from CoronaryCalciumDINOLib.models.unet import build_unet
    from CoronaryCalciumDINOLib.pipeline.device import autocast_for

    from .common.stages import start_stage

    args = parse_args(argv)
    cfg = config_from_args(args)
    if args.patch % cfg.divisor or args.patch > cfg.input_size:
        raise SystemExit(f"--patch must be <= --input-size and divisible by {cfg.divisor}")
    t0 = time.perf_counter()
    out, dev, train_dirs, val_dirs = start_stage(args, "segmenter")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)


    def gather(ds, calcified_only):
        xs, ys = [], []
        for d in ds:
            s = study_samples(d, cfg, args.neg_ratio, rng, calcified_only)
            if s is not None:
                xs.append(s[0])
                ys.append(s[1])
        if not xs:
            return np.zeros((0, 2 * cfg.neighbours + 1, cfg.input_size, cfg.input_size), np.float16), np.zeros((0, cfg.input_size, cfg.input_size), np.uint8)
        return np.concatenate(xs), np.concatenate(ys)

    xt, yt = gather(train_dirs, False)
    xv, yv = gather(val_dirs, True)
    if len(xt) == 0:
        raise SystemExit("no training slices")
    print(f"[segmenter] {len(xt)} training slices ({int((yt.reshape(len(yt), -1).max(1) > 0).sum())} calcified), "
          f"{len(xv)} validation slices; data in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    model = build_unet(cfg).to(dev)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(args.steps, 1), pct_start=0.1)
    losses = []
    model.train()
    for step in range(args.steps):
        idx = rng.integers(0, len(xt), size=args.batch)
        xb, yb = random_crops(xt, yt, idx, args.patch, args.lesion_fraction, rng)
        hu = torch.from_numpy(xb.astype(np.float32)).to(dev)
        # augmentation: HU offset (calibration drift) and noise, never a flip
        hu = hu + torch.empty(hu.shape[0], 1, 1, 1, device=dev).uniform_(-15, 15)
        hu = hu + torch.randn_like(hu) * float(rng.uniform(0, 12))
        inp = windows_batch(hu, cfg)
        target = torch.from_numpy(yb.astype(np.int64))[:, None].to(dev)
        with autocast_for(dev):
            logits = model(inp)
        loss = loss_fn(logits.float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"[segmenter] step {step + 1}/{args.steps} loss {np.mean(losses[-50:]):.4f}", file=sys.stderr)

    val = evaluate(model, xv, yv, cfg, dev) if len(xv) else {"dice": None, "n_slices": 0}
    metrics = {
        "train_studies": [d.name for d in train_dirs], "val_studies": [d.name for d in val_dirs],
        "n_train_slices": int(len(xt)), "steps": args.steps, "final_loss": float(np.mean(losses[-50:])),
        "val": val, "config": cfg.to_dict(), "seconds": time.perf_counter() - t0,
    }
    model = model.cpu().eval()
    torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict()}, out / SEGMENTER_FILE)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[segmenter] validation Dice {val.get('dice')} (any calcium {val.get('dice_any_calcium')}) "
          f"in {metrics['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
