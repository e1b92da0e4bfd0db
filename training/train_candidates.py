"""Supervised stages on candidates: frozen features, detector heads, baseline, segmenter.

    python -m training.train_candidates --train runs/x/train.npz --val runs/x/val.npz \\
        --backbone runs/x/ssl-lg/backbone.pt --out runs/x/supervised

Everything starts from the caches of :mod:`training.candidate_data` (crops and context
from :mod:`CoronaryCalciumDINOLib.pipeline.candidates`, the inference path):

* frozen teacher features of each candidate crop (CLS (+) mean patch token), computed by
  the library's :func:`~CoronaryCalciumDINOLib.models.backbone.extract_features` on the
  inference input (:func:`features_of`);
* detector heads (:class:`~CoronaryCalciumDINOLib.models.detector.CandidateDetector`):
  ``linear`` on the ViT features alone (the paper's protocol), ``linear+context`` and
  ``mlp+context`` (one hidden layer); weighted BCE, target = coronary calcium or not;
* the gradient-boosted baseline on :data:`HAND_FEATURES` (scikit-learn);
* the per-artery segmenter: a MONAI 2D UNet on the candidate crop with the context as
  constant extra channels, trained on per-pixel labels (:func:`train_segmenter`: its
  candidates drawn evened out by size, :func:`size_weights`, and for a share of them the
  coarse views of the slice read as the average one, :data:`COARSE_CONTEXT`, those draws
  learning calcium only, :func:`calcium_only_loss`; the recipe's defaults since 0.6.7).

The detector threshold is chosen on the validation studies' slices (every candidate of
those studies is in the validation cache), slice probability = max over its candidates.

With ``--phantom-head`` (caches of synthetic calcium-scoring phantoms,
:mod:`CoronaryCalciumDINOLib.synth.phantom`) it trains the bundle's phantom detector
instead: an ``mlp+context`` head on the same frozen features, target = the phantom's
calcium, threshold at the Youden point of the validation phantoms' slices
(:func:`train_phantom_head`).
A phantom has no arteries, so it needs no segmenter: inference labels the picked
candidates' own voxels and names them by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from CoronaryCalciumDINOLib.evaluation.metrics import auroc, choose_thresholds, slice_metrics
from CoronaryCalciumDINOLib.models.backbone import build_backbone, build_backbone_from_config, extract_features
from CoronaryCalciumDINOLib.models.detector import CandidateDetector
from CoronaryCalciumDINOLib.models.unet import SegmenterConfig, build_candidate_segmenter
from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_INDEX, CONTEXT_NAMES, HAND_FEATURES, phantom_sized
from CoronaryCalciumDINOLib.pipeline.device import autocast_for, resolve_device
from CoronaryCalciumDINOLib.pipeline.inference import candidate_means

from .candidate_data import (SEGMENTER_COARSE_DROPOUT, SEGMENTER_DROPPED_LEARN, SEGMENTER_OUTSIDE_MAX_MM2, SEGMENTER_SIZE_POWER,
                             add_segmenter_draw_arguments, load_cache, segmenter_draw_problem)
from .pretrain_candidates import DEFAULT_ARCH, DEFAULT_OVERRIDES, plain_view

HEADS = {"linear": (0, False), "linear+context": (0, True), "mlp+context": (128, True)}


# ----------------------------------------------------------------------------- features


def load_backbone(spec: str, crop_px: int = 32, in_chans: int = 3, overrides: dict | None = None):
    """``random:SEED`` (random initialisation of the default architecture) or a ``backbone.pt``."""
    if str(spec).startswith("random:"):
        torch.manual_seed(int(str(spec).split(":", 1)[1]))
        bb = build_backbone(DEFAULT_ARCH, img_size=crop_px, in_chans=in_chans, drop_path=0.0,
                            overrides=overrides or DEFAULT_OVERRIDES)
    else:
        state = torch.load(spec, map_location="cpu", weights_only=False)
        bb = build_backbone_from_config(state["config"])
        bb.load_state_dict(state["state"])
    bb.eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb


@torch.inference_mode()
def features_of(backbone, crops_hu: np.ndarray, crop_px: int, windows, batch: int = 1024, device="cpu",
                location: np.ndarray | None = None) -> np.ndarray:
    """(N, 2D) float32 frozen features of stored HU crops (their central ``crop_px``);
    ``location`` (N, K): the candidates' locations for a location-conditioned backbone."""
    dev = resolve_device(device)
    backbone.to(dev)
    out = []
    for s in range(0, len(crops_hu), batch):
        x = plain_view(torch.from_numpy(crops_hu[s:s + batch].astype(np.float32)), crop_px, windows).to(dev)
        loc = None if location is None else torch.from_numpy(np.asarray(location[s:s + batch], np.float32)).to(dev)
        with autocast_for(dev, cpu_bf16=None):
            out.append(extract_features(backbone, x, loc).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2 * backbone.embed_dim), np.float32)


