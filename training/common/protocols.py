"""Evaluation protocols over frozen ViT features (DINO / DINOv2-for-radiology style).

All protocols take features as arrays ``(N, D)`` with integer class labels ``(N,)`` and,
where splits matter, patient ids ``(N,)`` and a split array of ``"train"`` / ``"val"`` /
``"test"`` strings. Splits must be patient-disjoint (checked).

* :func:`knn_eval` -- weighted kNN (Wu et al. / DINO): L2-normalised features, cosine
  similarity, the k nearest training samples vote with weight ``exp(sim / T)``, T = 0.07,
  k in {5, 20, 50, 100, 200} (capped at the training size).
* :func:`linear_probe` -- a linear classifier on standardised frozen features; grid over
  named feature sets (e.g. last 1 vs last 4 blocks, with / without mean-pooled patch tokens)
  and learning rates {1e-3, 5e-3, 1e-2, 5e-2}; SGD momentum 0.9, cosine schedule, 10 epochs;
  the best configuration on validation is retrained on train + val and reported on test.
* :func:`few_shot_curve` -- K in {1, 2, 4, 8, 16} *patients* per class, 5 seeds, a linear
  probe (or kNN) on the few-shot set -> mean +- sd test AUROC per K.
* :func:`finetune_classifier` -- full fine-tuning (lr 1e-5), LoRA or BitFit of the backbone
  with a linear slice-classifier head (see :mod:`.peft`).
* :func:`extract_block_features` -- the frozen multi-block features the probes use.

Binary tasks report AUROC of the class-1 probability; multi-class tasks report the macro
one-vs-rest AUROC over classes present in the test labels.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from CoronaryCalciumDINOLib.errors import Cancelled, InputError
from CoronaryCalciumDINOLib.evaluation import metrics as M
from CoronaryCalciumDINOLib.models.backbone import extract_features, iter_blocks

from .peft import apply_bitfit, apply_lora, merge_lora, trainable_parameter_count

KNN_KS: tuple[int, ...] = (5, 20, 50, 100, 200)
KNN_TEMPERATURE = 0.07
LINEAR_LRS: tuple[float, ...] = (1e-3, 5e-3, 1e-2, 5e-2)
FEW_SHOT_KS: tuple[int, ...] = (1, 2, 4, 8, 16)
FEW_SHOT_SEEDS = 5
SPLITS = ("train", "val", "test")

# Optional[...], not `... | None`: a type alias is evaluated at import time (Python 3.9)
Progress = Optional[Callable[[float, str], None]]
Cancel = Optional[Callable[[], bool]]


# ----------------------------------------------------------------------------- input checks


def _features(x, name: str = "features") -> np.ndarray:
    f = np.asarray(x, dtype=np.float32)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty (N, D) array, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise InputError(f"{name} contain NaN or infinite values")
    return f


def _labels(y, n: int, name: str = "labels") -> np.ndarray:
    lab = np.asarray(y).ravel()
    if lab.size != n:
        raise InputError(f"{name} ({lab.size}) and features ({n}) differ in length")
    if lab.size and not np.all(np.equal(np.mod(lab, 1), 0)):
        raise InputError(f"{name} must be integer class indices")
    lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise InputError(f"{name} must be >= 0")
    return lab


def split_masks(split, n: int) -> dict[str, np.ndarray]:
    s = np.asarray(split).astype(str).ravel()
    if s.size != n:
        raise InputError(f"split ({s.size}) and features ({n}) differ in length")
    bad = sorted(set(np.unique(s)) - set(SPLITS))
    if bad:
        raise InputError(f"unknown split names {bad}; use 'train', 'val', 'test'")
    return {name: s == name for name in SPLITS}


def check_patient_disjoint(patient_ids, masks: Mapping[str, np.ndarray]) -> None:
    """Raise :class:`InputError` when one patient appears in two splits."""
    pid = np.asarray(patient_ids).astype(str).ravel()
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = set(pid[masks[a]]) & set(pid[masks[b]])
            if both:
                raise InputError(f"patient {sorted(both)[0]} is in both the {a} and {b} split")


def _tick(progress: Progress, cancel: Cancel, fraction: float, message: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled("evaluation cancelled")
    if progress is not None:
        progress(float(fraction), message)


def _classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict:
    """Accuracy and AUROC (binary: class-1 probability; multi-class: macro one-vs-rest)."""
    pred = proba.argmax(axis=1)
    out = {"n": int(y.size), "accuracy": float(np.mean(pred == y))}
    if proba.shape[1] == 2:
        out["auroc"] = M.auroc(y == 1, proba[:, 1])
        out["auprc"] = M.average_precision(y == 1, proba[:, 1])
    else:
        vals = [M.auroc(y == c, proba[:, c]) for c in np.unique(y) if c < proba.shape[1]]
        vals = [v for v in vals if v is not None]
        out["auroc"] = float(np.mean(vals)) if vals else None
    if out["auroc"] is None:
        out["notes"] = ["AUROC undefined: only one class in the evaluated labels"]
    return out


# ----------------------------------------------------------------------------- kNN


def knn_predict_proba(train_x, train_y, test_x, k: int, temperature: float = KNN_TEMPERATURE,
                      num_classes: int | None = None, chunk: int = 1024) -> np.ndarray:
    """Weighted kNN class probabilities (n_test, C) with cosine similarity and exp(sim/T) weights."""
    return _knn_many(train_x, train_y, test_x, [k], temperature, num_classes, chunk)[k]


def _knn_many(train_x, train_y, test_x, ks: Sequence[int], temperature: float,
              num_classes: int | None, chunk: int) -> dict[int, np.ndarray]:
    import torch

    tx = _features(train_x, "training features")
    qx = _features(test_x, "test features")
    ty = _labels(train_y, tx.shape[0], "training labels")
    if tx.shape[1] != qx.shape[1]:
        raise InputError(f"training ({tx.shape[1]}) and test ({qx.shape[1]}) feature widths differ")
    if temperature <= 0:
        raise InputError(f"kNN temperature must be > 0, got {temperature}")
    c = int(num_classes if num_classes is not None else ty.max() + 1)
    ks = sorted({min(int(k), tx.shape[0]) for k in ks})
    if ks[0] < 1:
        raise InputError("k must be >= 1")
    train = torch.nn.functional.normalize(torch.from_numpy(tx), dim=1)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(ty), c).float()
    out = {k: np.zeros((qx.shape[0], c), dtype=np.float64) for k in ks}
    with torch.no_grad():
        for start in range(0, qx.shape[0], chunk):
            q = torch.nn.functional.normalize(torch.from_numpy(qx[start:start + chunk]), dim=1)
            sim = q @ train.T
            top_sim, top_idx = sim.topk(ks[-1], dim=1)  # sorted, largest first
            w = torch.exp((top_sim - top_sim[:, :1]) / temperature)  # shift for stability
            votes = onehot[top_idx] * w.unsqueeze(-1)  # (b, kmax, C)
            for k in ks:
                s = votes[:, :k].sum(dim=1)
                out[k][start:start + chunk] = (s / s.sum(dim=1, keepdim=True)).double().numpy()
    return out


def knn_eval(train_x, train_y, test_x, test_y, ks: Sequence[int] = KNN_KS,
             temperature: float = KNN_TEMPERATURE) -> dict:
    """Weighted kNN accuracy / AUROC per k; k larger than the training set is capped.

    Returns ``{"temperature", "n_train", "per_k": {k: metrics}, "best_k", "best_accuracy"}``
    (keys of ``per_k`` are strings, JSON-ready).
    """
    tx = _features(train_x, "training features")
    ty = _labels(train_y, tx.shape[0], "training labels")
    qx = _features(test_x, "test features")
    qy = _labels(test_y, qx.shape[0], "test labels")
    c = int(max(ty.max(), qy.max()) + 1)
    probs = _knn_many(tx, ty, qx, ks, temperature, c, 1024)
    per_k = {}
    for k_req in ks:
        k = min(int(k_req), tx.shape[0])
        res = _classification_metrics(qy, probs[k])
        res["k"] = k
        per_k[str(k_req)] = res
    best = max(per_k, key=lambda k: per_k[k]["accuracy"])
    return {"temperature": float(temperature), "n_train": int(tx.shape[0]), "per_k": per_k,
            "best_k": int(best), "best_accuracy": per_k[best]["accuracy"]}


# ----------------------------------------------------------------------------- linear probe


def _linear_head(in_dim: int, num_classes: int):
    """Linear layer initialised as in DINO / DINOv2 linear evaluation: N(0, 0.01) weights, zero bias."""
    import torch

    head = torch.nn.Linear(in_dim, num_classes)
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    return head


class LinearClassifier:
    """Standardisation (train mean / std) + one linear layer; ``predict_proba`` -> softmax."""

    def __init__(self, module, mean: np.ndarray, std: np.ndarray):
        self.module = module
        self.mean = mean
        self.std = std

    def predict_proba(self, x) -> np.ndarray:
        import torch

        f = (_features(x) - self.mean) / self.std
        with torch.no_grad():
            logits = self.module(torch.from_numpy(f.astype(np.float32)))
            return torch.softmax(logits, dim=1).double().numpy()


def train_linear(x, y, num_classes: int | None = None, lr: float = 1e-2, epochs: int = 10,
                 batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 0.0,
                 balanced: bool = True, seed: int = 0) -> LinearClassifier:
    """Train a linear classifier with SGD (momentum, cosine lr decay) and cross-entropy.

    Features are standardised with their own mean / std. ``balanced`` weights the loss by
    inverse class frequency (calcified slices are rare). Deterministic for a given ``seed``;
    the global torch RNG is left untouched.
    """
    import torch

    f = _features(x)
    lab = _labels(y, f.shape[0])
    c = int(num_classes if num_classes is not None else lab.max() + 1)
    if lab.max() >= c:
        raise InputError(f"label {lab.max()} out of range for {c} classes")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError("epochs and batch size must be >= 1 and lr > 0")
    mean = f.mean(axis=0)
    std = np.maximum(f.std(axis=0), 1e-6)
    xs = torch.from_numpy(((f - mean) / std).astype(np.float32))
    ys = torch.from_numpy(lab)
    counts = np.bincount(lab, minlength=c).astype(np.float64)
    if balanced:
        w = np.where(counts > 0, counts.sum() / (c * np.maximum(counts, 1)), 0.0)
        class_w = torch.tensor(w, dtype=torch.float32)
    else:
        class_w = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _linear_head(f.shape[1], c)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(f.shape[0] / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        loss_fn = torch.nn.CrossEntropyLoss(weight=class_w)
        for _ in range(epochs):
            order = torch.randperm(f.shape[0], generator=gen)
            for s in range(steps_per_epoch):
                idx = order[s * batch_size:(s + 1) * batch_size]
                loss = loss_fn(module(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    module.eval()
    return LinearClassifier(module, mean.astype(np.float32), std.astype(np.float32))


def _selection_score(metrics: dict) -> tuple[float, str]:
    if metrics.get("auroc") is not None:
        return float(metrics["auroc"]), "auroc"
    return float(metrics["accuracy"]), "accuracy"


def linear_probe(feature_sets: Mapping[str, np.ndarray], labels, split, patient_ids=None,
                 lrs: Sequence[float] = LINEAR_LRS, epochs: int = 10, batch_size: int = 256,
                 target_sensitivity: float = 0.90, seed: int = 0,
                 progress: Progress = None, cancel: Cancel = None) -> dict:
    """Grid over (feature set, lr) on validation, retrain the best on train + val, test it.

    ``feature_sets`` maps names (e.g. ``"last1+avgpool"``) to (N, D) arrays over the same
    samples. Selection uses validation AUROC (accuracy when AUROC is undefined); ties keep
    the first configuration in grid order. For binary labels the test report also holds
    :func:`..metrics.slice_metrics` of the retrained model at threshold 0.5 and, under
    ``"at_val_threshold"``, the selected train-only model's test confusion at the threshold
    chosen on validation for ``target_sensitivity``.
    """
    if not feature_sets:
        raise InputError("no feature sets given to the linear probe")
    first = next(iter(feature_sets.values()))
    n = np.asarray(first).shape[0]
    lab = _labels(labels, n)
    masks = split_masks(split, n)
    for name in SPLITS:
        if not masks[name].any():
            raise InputError(f"the linear probe needs a non-empty {name} split")
    if patient_ids is not None:
        check_patient_disjoint(patient_ids, masks)
    c = int(lab.max() + 1)
    tr, va, te = masks["train"], masks["val"], masks["test"]
    grid, models = [], {}
    total = len(feature_sets) * len(lrs) + 1
    step = 0
    for fname, arr in feature_sets.items():
        f = _features(arr, f"feature set {fname!r}")
        if f.shape[0] != n:
            raise InputError(f"feature set {fname!r} has {f.shape[0]} rows, expected {n}")
        for lr in lrs:
            _tick(progress, cancel, step / total, f"linear probe {fname} lr={lr:g}")
            step += 1
            clf = train_linear(f[tr], lab[tr], c, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
            val = _classification_metrics(lab[va], clf.predict_proba(f[va]))
            score, metric = _selection_score(val)
            grid.append({"features": fname, "lr": float(lr), "val_metric": metric, "val_score": score,
                         "val_accuracy": val["accuracy"], "val_auroc": val.get("auroc")})
            models[(fname, float(lr))] = clf
    best = max(range(len(grid)), key=lambda i: (grid[i]["val_score"], -i))
    sel = grid[best]
    _tick(progress, cancel, step / total, "linear probe: retraining on train + val")
    f = _features(feature_sets[sel["features"]])
    trva = tr | va
    final = train_linear(f[trva], lab[trva], c, lr=sel["lr"], epochs=epochs, batch_size=batch_size, seed=seed)
    proba = final.predict_proba(f[te])
    test = _classification_metrics(lab[te], proba)
    if c == 2:
        test["slice"] = M.slice_metrics(lab[te] == 1, proba[:, 1], 0.5, target_sensitivity)
        sel_model = models[(sel["features"], sel["lr"])]
        val_p = sel_model.predict_proba(f[va])[:, 1]
        t = M.threshold_for_sensitivity(lab[va] == 1, val_p, target_sensitivity)
        if t is not None:
            test["at_val_threshold"] = M.confusion_at(lab[te] == 1, sel_model.predict_proba(f[te])[:, 1], t)
    _tick(progress, cancel, 1.0, "linear probe done")
    return {"grid": grid, "selected": {"features": sel["features"], "lr": sel["lr"],
                                       "val_metric": sel["val_metric"], "val_score": sel["val_score"]},
            "epochs": int(epochs), "n": {k: int(v.sum()) for k, v in masks.items()}, "test": test}


# ----------------------------------------------------------------------------- few-shot


def sample_few_shot(labels, patient_ids, k: int, seed: int, candidates=None) -> dict:
    """Pick ``k`` distinct patients per class and return their slices of that class.

    A patient is eligible for class c when it has at least one slice labelled c among the
    ``candidates`` (bool mask; default all). Classes are served rarest first (fewest eligible
    patients), and a patient picked for one class is not picked for another, so the few-shot
    set holds exactly ``k`` patients per class. Raises :class:`InputError` when a class has
    fewer than ``k`` eligible patients left.

    Returns ``{"indices": sorted slice indices, "patients": {class: [patient ids]}}``.
    """
    lab = np.asarray(labels).astype(np.int64).ravel()
    pid = np.asarray(patient_ids).astype(str).ravel()
    if lab.size != pid.size:
        raise InputError(f"labels ({lab.size}) and patient ids ({pid.size}) differ in length")
    if k < 1:
        raise InputError(f"few-shot K must be >= 1, got {k}")
    cand = np.ones(lab.size, bool) if candidates is None else np.asarray(candidates, bool).ravel()
    classes = np.unique(lab[cand])
    if classes.size == 0:
        raise InputError("no candidate samples for few-shot sampling")
    pools = {int(c): sorted(set(pid[cand & (lab == c)])) for c in classes}
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    chosen: dict[int, list[str]] = {}
    idx: list[np.ndarray] = []
    for c in sorted(pools, key=lambda c: (len(pools[c]), c)):
        pool = [p for p in pools[c] if p not in used]
        if len(pool) < k:
            raise InputError(f"class {c} has {len(pool)} eligible patients, fewer than K={k}")
        pick = sorted(rng.choice(np.asarray(pool), size=k, replace=False).tolist())
        used.update(pick)
        chosen[c] = pick
        idx.append(np.flatnonzero(cand & (lab == c) & np.isin(pid, pick)))
    return {"indices": np.sort(np.concatenate(idx)), "patients": {str(c): chosen[c] for c in sorted(chosen)}}


def few_shot_curve(features, labels, patient_ids, split, ks: Sequence[int] = FEW_SHOT_KS,
                   seeds: int = FEW_SHOT_SEEDS, method: str = "linear", lr: float = 1e-2,
                   epochs: int = 50, knn_k: int = 20, progress: Progress = None,
                   cancel: Cancel = None) -> dict:
    """Few-shot curve: test AUROC (mean +- sd over seeds) against K patients per class.

    Binary labels also give the test AUPRC of each seed (``auprc``, ``auprc_mean``).

    The few-shot pool is the train + val split; evaluation is on the whole test split, whose
    patients never enter the pool (checked). ``method`` is ``"linear"`` (probe with ``lr``,
    ``epochs``, full batch) or ``"knn"`` (weighted kNN with ``min(knn_k, n)`` neighbours).
    A K with too few patients is reported with a note instead of values.
    """
    if method not in ("linear", "knn"):
        raise InputError(f"few-shot method must be 'linear' or 'knn', got {method!r}")
    f = _features(features)
    lab = _labels(labels, f.shape[0])
    masks = split_masks(split, f.shape[0])
    check_patient_disjoint(patient_ids, masks)
    pool = masks["train"] | masks["val"]
    te = masks["test"]
    if not te.any() or not pool.any():
        raise InputError("few-shot evaluation needs train/val and test samples")
    c = int(lab.max() + 1)
    curve = []
    total = len(ks) * seeds
    done = 0
    for k in ks:
        aurocs, auprcs, accs, note = [], [], [], None
        for s in range(seeds):
            _tick(progress, cancel, done / total, f"few-shot K={k} seed {s}")
            done += 1
            try:
                pick = sample_few_shot(lab, patient_ids, k, seed=1000 * k + s, candidates=pool)
            except InputError as exc:
                note = str(exc)
                break
            i = pick["indices"]
            if method == "linear":
                clf = train_linear(f[i], lab[i], c, lr=lr, epochs=epochs, batch_size=max(1, i.size), seed=s)
                proba = clf.predict_proba(f[te])
            else:
                proba = knn_predict_proba(f[i], lab[i], f[te], min(knn_k, i.size), num_classes=c)
            res = _classification_metrics(lab[te], proba)
            accs.append(res["accuracy"])
            if res["auroc"] is not None:
                aurocs.append(res["auroc"])
            if res.get("auprc") is not None:
                auprcs.append(res["auprc"])
        entry = {"k": int(k), "n_seeds": len(accs), "auroc": aurocs, "accuracy": accs,
                 "auroc_mean": float(np.mean(aurocs)) if aurocs else None,
                 "auroc_sd": float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else (0.0 if aurocs else None),
                 "auprc": auprcs, "auprc_mean": float(np.mean(auprcs)) if auprcs else None,
                 "accuracy_mean": float(np.mean(accs)) if accs else None}
        if note:
            entry["note"] = note
        curve.append(entry)
    _tick(progress, cancel, 1.0, "few-shot done")
    return {"method": method, "seeds": int(seeds), "curve": curve}


# ----------------------------------------------------------------------------- frozen features


def _feature_name(n_blocks: int, mean_pool: bool) -> str:
    return f"last{n_blocks}" + ("+avgpool" if mean_pool else "")


def extract_block_features(backbone, images, blocks: Sequence[int] = (1, 4),
                           mean_pool: Sequence[bool] = (False, True), location=None,
                           batch_size: int = 64, progress: Progress = None,
                           cancel: Cancel = None) -> dict[str, np.ndarray]:
    """Frozen multi-block features of a timm ViT, DINOv2 linear-evaluation style.

    One forward pass per batch; every block output goes through the backbone's final norm.
    For each n in ``blocks`` and each flag in ``mean_pool`` the feature is the CLS tokens of
    the last n blocks concatenated, followed (when pooling) by the mean patch token of the
    last block (register tokens excluded). Keys: ``"last{n}"`` / ``"last{n}+avgpool"``;
    ``"last1+avgpool"`` equals :func:`CoronaryCalciumDINOLib.models.backbone.extract_features` (the detector's
    input). ``images``: (N, C, H, W) array or tensor; ``location``: (N,) slice locations for
    location-conditioned backbones.
    """
    import torch

    x_all = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x_all.ndim != 4 or x_all.shape[0] == 0:
        raise InputError(f"images must be a non-empty (N, C, H, W) array, got shape {tuple(x_all.shape)}")
    depth = len(backbone.blocks)
    blocks = [int(b) for b in blocks]
    if not blocks or min(blocks) < 1 or max(blocks) > depth:
        raise InputError(f"blocks must be in 1..{depth} (the backbone depth), got {blocks}")
    keep_from = depth - max(blocks)
    loc_all = None if location is None else np.asarray(location, dtype=np.float32).ravel()
    if loc_all is not None and loc_all.size != x_all.shape[0]:
        raise InputError(f"got {loc_all.size} locations for {x_all.shape[0]} images")
    npre = int(backbone.num_prefix_tokens)
    was_training = backbone.training
    backbone.eval()
    param = next(backbone.parameters())
    parts: dict[str, list[np.ndarray]] = {_feature_name(b, p): [] for b in blocks for p in mean_pool}
    n = x_all.shape[0]
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                _tick(progress, cancel, start / n, f"features {start}/{n}")
                x = x_all[start:start + batch_size].to(device=param.device, dtype=param.dtype)
                loc = None if loc_all is None else loc_all[start:start + batch_size]
                outs = [backbone.norm(h) for i, _, _, h in iter_blocks(backbone, x, loc) if i >= keep_from]
                for b in blocks:
                    cls = torch.cat([t[:, 0] for t in outs[len(outs) - b:]], dim=1)
                    for p in mean_pool:
                        feat = torch.cat([cls, outs[-1][:, npre:].mean(dim=1)], dim=1) if p else cls
                        parts[_feature_name(b, p)].append(feat.float().cpu().numpy())
    finally:
        backbone.train(was_training)
    _tick(progress, cancel, 1.0, "features done")
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


# ----------------------------------------------------------------------------- fine-tuning


FINETUNE_LRS = {"full": 1e-5, "lora": 1e-3, "bitfit": 1e-3}


class SliceClassifier:
    """A backbone plus a linear head on CLS (+) mean patch token; ``module`` is the nn.Module."""

    def __init__(self, backbone, num_classes: int):
        import torch


        class _Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone
                self.head = _linear_head(2 * int(backbone.embed_dim), num_classes)

            def forward(self, x, location=None):
                return self.head(extract_features(self.backbone, x, location))

        self.module = _Net()

    def predict_proba(self, images, location=None, batch_size: int = 64) -> np.ndarray:
        import torch

        x_all = torch.as_tensor(np.asarray(images, dtype=np.float32))
        loc_all = None if location is None else np.asarray(location, dtype=np.float32).ravel()
        dev = next(self.module.parameters()).device
        self.module.eval()
        out = []
        with torch.no_grad():
            for s in range(0, x_all.shape[0], batch_size):
                loc = None if loc_all is None else loc_all[s:s + batch_size]
                logits = self.module(x_all[s:s + batch_size].to(dev), loc)
                out.append(torch.softmax(logits.float(), dim=1).double().cpu().numpy())
        return np.concatenate(out, axis=0)


def finetune_classifier(backbone, images, labels, mode: str = "full", lr: float | None = None,
                        head_lr: float = 1e-3, epochs: int = 3, batch_size: int = 16,
                        weight_decay: float = 0.0, balanced: bool = True, location=None,
                        lora_r: int = 48, lora_alpha: float = 16.0, seed: int = 0,
                        progress: Progress = None, cancel: Cancel = None) -> tuple[SliceClassifier, dict]:
    """Train a slice classifier on a *copy* of ``backbone`` (the caller's model is untouched).

    Training runs on the device of ``backbone``'s parameters; ``images`` stay on the CPU and
    move there batch by batch.

    ``mode``: ``"full"`` (every backbone weight, lr 1e-5 by default), ``"lora"`` (LoRA r 48,
    alpha 16 on qkv / fc1 / fc2; lr 1e-3) or ``"bitfit"`` (biases only; lr 1e-3). The head
    trains at ``head_lr``. AdamW, cross-entropy (class-balanced by default). LoRA layers are
    merged after training. Returns the classifier and ``{"mode", "lr", "trainable",
    "total", "losses"}`` (mean loss per epoch).
    """
    import torch


    if mode not in FINETUNE_LRS:
        raise InputError(f"fine-tuning mode must be one of {sorted(FINETUNE_LRS)}, got {mode!r}")
    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32))
    lab = _labels(labels, x_all.shape[0])
    if x_all.ndim != 4 or x_all.shape[0] == 0:
        raise InputError(f"images must be a non-empty (N, C, H, W) array, got shape {tuple(x_all.shape)}")
    loc_all = None if location is None else np.asarray(location, dtype=np.float32).ravel()
    c = int(lab.max() + 1)
    lr = FINETUNE_LRS[mode] if lr is None else float(lr)
    dev = next(backbone.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bb = copy.deepcopy(backbone)
        if mode == "lora":
            apply_lora(bb, r=lora_r, alpha=lora_alpha)
        elif mode == "bitfit":
            apply_bitfit(bb)
        else:
            for p in bb.parameters():
                p.requires_grad_(True)
        clf = SliceClassifier(bb, c)
        net = clf.module.to(dev)
        groups = [{"params": [p for p in bb.parameters() if p.requires_grad], "lr": lr},
                  {"params": list(net.head.parameters()), "lr": head_lr}]
        opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
        counts = np.bincount(lab, minlength=c).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / (c * np.maximum(counts, 1)), 0.0) if balanced else np.ones(c)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32, device=dev))
        ys = torch.from_numpy(lab).to(dev)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        n = x_all.shape[0]
        for ep in range(epochs):
            net.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(0, n, batch_size):
                _tick(progress, cancel, (ep + s / n) / epochs, f"{mode} fine-tuning epoch {ep + 1}/{epochs}")
                idx = order[s:s + batch_size]
                loc = None if loc_all is None else loc_all[idx.numpy()]
                loss = loss_fn(net(x_all[idx].to(dev), loc), ys[idx.to(dev)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            losses.append(total / n)
        if mode == "lora":
            merge_lora(bb)
        net.eval()
    trainable, total_params = trainable_parameter_count(bb)
    _tick(progress, cancel, 1.0, f"{mode} fine-tuning done")
    return clf, {"mode": mode, "lr": lr, "head_lr": float(head_lr), "epochs": int(epochs),
                 "trainable": int(trainable), "total": int(total_params), "losses": losses}


def evaluate_classifier(clf: SliceClassifier, images, labels, location=None) -> dict:
    """Accuracy / AUROC (and slice metrics at 0.5 for binary labels) of a fine-tuned classifier."""
    x = np.asarray(images, dtype=np.float32)
    lab = _labels(labels, x.shape[0])
    proba = clf.predict_proba(x, location)
    out = _classification_metrics(lab, proba)
    if proba.shape[1] == 2:
        out["slice"] = M.slice_metrics(lab == 1, proba[:, 1], 0.5)
    return out
