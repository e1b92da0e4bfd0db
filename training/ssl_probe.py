"""Does SSL earn its place? Frozen-feature probes of DINO-LG, plain DINO and random ViTs.

    python -m training.ssl_probe --train runs/x/train.npz --val runs/x/val.npz \\
        --eval runs/x/probe.npz --work runs/x/ssl-probe --seeds 0,1,2 --steps 600 \\
        --out training/results/ssl-probe.json --markdown training/results/ssl-probe.md

For each seed: a DINO-LG and a plain DINO run of :mod:`training.pretrain_candidates` with the
same schedule and budget (resumable: finished runs are reused), and a randomly initialised
ViT of the same architecture. Each frozen teacher backbone is probed on held-out studies
(``--eval``: synthetic seeds reserved for evaluation, never trained on):

* candidate level (is this candidate coronary calcium?): AUROC of a linear head
  (:func:`training.train_candidates.fit_head`, ViT features only, the paper's protocol)
  and of a weighted kNN (k = 20, T = 0.07), with 95 % intervals from resampling studies;
* slice level, as the paper reports: slice probability = max over its candidates of the
  linear head, threshold chosen on ``--val`` for sensitivity >= 0.90; sensitivity,
  specificity, FN and FP rates on ``--eval`` and DINO-LG's relative reduction of them.

The gradient-boosted hand-feature baseline is given on the same held-out candidates.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from CoronaryCalciumDINOLib.evaluation.metrics import auroc, average_precision, confusion_at
from CoronaryCalciumDINOLib.evaluation.metrics import choose_thresholds

from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_NAMES

from . import pretrain_candidates
from .candidate_data import load_cache
from .train_candidates import (
    bootstrap_auroc,
    cache_windows,
    features_of,
    fit_head,
    gbm_baseline,
    head_probs,
    knn_probs,
    load_backbone,
    slice_probs,
)


#: "Hard" candidates: peak >= 200 HU (weight >= 2; bone, aortic wall, valves and most
#: coronary calcium; most noise speckle is below)
HARD_COLUMN = CONTEXT_NAMES.index("peak_hu_k")
HARD_PEAK_K = 0.2


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.ssl_probe", description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--markdown", type=Path, default=None)
    return p.parse_args(argv)


def _rate_reduction(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return (a - b) / a


def probe(spec: str, train: dict, val: dict, ev: dict, seed: int) -> dict:
    crop_px, windows = cache_windows(train)
    bb = load_backbone(spec, crop_px, len(windows))
    ft, fv, fe = (features_of(bb, c["crops"], crop_px, windows) for c in (train, val, ev))
    y_e = ev["target"] > 0
    det = fit_head(ft, train["context"], train["target"], train["weight"], hidden=0, use_context=False, seed=seed)
    p_lin = head_probs(det, fe, ev["context"])
    # kNN on a class-balanced subsample of the training candidates (all positives)
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(train["target"] > 0)
    neg = rng.choice(np.flatnonzero(train["target"] == 0), min(20000, int((train["target"] == 0).sum())), replace=False)
    sub = np.concatenate([pos, neg])
    p_knn = knn_probs(ft[sub], train["target"][sub], fe)
    groups = ev["study"]
    ys_v, ps_v, _ = slice_probs(val, head_probs(det, fv, val["context"]))
    thr = choose_thresholds(ys_v, ps_v, 0.90)["threshold"]
    ys, ps, _ = slice_probs(ev, p_lin)
    sm = confusion_at(ys, ps, thr)
    hard = ev["context"][:, HARD_COLUMN] >= HARD_PEAK_K
    return {
        "linear_auroc": auroc(y_e, p_lin), "linear_auroc_ci95": bootstrap_auroc(y_e, p_lin, groups, seed=seed),
        "knn_auroc": auroc(y_e, p_knn), "knn_auroc_ci95": bootstrap_auroc(y_e, p_knn, groups, seed=seed),
        "linear_auprc": average_precision(y_e, p_lin), "knn_auprc": average_precision(y_e, p_knn),
        "linear_auroc_hard": auroc(y_e[hard], p_lin[hard]), "knn_auroc_hard": auroc(y_e[hard], p_knn[hard]),
        "linear_auroc_hard_ci95": bootstrap_auroc(y_e[hard], p_lin[hard], groups[hard], seed=seed),
        "knn_auroc_hard_ci95": bootstrap_auroc(y_e[hard], p_knn[hard], groups[hard], seed=seed),
        "slice": sm, "slice_threshold": thr,
    }


def _mean_ci(values):
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None
    m = float(v.mean())
    half = float(1.96 * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return m, half


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train, val, ev = load_cache(args.train), load_cache(args.val), load_cache(args.eval)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"runs": {}, "settings": vars(args) | {"train": str(args.train), "val": str(args.val),
                                                           "eval": str(args.eval), "work": str(args.work),
                                                           "out": str(args.out), "markdown": str(args.markdown)},
                     "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU"}
    t0 = time.perf_counter()
    for seed in seeds:
        for kind in ("dino-lg", "dino", "random"):
            key = f"{kind}/seed{seed}"
            if kind == "random":
                spec = f"random:{seed}"
            else:
                run = args.work / f"{kind}-s{seed}"
                t = time.perf_counter()
                flags = ["--cache", str(args.train), "--out", str(run), "--steps", str(args.steps),
                         "--batch", str(args.batch), "--seed", str(seed), "--threads", str(args.threads)]
                pretrain_candidates.main(flags + (["--label-guided"] if kind == "dino-lg" else []))
                spec = str(run / "backbone.pt")
                results.setdefault("ssl_seconds", {})[key] = round(time.perf_counter() - t, 1)
            results["runs"][key] = probe(spec, train, val, ev, seed)
            r = results["runs"][key]
            print(f"{key}: linear AUROC {r['linear_auroc']:.4f} kNN {r['knn_auroc']:.4f} slice sens "
                  f"{r['slice']['sensitivity']:.3f} spec {r['slice']['specificity']:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    gbm = gbm_baseline(train)
    pg = gbm(ev)
    ys_v, ps_v, _ = slice_probs(val, gbm(val))
    thr = choose_thresholds(ys_v, ps_v, 0.90)["threshold"]
    ys, ps, _ = slice_probs(ev, pg)
    results["gbm_hand_features"] = {"auroc": auroc(ev["target"] > 0, pg),
                                    "auroc_ci95": bootstrap_auroc(ev["target"] > 0, pg, ev["study"]),
                                    "slice": confusion_at(ys, ps, thr), "slice_threshold": thr}
    summary = {}
    for kind in ("dino-lg", "dino", "random"):
        rs = [results["runs"][f"{kind}/seed{s}"] for s in seeds]
        summary[kind] = {
            m: _mean_ci([r[m] for r in rs]) for m in ("linear_auroc", "knn_auroc", "linear_auprc", "knn_auprc",
                                                     "linear_auroc_hard", "knn_auroc_hard")
        } | {f"slice_{m}": _mean_ci([r["slice"][m] for r in rs]) for m in ("sensitivity", "specificity")}
    lg, pl = summary["dino-lg"], summary["dino"]
    fn_lg, fn_pl = 1 - lg["slice_sensitivity"][0], 1 - pl["slice_sensitivity"][0]
    fp_lg, fp_pl = 1 - lg["slice_specificity"][0], 1 - pl["slice_specificity"][0]
    summary["dino_lg_vs_dino"] = {"fn_rate": [fn_pl, fn_lg], "fp_rate": [fp_pl, fp_lg],
                                  "fn_reduction": _rate_reduction(fn_pl, fn_lg),
                                  "fp_reduction": _rate_reduction(fp_pl, fp_lg)}
    results["summary"] = summary
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(results, seeds))
    print(json.dumps(summary, indent=1, default=float))


def _fmt(mc, digits=3):
    m, h = mc
    if m is None:
        return "-"
    return f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if h is not None else "")


def markdown(results: dict, seeds) -> str:
    s = results["summary"]
    lines = [
        "| backbone (frozen) | linear AUROC | kNN AUROC | linear AUROC, peak ≥ 200 HU | kNN AUROC, peak ≥ 200 HU "
        "| linear AUPRC | kNN AUPRC | slice sensitivity | slice specificity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"dino-lg": "DINO-LG", "dino": "plain DINO", "random": "random init"}
    for k in ("dino-lg", "dino", "random"):
        lines.append(f"| {names[k]} | {_fmt(s[k]['linear_auroc'], 4)} | {_fmt(s[k]['knn_auroc'], 4)} | "
                     f"{_fmt(s[k]['linear_auroc_hard'], 4)} | {_fmt(s[k]['knn_auroc_hard'], 4)} | "
                     f"{_fmt(s[k]['linear_auprc'])} | {_fmt(s[k]['knn_auprc'])} | "
                     f"{_fmt(s[k]['slice_sensitivity'])} | {_fmt(s[k]['slice_specificity'])} |")
    g = results["gbm_hand_features"]
    lines.append(f"| GBM on hand features (no ViT) | {g['auroc']:.4f} | - | - | - | - | - | {g['slice']['sensitivity']:.3f} | "
                 f"{g['slice']['specificity']:.3f} |")
    lines.append("")
    lines.append("Per run (95 % interval of the AUROC from resampling held-out studies):")
    lines.append("")
    lines.append("| run | linear AUROC [95 % CI] | kNN AUROC [95 % CI] | linear AUROC ≥ 200 HU [95 % CI] "
                 "| kNN AUROC ≥ 200 HU [95 % CI] | sens | spec |")
    lines.append("|---|---|---|---|---|---|---|")
    for key, r in results["runs"].items():
        cells = []
        for m in ("linear_auroc", "knn_auroc", "linear_auroc_hard", "knn_auroc_hard"):
            lo, hi = r[m + "_ci95"]
            cells.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {r['slice']['sensitivity']:.3f} | {r['slice']['specificity']:.3f} |")
    d = s["dino_lg_vs_dino"]
    lines.append("")
    lines.append(f"DINO → DINO-LG (mean over seeds {', '.join(map(str, seeds))}): FN rate {d['fn_rate'][0]:.3f} → "
                 f"{d['fn_rate'][1]:.3f}, FP rate {d['fp_rate'][0]:.3f} → {d['fp_rate'][1]:.3f}; reduction FN "
                 f"{_pct(d['fn_reduction'])}, FP {_pct(d['fp_reduction'])}.")
    return "\n".join(lines) + "\n"


def _pct(v):
    return "-" if v is None else f"{100 * v:.0f} %"


if __name__ == "__main__":
    main()