def cache_windows(cache: dict):
    cfg = cache["meta"]["config"]
    return int(cfg["crop_px"]), [tuple(w) for w in cfg["windows"]]


# ----------------------------------------------------------------------------- heads


def fit_head(feats, context, y, weight, hidden: int, use_context: bool, steps: int = 600, seed: int = 0,
             lr: float = 1e-2, wd: float = 1e-4, batch: int = 4096) -> CandidateDetector:
    """Weighted-BCE detector head (classes balanced) on frozen features; mini-batch AdamW
    with a cosine learning rate (full batch when there are fewer samples than ``batch``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    det = CandidateDetector(feats.shape[1], context.shape[1], hidden=hidden, use_context=use_context)
    f, c = torch.from_numpy(feats), torch.from_numpy(context)
    det.set_standardisation(det.inputs(f, c))
    yt = torch.from_numpy((y > 0).astype(np.float32))
    w = torch.from_numpy(weight.astype(np.float32))
    pos = float((w * yt).sum())
    neg = float((w * (1 - yt)).sum())
    w = w * torch.where(yt > 0, 0.5 / max(pos, 1e-6), 0.5 / max(neg, 1e-6)) * len(yt)
    base = lr if hidden == 0 else 3e-3
    opt = torch.optim.AdamW(det.parameters(), lr=base, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=base * 0.01)
    n = len(yt)
    det.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, n, min(batch, n))) if n > batch else slice(None)
        loss = (F.binary_cross_entropy_with_logits(det(f[idx], c[idx]), yt[idx], reduction="none") * w[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    det.eval()
    return det


@torch.inference_mode()
def head_probs(det: CandidateDetector, feats, context) -> np.ndarray:
    return torch.sigmoid(det(torch.from_numpy(feats), torch.from_numpy(context))).numpy()


def slice_probs(cache: dict, cand_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slice labels, slice probabilities, slice study index) of a full (not subsampled) cache."""
    off = cache["slice_offset"]
    n = int(off[-1])
    probs = np.zeros(n, dtype=np.float32)
    gidx = off[cache["study"]] + cache["z"]
    np.maximum.at(probs, gidx, cand_probs.astype(np.float32))
    study = np.repeat(np.arange(len(off) - 1), np.diff(off))
    return cache["slice_has_calcium"].astype(bool), probs, study


