"""Does SSL earn its place? Frozen-feature probes of SSL variants and random ViTs, side by side.

    python -m training.ssl_probe --train runs/x/train.npz --val runs/x/val.npz \\
        --eval runs/x/probe.npz --work runs/x/ssl-probe --seeds 0,1,2 --steps 600 \\
        --out training/results/ssl-probe.json --markdown training/results/ssl-probe.md

For each seed and each of ``--variants`` (:data:`VARIANTS`: plain DINO, DINO-LG, DINO-LG +
multi-view, DINO-LG with a DINOv2-style ViT, DINO-LG + location conditioning, all runs of
:mod:`training.pretrain_candidates` with the same schedule and budget; resumable: finished
runs are reused) and a randomly initialised ViT of the default architecture. The multi-view
variant needs the neighbouring-slice crops of the training cache: ``--adjacent`` (built
from ``--studies`` by :func:`training.candidate_data.build_adjacent` when missing). Each
frozen teacher backbone is probed on held-out studies (``--eval``: synthetic seeds reserved
for evaluation, never trained on):

* candidate level (is this candidate coronary calcium?): AUROC of a linear head
  (:func:`training.train_candidates.fit_head`, ViT features only, the paper's protocol)
  and of a weighted kNN (k = 20, T = 0.07), with 95 % intervals from resampling studies;
* slice level, as the paper reports: slice probability = max over its candidates of the
  linear head, threshold chosen on ``--val`` for sensitivity >= 0.90; sensitivity,
  specificity, FN and FP rates on ``--eval`` and DINO-LG's relative reduction of them;
* few-shot (``--few-shot``): AUROC of the linear head trained on the candidates of K
  labelled training studies only (the same nested random sets of studies with coronary
  calcium for every variant of a seed), and of the hand-feature baseline on the same studies.

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
from .candidate_data import build_adjacent, load_cache
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

#: name -> (label, flags of :mod:`training.pretrain_candidates`); ``random`` is not trained.
VARIANTS = {**pretrain_candidates.VARIANTS, "random": ("random init (floor)", None)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.ssl_probe", description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="dino-lg,dino,random", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--adjacent", type=Path, default=None, help="neighbouring-slice crops of --train (multi-view)")
    p.add_argument("--studies", type=Path, default=None, help="study folders of --train (to build --adjacent)")
    p.add_argument("--dinov2-checkpoint", type=Path, default=None,
                   help="local DINOv2 checkpoint for dino-lg-v2 (ViT-S width and depth, patch 8; else random init)")
    p.add_argument("--few-shot", default="1,5,20", help="numbers K of labelled training studies ('' for none)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="CPU autocast of the SSL runs")
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


def few_shot_studies(train: dict, seed: int) -> np.ndarray:
    """Training studies with coronary calcium in a seeded random order: the first K are the K-shot set."""
    have = np.unique(train["study"][train["target"] > 0])
    return np.random.default_rng(10_000 + seed).permutation(have)


def _rows(cache: dict, mask: np.ndarray) -> dict:
    return {k: cache[k][mask] for k in ("context", "target", "weight")}


def probe(spec: str, train: dict, val: dict, ev: dict, seed: int, few_shot=()) -> dict:
    crop_px, windows = cache_windows(train)
    bb = load_backbone(spec, crop_px, len(windows))
    conditioned = getattr(bb, "location_film", None) is not None
    ft, fv, fe = (features_of(bb, c["crops"], crop_px, windows,
                              location=pretrain_candidates.candidate_locations(c) if conditioned else None)
                  for c in (train, val, ev))
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
    order = few_shot_studies(train, seed)
    shots = {}
    for k in few_shot:
        m = np.isin(train["study"], order[:k])
        dk = fit_head(ft[m], train["context"][m], train["target"][m], train["weight"][m], hidden=0,
                      use_context=False, seed=seed)
        shots[str(k)] = {"studies": int(min(k, len(order))), "candidates": int(m.sum()),
                         "linear_auroc": auroc(y_e, head_probs(dk, fe, ev["context"]))}
    return {"few_shot": shots,
        "linear_auroc": auroc(y_e, p_lin), "linear_auroc_ci95": bootstrap_auroc(y_e, p_lin, groups, seed=seed),
        "knn_auroc": auroc(y_e, p_knn), "knn_auroc_ci95": bootstrap_auroc(y_e, p_knn, groups, seed=seed),
        "linear_auprc": average_precision(y_e, p_lin), "knn_auprc": average_precision(y_e, p_knn),
        "linear_auroc_hard": auroc(y_e[hard], p_lin[hard]), "knn_auroc_hard": auroc(y_e[hard], p_knn[hard]),
        "linear_auroc_hard_ci95": bootstrap_auroc(y_e[hard], p_lin[hard], groups[hard], seed=seed),
        "knn_auroc_hard_ci95": bootstrap_auroc(y_e[hard], p_knn[hard], groups[hard], seed=seed),
        "slice": sm, "slice_threshold": thr, "feature_dim": int(ft.shape[1]),
    }


def _mean_ci(values):
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None
    m = float(v.mean())
    half = float(1.96 * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return m, half


def _ssl_flags(kind: str, args) -> list[str]:
    flags = pretrain_candidates.variant_flags(kind, args.adjacent)
    if kind == "dino-lg-v2" and args.dinov2_checkpoint is not None:
        flags += ["--pretrained", str(args.dinov2_checkpoint), "--overrides", json.dumps({"patch_size": 8})]
    return flags


def _ssl_record(run: Path) -> dict:
    state = torch.load(run / "backbone.pt", map_location="cpu", weights_only=False)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    last = log[-1] if log else {}
    return {"seconds": state["ssl"].get("seconds"), "config": state["config"], "final_loss": last.get("loss"),
            "final_teacher_entropy": last.get("teacher_entropy"), "final_batch_entropy": last.get("batch_entropy")}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")
    if "dino-lg-mv" in kinds:
        if args.adjacent is None:
            raise SystemExit("the multi-view variant needs --adjacent (and --studies to build it)")
        if not args.adjacent.exists():
            if args.studies is None:
                raise SystemExit(f"{args.adjacent} does not exist: give --studies to build it")
            build_adjacent(args.train, args.studies, args.adjacent)
    train, val, ev = load_cache(args.train), load_cache(args.val), load_cache(args.eval)
    seeds = [int(s) for s in args.seeds.split(",")]
    shots = [int(k) for k in args.few_shot.split(",") if k.strip()]
    results: dict = {"runs": {}, "ssl": {}, "variants": {k: VARIANTS[k][0] for k in kinds},
                     "settings": vars(args) | {k: (None if getattr(args, k) is None else str(getattr(args, k)))
                                               for k in ("train", "val", "eval", "work", "out", "markdown",
                                                         "adjacent", "studies", "dinov2_checkpoint")},
                     "studies": {n: c["meta"]["studies"] for n, c in (("train", train), ("val", val), ("eval", ev))},
                     "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU"}
    t0 = time.perf_counter()
    for seed in seeds:
        for kind in kinds:
            key = f"{kind}/seed{seed}"
            if kind == "random":
                spec = f"random:{seed}"
            else:
                run = args.work / f"{kind}-s{seed}"
                flags = ["--cache", str(args.train), "--out", str(run), "--steps", str(args.steps),
                         "--batch", str(args.batch), "--seed", str(seed), "--threads", str(args.threads),
                         "--bf16", args.bf16]
                pretrain_candidates.main(flags + _ssl_flags(kind, args))
                spec = str(run / "backbone.pt")
                results["ssl"][key] = _ssl_record(run)
            t = time.perf_counter()
            results["runs"][key] = probe(spec, train, val, ev, seed, shots)
            results["runs"][key]["probe_seconds"] = round(time.perf_counter() - t, 1)
            r = results["runs"][key]
            print(f"{key}: linear AUROC {r['linear_auroc']:.4f} kNN {r['knn_auroc']:.4f} slice sens "
                  f"{r['slice']['sensitivity']:.3f} spec {r['slice']['specificity']:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    gbm = gbm_baseline(train)
    pg = gbm(ev)
    ys_v, ps_v, _ = slice_probs(val, gbm(val))
    thr = choose_thresholds(ys_v, ps_v, 0.90)["threshold"]
    ys, ps, _ = slice_probs(ev, pg)
    gbm_shots = {}
    for seed in seeds:
        order = few_shot_studies(train, seed)
        for k in shots:
            g = gbm_baseline(_rows(train, np.isin(train["study"], order[:k])), seed=seed)
            gbm_shots.setdefault(str(k), []).append(auroc(ev["target"] > 0, g(ev)))
    results["gbm_hand_features"] = {"auroc": auroc(ev["target"] > 0, pg),
                                    "auroc_ci95": bootstrap_auroc(ev["target"] > 0, pg, ev["study"]),
                                    "slice": confusion_at(ys, ps, thr), "slice_threshold": thr,
                                    "few_shot_auroc": {k: _mean_ci(v) for k, v in gbm_shots.items()}}
    summary = {}
    for kind in kinds:
        rs = [results["runs"][f"{kind}/seed{s}"] for s in seeds]
        summary[kind] = {
            m: _mean_ci([r[m] for r in rs]) for m in ("linear_auroc", "knn_auroc", "linear_auprc", "knn_auprc",
                                                     "linear_auroc_hard", "knn_auroc_hard")
        } | {f"slice_{m}": _mean_ci([r["slice"][m] for r in rs]) for m in ("sensitivity", "specificity")} | {
            f"few_shot_{k}": _mean_ci([r["few_shot"][str(k)]["linear_auroc"] for r in rs]) for k in shots
        } | {"ssl_seconds": _mean_ci([results["ssl"][f"{kind}/seed{s}"]["seconds"] for s in seeds])
             if kind != "random" else (None, None)}
    if "dino-lg" in kinds and "dino" in kinds:
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
    kinds = list(results.get("variants") or ("dino-lg", "dino", "random"))
    shots = sorted({int(k) for r in results["runs"].values() for k in r.get("few_shot", {})})
    lines = [
        "| backbone (frozen) | linear AUROC | kNN AUROC | linear AUROC, peak ≥ 200 HU | kNN AUROC, peak ≥ 200 HU "
        "| linear AUPRC | kNN AUPRC | slice sensitivity | slice specificity | SSL wall time per run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        lines.append(f"| {VARIANTS[k][0]} | {_fmt(s[k]['linear_auroc'], 4)} | {_fmt(s[k]['knn_auroc'], 4)} | "
                     f"{_fmt(s[k]['linear_auroc_hard'], 4)} | {_fmt(s[k]['knn_auroc_hard'], 4)} | "
                     f"{_fmt(s[k]['linear_auprc'])} | {_fmt(s[k]['knn_auprc'])} | "
                     f"{_fmt(s[k]['slice_sensitivity'])} | {_fmt(s[k]['slice_specificity'])} | "
                     f"{_fmt(s[k].get('ssl_seconds', (None, None)), 0)} |")
    g = results["gbm_hand_features"]
    lines.append(f"| GBM on hand features (no ViT) | {g['auroc']:.4f} | - | - | - | - | - | {g['slice']['sensitivity']:.3f} | "
                 f"{g['slice']['specificity']:.3f} | - |")
    if shots:
        lines += ["", "Few-shot: linear-probe AUROC (all held-out candidates) with the head trained on the candidates "
                  "of K labelled training studies (mean ± 1.96 SD / √n over seeds):", "",
                  "| backbone (frozen) | " + " | ".join(f"K = {k}" for k in shots) + " | all |",
                  "|---|" + "---|" * (len(shots) + 1)]
        for k in kinds:
            lines.append(f"| {VARIANTS[k][0]} | " + " | ".join(_fmt(s[k][f"few_shot_{n}"], 4) for n in shots)
                         + f" | {_fmt(s[k]['linear_auroc'], 4)} |")
        fs = g.get("few_shot_auroc", {})
        lines.append("| GBM on hand features (no ViT) | " + " | ".join(_fmt(fs.get(str(n), (None, None)), 4)
                                                                        for n in shots) + f" | {g['auroc']:.4f} |")
    base = "dino-lg"
    paired = [k for k in kinds if k != base]
    if base in kinds and paired and len(seeds) > 1:
        metrics = (("linear_auroc", "linear AUROC", 4), ("knn_auroc", "kNN AUROC", 4),
                   ("linear_auroc_hard", "linear AUROC ≥ 200 HU", 4), ("knn_auroc_hard", "kNN AUROC ≥ 200 HU", 4),
                   ("linear_auprc", "linear AUPRC", 3), ("slice.sensitivity", "slice sensitivity", 3),
                   ("slice.specificity", "slice specificity", 3))

        def value(r, m):
            return r["slice"][m.split(".")[1]] if m.startswith("slice.") else r[m]

        lines += ["", "Paired difference to DINO-LG (variant − DINO-LG, same seed; mean ± 1.96 SD / √n over seeds; "
                  "an interval that excludes 0 is a difference beyond seed noise):", "",
                  "| backbone (frozen) | " + " | ".join(m[1] for m in metrics) + " |",
                  "|---|" + "---|" * len(metrics)]
        for k in paired:
            cells = []
            for m, _, dg in metrics:
                diffs = []
                for sd in seeds:
                    a_, b_ = results["runs"].get(f"{k}/seed{sd}"), results["runs"].get(f"{base}/seed{sd}")
                    if a_ and b_ and value(a_, m) is not None and value(b_, m) is not None:
                        diffs.append(value(a_, m) - value(b_, m))
                mean, half = _mean_ci(diffs)
                cells.append("-" if mean is None else f"{mean:+.{dg}f}" + ("" if half is None else f" ± {half:.{dg}f}"))
            lines.append(f"| {VARIANTS[k][0]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per run (95 % interval of the AUROC from resampling held-out studies):")
    lines.append("")
    lines.append("| run | linear AUROC [95 % CI] | kNN AUROC [95 % CI] | linear AUROC ≥ 200 HU [95 % CI] "
                 "| kNN AUROC ≥ 200 HU [95 % CI] | sens | spec | SSL s | final DINO loss |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for key, r in results["runs"].items():
        cells = []
        for m in ("linear_auroc", "knn_auroc", "linear_auroc_hard", "knn_auroc_hard"):
            lo, hi = r[m + "_ci95"]
            cells.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        ssl = results.get("ssl", {}).get(key, {})
        sec = "-" if ssl.get("seconds") is None else f"{ssl['seconds']:.0f}"
        loss = "-" if ssl.get("final_loss") is None else f"{ssl['final_loss']:.2f}"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {r['slice']['sensitivity']:.3f} | "
                     f"{r['slice']['specificity']:.3f} | {sec} | {loss} |")
    d = s.get("dino_lg_vs_dino")
    if d:
        lines.append("")
        lines.append(f"DINO → DINO-LG (mean over seeds {', '.join(map(str, seeds))}): FN rate {d['fn_rate'][0]:.3f} → "
                     f"{d['fn_rate'][1]:.3f}, FP rate {d['fp_rate'][0]:.3f} → {d['fp_rate'][1]:.3f}; reduction FN "
                     f"{_pct(d['fn_reduction'])}, FP {_pct(d['fp_reduction'])}.")
    return "\n".join(lines) + "\n"


def _pct(v):
    return "-" if v is None else f"{100 * v:.0f} %"


if __name__ == "__main__":
    main()
