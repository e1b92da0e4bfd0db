"""Train the slice detector: a linear head on frozen teacher-ViT features.

    python -m training.train_detector --studies DIR --backbone SSL_OUT_DIR --out DIR

* ``--studies``: a folder of study folders (:mod:`CoronaryCalciumDINOLib.data.studies`);
  a slice is positive when ``study.json["slices_with_calcium"]`` lists it.
* ``--backbone``: the self-supervised stage's output folder (``teacher_backbone.pth`` +
  ``backbone_config.json``); the backbone stays frozen.
* Features: every slice through the inference pipeline's own preprocessing (heart field,
  resize, HU windows; :mod:`CoronaryCalciumDINOLib.pipeline.preprocess`), then CLS token
  (+) mean patch token.
* Patient-level split into train / validation (:mod:`CoronaryCalciumDINOLib.data.splits`).
* Head: feature standardisation + one linear layer, BCE with ``pos_weight`` = negatives /
  positives, full-batch AdamW.
* Threshold: highest one with validation sensitivity >= ``--target-sensitivity`` (0.90);
  the Youden point is reported too.

Outputs in ``--out``: ``detector.pt`` (state dict + thresholds + preprocessing) and
``detector_metrics.json`` (validation slice metrics at both thresholds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from CoronaryCalciumDINOLib.data.slices import DEFAULT_BOX_MM, DEFAULT_WINDOWS

from .common.stages import split_dirs, start_stage  # noqa: F401 (split_dirs: used by the probes)

DETECTOR_FILE = "detector.pt"
METRICS_FILE = "detector_metrics.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_detector", description=__doc__.split("\n")[0])
    p.add_argument("--studies", required=True, help="folder of study folders")
    p.add_argument("--backbone", required=True, help="SSL output folder (teacher_backbone.pth + backbone_config.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300, help="full-batch optimisation steps")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument("--crop-mm", type=float, default=DEFAULT_BOX_MM, help="side of the heart field (mm)")
    p.add_argument("--input-size", type=int, default=None, help="detector input size (default: the backbone's img_size)")
    p.add_argument("--batch", type=int, default=32, help="slices per feature batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p.parse_args(argv)


def study_features(study_dir: Path, backbone, prep: dict, dev, batch: int, location_conditioning: bool = False):
    """(features (z, D) float32, positives (z,) bool) of every slice of one study."""
    import torch

    from CoronaryCalciumDINOLib.data.studies import load_study
    from CoronaryCalciumDINOLib.models.backbone import extract_features
    from CoronaryCalciumDINOLib.pipeline import preprocess as pp
    from CoronaryCalciumDINOLib.pipeline.device import autocast_for, chunks

    st = load_study(study_dir, with_heart=False)
    hu = np.ascontiguousarray(st.ct.hu, dtype=np.float32)
    field = pp.field_for(pp.heart_centre(hu, st.ct.spacing), st.ct.spacing, float(prep["crop_mm"]))
    locations = pp.slice_locations(st.ct) if location_conditioning else None
    feats = []
    with torch.inference_mode():
        for chunk in chunks(np.arange(hu.shape[0]), batch):
            x = pp.to_windows(pp.extract_field(hu[chunk], field), int(prep["input_size"]), prep["windows"]).to(dev)
            loc = None if locations is None else torch.from_numpy(locations[chunk]).to(dev)
            with autocast_for(dev):
                f = extract_features(backbone, x, location=loc)
            feats.append(f.float().cpu().numpy())
    positives = np.zeros(hu.shape[0], dtype=bool)
    positives[[int(z) for z in st.meta.get("slices_with_calcium", [])]] = True
    return np.concatenate(feats), positives


def train_head(features: np.ndarray, labels: np.ndarray, epochs: int, lr: float, weight_decay: float, seed: int = 0):
    """Fit :class:`SliceDetector` (standardisation + linear) with weighted BCE; returns it."""
    import torch

    from CoronaryCalciumDINOLib.models.detector import SliceDetector

    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    det = SliceDetector(x.shape[1])
    det.set_standardisation(x)
    n_pos = float(y.sum())
    pos_weight = torch.tensor((len(y) - n_pos) / max(n_pos, 1.0))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(det.linear.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(det(x), y)
        loss.backward()
        opt.step()
        sched.step()
    return det.eval()


def predict(det, features: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(det(torch.from_numpy(np.asarray(features, dtype=np.float32)))).numpy()


def main(argv=None) -> int:
    import torch

    from CoronaryCalciumDINOLib.evaluation.metrics import slice_metrics
    from CoronaryCalciumDINOLib.models.backbone import load_backbone_dir
    from CoronaryCalciumDINOLib.models.detector import choose_thresholds

    args = parse_args(argv)
    t0 = time.perf_counter()
    out, dev, train_dirs, val_dirs = start_stage(args, "detector")
    backbone = load_backbone_dir(args.backbone).to(dev)
    cfg = json.loads((Path(args.backbone) / "backbone_config.json").read_text())
    prep = {
        "windows": [list(map(float, w)) for w in DEFAULT_WINDOWS],
        "crop_mm": float(args.crop_mm),
        "input_size": int(args.input_size or cfg.get("img_size", 224)),
    }

    def features(ds):
        f, y = [], []
        for d in ds:
            fi, yi = study_features(d, backbone, prep, dev, args.batch, bool(cfg.get("location_conditioning")))
            f.append(fi)
            y.append(yi)
        return np.concatenate(f), np.concatenate(y)

    xf, yf = features(train_dirs)
    xv, yv = features(val_dirs)
    t_feat = time.perf_counter() - t0
    print(f"[detector] features {xf.shape} train ({int(yf.sum())} positive), {xv.shape} val "
          f"({int(yv.sum())} positive) in {t_feat:.1f} s", file=sys.stderr)
    det = train_head(xf, yf, args.epochs, args.lr, args.weight_decay, args.seed)
    pv = predict(det, xv)
    thr = choose_thresholds(yv, pv, args.target_sensitivity)
    metrics = {
        "train_studies": [d.name for d in train_dirs],
        "val_studies": [d.name for d in val_dirs],
        "n_train_slices": int(len(yf)), "n_train_positive": int(yf.sum()),
        "train": slice_metrics(yf, predict(det, xf), thr["threshold"], args.target_sensitivity),
        "val": slice_metrics(yv, pv, thr["threshold"], args.target_sensitivity),
        "val_at_youden": slice_metrics(yv, pv, thr["youden_threshold"] if thr["youden_threshold"] is not None else 0.5,
                                       args.target_sensitivity),
        **thr,
        "seconds": time.perf_counter() - t0,
    }
    torch.save({"state_dict": det.state_dict(), "in_dim": det.in_dim, "preprocessing": prep, **thr}, out / DETECTOR_FILE)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    v = metrics["val"]["at_threshold"]
    print(f"[detector] threshold {thr['threshold']:.4f} (Youden {thr['youden_threshold']}): val sensitivity "
          f"{v['sensitivity']}, specificity {v['specificity']}, AUROC {metrics['val']['auroc']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