def knn_probs(train_f, train_y, eval_f, k: int = 20, t: float = 0.07) -> np.ndarray:
    """Weighted kNN (cosine similarity, exp(s / t) weights; DINO's protocol), P(coronary)."""
    a = torch.nn.functional.normalize(torch.from_numpy(train_f), dim=1)
    b = torch.nn.functional.normalize(torch.from_numpy(eval_f), dim=1)
    ya = torch.from_numpy((train_y > 0).astype(np.float32))
    out = []
    for s in range(0, len(b), 2048):
        sim = b[s:s + 2048] @ a.T
        v, i = sim.topk(min(k, a.shape[0]), dim=1)
        w = (v / t).exp()
        out.append(((w * ya[i]).sum(1) / w.sum(1)).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def gbm_baseline(train: dict, seed: int = 0):
    """Gradient-boosted trees on the hand features (the comparison row)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    cols = [CONTEXT_NAMES.index(n) for n in HAND_FEATURES]
    y = (train["target"] > 0).astype(int)
    w = train["weight"] * np.where(y > 0, 0.5 / max(train["weight"][y > 0].sum(), 1e-6),
                                   0.5 / max(train["weight"][y == 0].sum(), 1e-6))
    clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
    clf.fit(train["context"][:, cols], y, sample_weight=w * len(y))
    return lambda cache: clf.predict_proba(cache["context"][:, cols])[:, 1]


def bootstrap_auroc(y, p, groups, n: int = 500, seed: int = 0) -> tuple[float | None, float | None]:
    """95 % interval of AUROC by resampling studies (``groups``)."""
    rng = np.random.default_rng(seed)
    ug = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ug]
    vals = []
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(ug), len(ug))])
        a = auroc(y[idx], p[idx])
        if a is not None:
            vals.append(a)
    if not vals:
        return None, None
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


# ----------------------------------------------------------------------------- segmenter


#: The per-candidate arrays of a cache (:func:`training.candidate_data.build_cache`).
CANDIDATE_KEYS = ("crops", "pixel_labels", "masks", "context", "target", "weight", "in_region", "z", "study")


def region_part(cache: dict, outside_max_mm2: float = 0.0) -> dict:
    """``cache`` with only the candidates inference gives the networks (``in_region``) and,
    of those the region leaves out, the ones of at most ``outside_max_mm2``. The segmenter
    sees a candidate only once the anatomy step and the detector let it through; the bone of
    a training cache built with ``outside_region`` (ribs and sternum: a fifth of those
    candidates is larger than 20 mm^2, against 8 % of the coronary ones) teaches it that a
    large dense calcification is not calcium. A cache without them is returned as it is."""
    m = cache.get("in_region")
    if m is None or m.all():
        return cache
    if outside_max_mm2 > 0:
        m = m | (np.exp(cache["context"][:, CONTEXT_INDEX["log_area_mm2"]]) <= outside_max_mm2)
    return cache | {k: cache[k][m] for k in CANDIDATE_KEYS if k in cache}


def segmenter_config(cache: dict, channels=(16, 32, 64)) -> SegmenterConfig:
    crop_px, windows = cache_windows(cache)
    return SegmenterConfig(windows=[list(w) for w in windows], neighbours=0, crop_mm=0.0, input_size=crop_px,
                           channels=list(channels), strides=[2] * (len(channels) - 1), num_res_units=1,
                           context_dim=len(CONTEXT_NAMES))


#: Context features of the coarse views of the slice round a candidate (:data:`CONTEXT_NAMES`).
COARSE_CONTEXT = np.array([i for i, n in enumerate(CONTEXT_NAMES) if n.startswith("coarse")])


def size_weights(context: np.ndarray, power: float) -> np.ndarray:
    """Sampling probabilities that even out candidate sizes: each candidate's weight is
    ``n ** -power``, ``n`` the number of candidates in its size bin (bins one doubling of
    area wide: ..., 4-8, 8-16, 16-32 mm^2, ...); they sum to 1. ``power`` 0 draws every
    candidate alike; 0.5 (the square root) gives a bin holding 50 times fewer candidates
    about 7 times its share. Large calcifications are rare in the synthetic studies (under
    1 % of the coronary candidates are over 50 mm^2, and fewer of the heart region's others):
    drawn alike, a segmenter sees a few hundred of them in its whole training."""
    area = np.exp(np.asarray(context, dtype=np.float64)[:, CONTEXT_INDEX["log_area_mm2"]])
    bins = np.floor(np.log2(np.maximum(area, 1e-3))).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -float(power)
    return w / w.sum()


def calcium_only_loss(logits, y, cw, calcium_only):
    """The weighted per-pixel cross-entropy of :func:`train_segmenter` (``F.cross_entropy``
    with class weights ``cw``: the weighted mean over pixels), where the crops flagged in
    ``calcium_only`` (bool, one per crop) learn only calcium against background: their
    pixels' loss is that of the background class or of the four arteries together
    (log of the summed artery probabilities), whichever the pixel is; the artery it lies on
    is not asked of them."""
    logp = F.log_softmax(logits, 1)
    full = -logp.gather(1, y[:, None])[:, 0]
    binary = torch.where(y == 0, -logp[:, 0], -torch.logsumexp(logp[:, 1:], 1))
    w = cw[y]
    per = torch.where(calcium_only[:, None, None], binary, full) * w
    return per.sum() / w.sum()


def train_segmenter(train: dict, cfg: SegmenterConfig, steps: int = 1500, batch: int = 64, seed: int = 0,
                    lr: float = 3e-3, log=print, device="cpu", size_power: float = SEGMENTER_SIZE_POWER,
                    coarse_dropout: float = SEGMENTER_COARSE_DROPOUT, dropped_learn: str = SEGMENTER_DROPPED_LEARN):
    """Per-pixel 5-class CE on candidate crops; coronary candidates are half of each batch,
    each half drawn with :func:`size_weights` (``size_power``); in a ``coarse_dropout`` share
    of the drawn candidates the coarse views read as the training set's average (the
    network's standardised 0), and with ``dropped_learn`` "calcium" those draws learn only
    calcium against background (:func:`calcium_only_loss`) and the network returned decides
    calcium without the views (its config's ``calcium_blind``). ``size_power`` 0 and
    ``coarse_dropout`` 0 draw as bundles up to 0.6.5 were trained, draw for draw."""
    problem = segmenter_draw_problem(size_power, coarse_dropout, dropped_learn, prefix="")
    if problem:
        raise ValueError(problem)
    # it decides calcium as it learnt to: without the coarse views when its dropped draws learn calcium only
    blind = [int(i) for i in COARSE_CONTEXT] if coarse_dropout and dropped_learn == "calcium" else []
    cfg = SegmenterConfig.from_dict({**cfg.to_dict(), "calcium_blind": blind})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    net = build_candidate_segmenter(cfg)
    net.set_standardisation(train["context"])
    mean_ctx = net.context_mean.numpy().astype(np.float32)  # a dropped view reads as the average one
    net.to(dev)
    crop_px, windows = cache_windows(train)
    pos = np.flatnonzero(train["target"] > 0)
    neg = np.flatnonzero(train["target"] == 0)
    # power 0: p=None, the uniform draw bundles up to 0.6.5 were trained with
    p_pos = size_weights(train["context"][pos], size_power) if size_power and pos.size else None
    p_neg = size_weights(train["context"][neg], size_power) if size_power and neg.size else None
    counts = np.bincount(train["pixel_labels"][pos].ravel(), minlength=5).astype(float) + 1
    cw = torch.tensor((counts.sum() / counts) ** 0.5, dtype=torch.float32)
    cw = (cw / cw.mean()).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = np.concatenate([rng.choice(pos, batch // 2, p=p_pos), rng.choice(neg, batch - batch // 2, p=p_neg)]) \
            if pos.size else rng.choice(neg, batch, p=p_neg)
        hu = torch.from_numpy(train["crops"][idx].astype(np.float32))
        x = plain_view(hu, crop_px, windows).to(dev)
        ctx = train["context"][idx]
        drop = None
        if coarse_dropout:
            drop = rng.random(len(idx)) < coarse_dropout
            if drop.any():
                ctx = ctx.copy()
                ctx[np.ix_(drop, COARSE_CONTEXT)] = mean_ctx[COARSE_CONTEXT]
        ctx = torch.from_numpy(ctx).to(dev)
        y = torch.from_numpy(train["pixel_labels"][idx].astype(np.int64)).to(dev)
        with autocast_for(dev, cpu_bf16=None):
            logits = net(x, ctx)
        if dropped_learn == "calcium" and drop is not None and drop.any():
            loss = calcium_only_loss(logits.float(), y, cw, torch.from_numpy(drop).to(dev))
        else:
            loss = F.cross_entropy(logits.float(), y, weight=cw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  segmenter step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return net.cpu()


@torch.inference_mode()
def segmenter_candidate_probs(net, cache: dict, masks: np.ndarray, batch: int = 512):
    """(N, 5) class probabilities of each candidate, as the pipeline forms them
    (:func:`~CoronaryCalciumDINOLib.pipeline.inference.candidate_means`)."""
    crop_px, windows = cache_windows(cache)
    out = []
    for s in range(0, len(cache["target"]), batch):
        x = plain_view(torch.from_numpy(cache["crops"][s:s + batch].astype(np.float32)), crop_px, windows)
        ctx = torch.from_numpy(cache["context"][s:s + batch])
        with autocast_for(torch.device("cpu"), cpu_bf16=None):
            p = net.probabilities(x, ctx).float().numpy()
        out.append(candidate_means(p, np.asarray(masks[s:s + batch], dtype=np.float32)))
    return np.concatenate(out)


# ----------------------------------------------------------------------------- phantoms


PHANTOM_HEAD = "mlp+context"


def train_phantom_head(train: dict, val: dict, backbone, target_sensitivity: float = 0.99, seed: int = 0,
                       device="cpu", log=print) -> dict:
    """The phantom detector head on frozen features of phantom caches: its state, config,
    threshold (validation phantoms' slices) and validation report."""
    crop_px, windows = cache_windows(train)
    # inference asks the head about these, less the ends of larger regions
    # (candidates.ends_of_larger_regions), which a cache cannot tell: it keeps no neighbours
    keep = phantom_sized(train["context"])
    ft = features_of(backbone, train["crops"][keep], crop_px, windows, device=device)
    fv = features_of(backbone, val["crops"], crop_px, windows, device=device)
    hidden, use_ctx = HEADS[PHANTOM_HEAD]
    det = fit_head(ft, train["context"][keep], train["target"][keep], train["weight"][keep], hidden, use_ctx, seed=seed)
    pv = np.where(phantom_sized(val["context"]), head_probs(det, fv, val["context"]), 0.0)
    ys, ps, _ = slice_probs(val, pv)
    # The Youden point: a phantom's slices with calcium include specks of its 1 mm cylinders
    # that no detector can tell from noise; a sensitivity target would push the threshold to 0.
    points = choose_thresholds(ys, ps, target_sensitivity)
    thr = {"threshold": points["youden_threshold"], "operating_point": "youden",
           "threshold_at_target_sensitivity": points["threshold"], "target_sensitivity": target_sensitivity}
    m = slice_metrics(ys, ps, thr["threshold"], target_sensitivity)["at_threshold"]
    report = {"head": PHANTOM_HEAD, "candidate_auroc": auroc(val["target"] > 0, pv), "slice": m, **thr,
              "train_candidates": len(ft), "val_candidates": len(fv)}
    log(f"phantom head {PHANTOM_HEAD}: {len(ft)} train, {len(fv)} val candidates; candidate AUROC "
        f"{report['candidate_auroc']:.4f}, slice sens {m['sensitivity']:.3f} spec {m['specificity']:.3f} "
        f"at {thr['threshold']:.3f}")
    return {"detector": det.state_dict(), "detector_config": det.config(), "threshold": thr, "report": report}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.train_candidates", description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--backbone", required=True, help="backbone.pt of pretrain_candidates, or random:SEED")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--head", choices=sorted(HEADS) + ["auto"], default="auto", help="shipped detector head")
    p.add_argument("--target-sensitivity", type=float, default=0.99)
    p.add_argument("--seg-steps", type=int, default=1500)
    p.add_argument("--seg-channels", default="16,32,64")
    p.add_argument("--seg-outside-max-mm2", type=float, default=SEGMENTER_OUTSIDE_MAX_MM2,
                   help="the segmenter trains on the heart region's candidates (what inference gives it) and, of a cache "
                        "that also holds those the region leaves out, on those of at most this area: the chest wall's "
                        f"specks, not its bone (default {SEGMENTER_OUTSIDE_MAX_MM2:g}; 0: none of them)")
    add_segmenter_draw_arguments(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--phantom-head", action="store_true",
                   help="train the phantom detector head on phantom caches (writes phantom_head.pt)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    problem = segmenter_draw_problem(args.seg_size_power, args.seg_coarse_dropout, args.seg_dropped_learn)
    if problem:
        raise SystemExit(problem)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.phantom_head:
        train, val = load_cache(args.train), load_cache(args.val)
        crop_px, windows = cache_windows(train)
        res = train_phantom_head(train, val, load_backbone(args.backbone, crop_px, len(windows)),
                                 args.target_sensitivity, args.seed, args.device)
        torch.save({"backbone": args.backbone, **res}, out / "phantom_head.pt")
        (out / "report.json").write_text(json.dumps(res["report"], indent=2, default=float) + "\n")
        return
    if (out / "supervised.pt").exists():
        print(f"{out}/supervised.pt exists: nothing to do")
        return
    train, val = load_cache(args.train), load_cache(args.val)
    crop_px, windows = cache_windows(train)
    bb = load_backbone(args.backbone, crop_px, len(windows))
    t = time.perf_counter()
    ft = features_of(bb, train["crops"], crop_px, windows, device=args.device)
    fv = features_of(bb, val["crops"], crop_px, windows, device=args.device)
    print(f"features: {len(ft)} train, {len(fv)} val candidates ({time.perf_counter() - t:.0f} s)")
    report = {"heads": {}}
    dets = {}
    for name, (hidden, use_ctx) in HEADS.items():
        det = fit_head(ft, train["context"], train["target"], train["weight"], hidden, use_ctx, seed=args.seed)
        pv = head_probs(det, fv, val["context"])
        ys, ps, _ = slice_probs(val, pv)
        thr = choose_thresholds(ys, ps, args.target_sensitivity)
        m = slice_metrics(ys, ps, thr["threshold"], args.target_sensitivity)["at_threshold"]
        report["heads"][name] = {"candidate_auroc": auroc(val["target"] > 0, pv), "slice": m, **thr}
        dets[name] = (det, thr)
        print(f"head {name}: candidate AUROC {report['heads'][name]['candidate_auroc']:.4f}, slice sens "
              f"{m['sensitivity']:.3f} spec {m['specificity']:.3f} at {thr['threshold']:.3f}")
    gbm = gbm_baseline(train, args.seed)
    pg = gbm(val)
    ys, ps, _ = slice_probs(val, pg)
    thr = choose_thresholds(ys, ps, args.target_sensitivity)
    report["gbm_hand_features"] = {"candidate_auroc": auroc(val["target"] > 0, pg),
                                   "slice": slice_metrics(ys, ps, thr["threshold"], args.target_sensitivity)["at_threshold"],
                                   **thr}
    print(f"GBM baseline: slice sens {report['gbm_hand_features']['slice']['sensitivity']:.3f} spec "
          f"{report['gbm_hand_features']['slice']['specificity']:.3f}")
    if args.head == "auto":  # best validation specificity at the target sensitivity, then AUROC
        chosen = max(("linear+context", "mlp+context"), key=lambda n: (
            report["heads"][n]["slice"]["specificity"] or 0, report["heads"][n]["candidate_auroc"] or 0))
    else:
        chosen = args.head
    report["shipped_head"] = chosen

    cfg = segmenter_config(train, [int(c) for c in args.seg_channels.split(",")])
    seg_train = region_part(train, args.seg_outside_max_mm2)
    net = train_segmenter(seg_train, cfg, steps=args.seg_steps, seed=args.seed, device=args.device,
                          size_power=args.seg_size_power, coarse_dropout=args.seg_coarse_dropout,
                          dropped_learn=args.seg_dropped_learn)
    sp = segmenter_candidate_probs(net, val, val["masks"])
    vt = val["target"]
    calc = sp[:, 1:].sum(1) >= 0.5
    report["segmenter"] = {
        "candidate_accuracy_all": float(((np.where(calc, 1 + sp[:, 1:].argmax(1), 0)) == vt).mean()),
        "coronary_recall": float(calc[vt > 0].mean()) if (vt > 0).any() else None,
        "artery_accuracy_on_coronary": float((1 + sp[vt > 0, 1:].argmax(1) == vt[vt > 0]).mean()) if (vt > 0).any() else None,
        "false_calcium_rate": float(calc[vt == 0].mean()),
        "size_power": args.seg_size_power, "coarse_dropout": args.seg_coarse_dropout,
        "dropped_learn": args.seg_dropped_learn,
    }
    print("segmenter (val):", json.dumps(report["segmenter"]))
    det, thr = dets[chosen]
    torch.save({"backbone": args.backbone, "detector": det.state_dict(), "detector_config": det.config(), "threshold": thr,
                "segmenter": net.state_dict(), "segmenter_config": net.config.to_dict(), "report": report},
               out / "supervised.pt")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
