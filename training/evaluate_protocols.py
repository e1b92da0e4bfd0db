"""Evaluate backbones on calcium candidates with the DINOv2-for-radiology protocols; one JSON.

    python -m training.evaluate_protocols --train runs/x/train.npz --eval runs/x/val.npz \\
        --backbone runs/x/ssl-lg/backbone.pt --backbone random:0 \\
        --protocols knn,linear,fewshot,lora,bitfit,finetune --out results.json

Inputs
------
``--train`` / ``--eval``: candidate caches of :mod:`training.candidate_data` (different
studies; the evaluation cache should keep every candidate, ``max_neg=None``, else its
AUROC / AUPRC are those of the subsample and the JSON says so). ``--backbone`` (repeatable):
a ``backbone.pt`` of :mod:`training.pretrain_candidates` or ``random:SEED``; ``NAME=SPEC``
names it in the results. Every backbone sees the same data and splits.

Task: binary, coronary calcium or not (cache ``target > 0``: any of LM / LAD / LCX / RCA)
per candidate. The network input is the inference input
(:func:`training.pretrain_candidates.plain_view`: central ``crop_px`` of the stored crop,
fixed HU windows).

Splits and patients
-------------------
A patient is :func:`~CoronaryCalciumDINOLib.data.splits.coca_patient` of the study folder
name (for synthetic and most studies: the study itself). The training cache is split by
patient into ``train`` and ``val`` (``--val-fraction`` of the patients with coronary
candidates and of those without, at least one of each kind when there are two; ``--seed``);
the evaluation cache is the ``test`` split. Splits must be patient-disjoint (checked: a
study in both caches is an error).

Protocols (every reported number is on the evaluation cache)
-----------------------------------------------------------
Frozen features: :func:`~training.common.protocols.extract_block_features`
of the inference input, feature sets ``last{n}`` / ``last{n}+avgpool`` for n in ``--blocks``
(``last1+avgpool`` = CLS (+) mean patch token = the detector's input).

* ``knn``: weighted kNN (cosine, exp(s / T), T = 0.07): every feature set and k on
  validation (train -> val); the (feature set, k) with the best validation AUROC is
  evaluated with train + val as neighbours (all k of that set are listed too).
* ``linear``: :func:`~training.common.protocols.linear_probe` (grid of
  feature sets x learning rates on validation, best retrained on train + val;
  class-balanced cross-entropy, SGD). Sample weights of subsampled negatives are not used.
* ``fewshot``: :func:`~training.common.protocols.few_shot_curve` on
  ``--feature-set``. **K means K studies (patients) per class**, drawn from the whole
  training cache: K studies with coronary calcium contribute *all* their coronary
  candidates, K other studies contribute all their non-coronary candidates (the 2K studies
  are distinct, so the few-shot set is what labelling 2K scans gives); a linear probe (or
  kNN, ``--few-shot-method``) trained on it; mean +- sd over ``--few-shot-seeds`` draws.
* ``finetune`` / ``lora`` / ``bitfit``:
  :func:`~training.common.protocols.finetune_classifier` (full fine-tune
  lr 1e-5; LoRA r 48, alpha 16 on qkv / fc1 / fc2; BitFit) with a linear head on CLS (+)
  mean patch token, trained on inference-input crops of the training cache (train + val;
  at most ``--finetune-max-train`` candidates: coronary ones up to half, the rest random
  non-coronary ones; the loss is class-balanced).

Output: ``backbones.<name>.<protocol>`` holds each protocol's details, ``summary`` one row
per (backbone, protocol) with AUROC, AUPRC and a 95 % AUROC interval from resampling
evaluation studies (``--bootstrap`` draws; few-shot rows: mean +- sd over draws).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from CoronaryCalciumDINOLib.errors import CCDinoError, InputError
from CoronaryCalciumDINOLib.io.atomic import write_text_atomic
from training.common import protocols as P

PROTOCOLS = ("knn", "linear", "fewshot", "finetune", "lora", "bitfit")
IMAGE_PROTOCOLS = ("finetune", "lora", "bitfit")
FROZEN_PROTOCOLS = ("knn", "linear", "fewshot")
DEFAULT_FEATURE_SET = "last1+avgpool"  # the detector's input: CLS (+) mean patch token


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_protocols", description=__doc__.split("\n")[0])
    p.add_argument("--train", type=Path, required=True, help="training cache (.npz) of training.candidate_data")
    p.add_argument("--eval", type=Path, required=True, help="evaluation cache (.npz), other studies")
    p.add_argument("--backbone", action="append", required=True,
                   help="backbone.pt or random:SEED, optionally NAME=SPEC; repeat for several")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"comma list of {', '.join(PROTOCOLS)}")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of training patients used for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", default="1,4", help="numbers of last blocks whose CLS tokens are concatenated")
    p.add_argument("--feature-set", default=DEFAULT_FEATURE_SET, help="feature set of the few-shot protocol")
    p.add_argument("--knn-ks", default=",".join(map(str, P.KNN_KS)))
    p.add_argument("--knn-temperature", type=float, default=P.KNN_TEMPERATURE)
    p.add_argument("--lrs", default=",".join(f"{v:g}" for v in P.LINEAR_LRS), help="linear-probe learning rates")
    p.add_argument("--epochs", type=int, default=10, help="linear-probe epochs")
    p.add_argument("--batch-size", type=int, default=256, help="linear-probe batch size")
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument("--few-shot-ks", default=",".join(map(str, P.FEW_SHOT_KS)), help="studies per class")
    p.add_argument("--few-shot-seeds", type=int, default=P.FEW_SHOT_SEEDS)
    p.add_argument("--few-shot-method", choices=("linear", "knn"), default="linear")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-batch", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-5 full, 1e-3 LoRA / BitFit")
    p.add_argument("--finetune-max-train", type=int, default=2000, help="training candidates of the fine-tuning protocols")
    p.add_argument("--lora-r", type=int, default=48)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--bootstrap", type=int, default=200, help="study resamples of the AUROC interval (0: none)")
    p.add_argument("--batch", type=int, default=1024, help="candidates per forward batch")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (1: on shared cores more threads slow the small ops down badly)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def _read_cache(path: Path) -> dict:
    from .candidate_data import load_cache

    if not Path(path).is_file():
        raise InputError(f"candidate cache not found: {path}")
    try:
        c = load_cache(path)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read candidate cache {Path(path).name}: {exc}") from None
    for key in ("crops", "target", "study", "meta"):
        if key not in c:
            raise InputError(f"candidate cache {Path(path).name} lacks '{key}'")
    if len(c["target"]) == 0:
        raise InputError(f"candidate cache {Path(path).name} holds no candidates")
    return c


def split_patients(pid: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> set[str]:
    """Validation patients: ``fraction`` of those with coronary candidates and of the others
    (rounded; at least one, never all, of a group of two or more), drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--val-fraction must be in (0, 1), got {fraction}")
    pos = sorted(set(pid[y == 1]))
    neg = sorted(set(pid) - set(pos))
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for group in (pos, neg):
        if len(group) < 2:
            continue
        n = min(max(1, int(round(fraction * len(group)))), len(group) - 1)
        val.update(group[i] for i in rng.permutation(len(group))[:n])
    if not val or val == set(pid):
        raise InputError(f"the training cache has {len(set(pid))} patient(s): too few for a validation split")
    return val


def load_data(train_path: Path, eval_path: Path, val_fraction: float, seed: int) -> dict:
    """Both caches as one sample table: labels, patient ids, split (train / val / test)."""
    from CoronaryCalciumDINOLib.data.splits import coca_patient

    from .train_candidates import cache_windows

    tr, ev = _read_cache(train_path), _read_cache(eval_path)
    crop_px, windows = cache_windows(tr)
    if cache_windows(ev) != (crop_px, windows):
        raise InputError("the training and evaluation caches differ in crop size or HU windows")
    for c, path in ((tr, train_path), (ev, eval_path)):
        if c["crops"].ndim != 3 or c["crops"].shape[-1] < crop_px or len(c["crops"]) != len(c["target"]):
            raise InputError(f"{Path(path).name}: crops of shape {c['crops'].shape} do not fit {len(c['target'])} "
                             f"candidates of {crop_px} px")

    def patients(c):
        names = np.array([coca_patient(str(s)) for s in c["meta"]["studies"]])
        return names[c["study"]]

    y_tr = (tr["target"] > 0).astype(np.int64)
    y_ev = (ev["target"] > 0).astype(np.int64)
    if y_tr.min() == y_tr.max():
        raise InputError("the training cache must hold coronary and non-coronary candidates")
    pid_tr, pid_ev = patients(tr), patients(ev)
    val = split_patients(pid_tr, y_tr, val_fraction, seed)
    split = np.concatenate([np.where(np.isin(pid_tr, sorted(val)), "val", "train"), np.full(y_ev.size, "test")])
    pid = np.concatenate([pid_tr, pid_ev])
    masks = P.split_masks(split, split.size)
    P.check_patient_disjoint(pid, masks)
    notes = []
    if ev["meta"].get("max_neg") is not None:
        notes.append(f"the evaluation cache keeps at most {ev['meta']['max_neg']} non-coronary candidates per "
                     "study: AUROC / AUPRC are those of that subsample")
    if y_ev.min() == y_ev.max():
        notes.append("the evaluation cache holds one class only: AUROC is undefined")
    if not (split == "val")[:y_tr.size][y_tr == 1].any():
        notes.append("only one training patient has coronary candidates, so validation has none: kNN and "
                     "linear-probe choices fall back to grid order / accuracy")
    return {"train_crops": tr["crops"], "eval_crops": ev["crops"], "labels": np.concatenate([y_tr, y_ev]),
            "patient_ids": pid, "split": split, "masks": masks, "eval_groups": ev["study"],
            "crop_px": crop_px, "windows": windows, "notes": notes}


def describe(data: dict, val_fraction: float) -> dict:
    lab, pid, masks = data["labels"], data["patient_ids"], data["masks"]
    return {"n_candidates": {k: int(v.sum()) for k, v in masks.items()},
            "n_positive": {k: int(lab[v].sum()) for k, v in masks.items()},
            "n_patients": {k: len(set(pid[v])) for k, v in masks.items()},
            "n_positive_patients": {k: len(set(pid[v & (lab == 1)])) for k, v in masks.items()},
            "val_fraction": float(val_fraction), "crop_px": data["crop_px"],
            "windows": [list(w) for w in data["windows"]], "notes": data["notes"]}


def _inputs(crops: np.ndarray, crop_px: int, windows):
    import torch

    from .pretrain_candidates import plain_view

    return plain_view(torch.from_numpy(np.asarray(crops, dtype=np.float32)), crop_px, windows)


def block_features(backbone, crops: np.ndarray, crop_px: int, windows, blocks, batch: int,
                   chunk: int = 8192) -> dict[str, np.ndarray]:
    """Frozen feature sets of stored HU crops (their inference input), chunk by chunk."""
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(crops), chunk):
        f = P.extract_block_features(backbone, _inputs(crops[s:s + chunk], crop_px, windows), blocks=blocks,
                                     mean_pool=(False, True), batch_size=batch)
        for k, v in f.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def open_backbone(spec: str, crop_px: int, in_chans: int):
    from .train_candidates import load_backbone

    if not str(spec).startswith("random:") and not Path(spec).is_file():
        raise InputError(f"backbone not found: {spec} (a backbone.pt or random:SEED)")
    try:
        bb = load_backbone(spec, crop_px, in_chans)
    except (ValueError, KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise InputError(f"cannot build backbone {spec}: {exc}") from None
    got = int(bb.patch_embed.proj.in_channels)
    if got != in_chans:
        raise InputError(f"backbone {spec} takes {got} channels, the caches have {in_chans} HU windows")
    size = getattr(bb.patch_embed, "img_size", None)
    if size is not None and getattr(bb.patch_embed, "strict_img_size", False) and tuple(size) != (crop_px, crop_px):
        raise InputError(f"backbone {spec} takes {tuple(size)} px images, the caches have {crop_px} px crops")
    return bb


def _backbone_specs(items) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, spec = item.split("=", 1) if "=" in item else (item, item)
        if not name or not spec:
            raise InputError(f"--backbone {item!r}: expected SPEC or NAME=SPEC")
        out.append((name, spec))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise InputError(f"backbone names must differ, got {names}")
    return out


# ----------------------------------------------------------------------------- metrics


def binary_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    """AUROC, AUPRC and a study-bootstrap 95 % AUROC interval of P(coronary) ``p``."""
    from CoronaryCalciumDINOLib.evaluation.metrics import auroc, average_precision

    from .train_candidates import bootstrap_auroc

    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    out = {"n": int(y.size), "n_positive": int(y.sum()), "auroc": auroc(y, p), "auprc": average_precision(y, p)}
    # an interval from resampling studies needs two studies or more
    ok = n_boot > 0 and np.unique(groups).size > 1
    out["auroc_ci95"] = list(bootstrap_auroc(y, p, groups, n=n_boot, seed=seed)) if ok else None
    return out


# ----------------------------------------------------------------------------- protocols


def run_knn(feats: dict, data: dict, args, log) -> tuple[dict, np.ndarray]:
    """Choose (feature set, k) by validation AUROC (train -> val); evaluate it with train + val."""
    lab, m = data["labels"], data["masks"]
    tr, va, te = m["train"], m["val"], m["test"]
    trva = tr | va
    ks = _ints(args.knn_ks)
    val_per_set, choice = {}, []
    for name, f in feats.items():
        r = P.knn_eval(f[tr], lab[tr], f[va], lab[va], ks=ks, temperature=args.knn_temperature)
        val_per_set[name] = r
        for k in ks:
            a = r["per_k"][str(k)].get("auroc")
            choice.append((-1.0 if a is None else a, name, k))
    best = max(range(len(choice)), key=lambda i: (choice[i][0], -i))  # ties: first in grid order
    val_auroc, name, k = choice[best]
    f = feats[name]
    per_k = P.knn_eval(f[trva], lab[trva], f[te], lab[te], ks=ks, temperature=args.knn_temperature)
    proba = P.knn_predict_proba(f[trva], lab[trva], f[te], k, args.knn_temperature, 2)[:, 1]
    return {"temperature": args.knn_temperature, "val_per_set": val_per_set,
            "selected": {"features": name, "k": int(k), "val_auroc": None if val_auroc < 0 else val_auroc},
            "eval_per_k": per_k}, proba


def run_linear(feats: dict, data: dict, args, log) -> tuple[dict, np.ndarray]:
    lab, m = data["labels"], data["masks"]
    r = P.linear_probe(feats, lab, data["split"], data["patient_ids"], lrs=_floats(args.lrs), epochs=args.epochs,
                       batch_size=args.batch_size, target_sensitivity=args.target_sensitivity, seed=args.seed)
    # the selected probe retrained on train + val exactly as linear_probe does (same seed): its probabilities
    f = feats[r["selected"]["features"]]
    trva = m["train"] | m["val"]
    clf = P.train_linear(f[trva], lab[trva], 2, lr=r["selected"]["lr"], epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed)
    return r, clf.predict_proba(f[m["test"]])[:, 1]


def run_fewshot(feats: dict, data: dict, args, log) -> dict:
    name = args.feature_set if args.feature_set in feats else next(iter(feats))
    r = P.few_shot_curve(feats[name], data["labels"], data["patient_ids"], data["split"],
                         ks=_ints(args.few_shot_ks), seeds=args.few_shot_seeds, method=args.few_shot_method)
    r["features"] = name
    r["unit"] = "K studies per class; each contributes all its candidates of that class"
    return r


def finetune_subset(data: dict, cap: int, seed: int) -> np.ndarray:
    """Indices (into the training cache) of the fine-tuning set: coronary up to half, the rest not."""
    lab = data["labels"][~data["masks"]["test"]]
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(lab == 1), np.flatnonzero(lab == 0)
    if cap < 2:
        raise InputError(f"--finetune-max-train must be >= 2, got {cap}")
    if pos.size + neg.size <= cap:
        return np.arange(lab.size)
    n_pos = min(pos.size, cap // 2)
    n_neg = min(neg.size, cap - n_pos)
    n_pos = min(pos.size, cap - n_neg)
    pick = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return np.sort(pick)


def run_finetune(backbone, mode: str, data: dict, args, log) -> tuple[dict, np.ndarray]:
    idx = finetune_subset(data, args.finetune_max_train, args.seed)
    x = _inputs(data["train_crops"][idx], data["crop_px"], data["windows"]).numpy()
    y = data["labels"][~data["masks"]["test"]][idx]
    mode_name = "full" if mode == "finetune" else mode
    clf, info = P.finetune_classifier(backbone, x, y, mode=mode_name, lr=args.finetune_lr,
                                      epochs=args.finetune_epochs, batch_size=args.finetune_batch,
                                      lora_r=args.lora_r, lora_alpha=args.lora_alpha, seed=args.seed)
    info.update(n_train=int(idx.size), n_train_positive=int(y.sum()))
    crops = data["eval_crops"]
    chunk = 8192
    proba = [clf.predict_proba(_inputs(crops[s:s + chunk], data["crop_px"], data["windows"]).numpy(),
                               batch_size=args.batch)[:, 1] for s in range(0, len(crops), chunk)]
    return {"train": info}, np.concatenate(proba)


def evaluate_backbone(bb, data: dict, protocols: list[str], args, log) -> dict:
    """Every chosen protocol on one backbone; each entry gets an ``eval`` metrics dict."""
    y_te = data["labels"][data["masks"]["test"]]
    groups = data["eval_groups"]

    def headline(p):
        return binary_metrics(y_te, p, groups, args.bootstrap, args.seed)

    out: dict = {}
    if any(p in FROZEN_PROTOCOLS for p in protocols):
        depth = len(bb.blocks)
        blocks = [b for b in _ints(args.blocks) if 1 <= b <= depth] or [depth]
        t = time.perf_counter()
        f_tr = block_features(bb, data["train_crops"], data["crop_px"], data["windows"], blocks, args.batch)
        f_ev = block_features(bb, data["eval_crops"], data["crop_px"], data["windows"], blocks, args.batch)
        feats = {k: np.concatenate([f_tr[k], f_ev[k]]) for k in f_tr}
        del f_tr, f_ev
        out["feature_sets"] = {k: int(v.shape[1]) for k, v in feats.items()}
        log(f"  features of {len(data['labels'])} candidates ({time.perf_counter() - t:.0f} s)")
        if "knn" in protocols:
            r, p = run_knn(feats, data, args, log)
            r["eval"] = headline(p)
            out["knn"] = r
            log(f"  kNN {r['selected']['features']} k={r['selected']['k']}: AUROC {r['eval']['auroc']}")
        if "linear" in protocols:
            r, p = run_linear(feats, data, args, log)
            r["eval"] = headline(p)
            out["linear"] = r
            log(f"  linear {r['selected']['features']} lr={r['selected']['lr']:g}: AUROC {r['eval']['auroc']}")
        if "fewshot" in protocols:
            out["fewshot"] = run_fewshot(feats, data, args, log)
            log("  few-shot: " + ", ".join(f"K={e['k']}: {e['auroc_mean']}" for e in out["fewshot"]["curve"]))
        del feats
    for mode in (p for p in IMAGE_PROTOCOLS if p in protocols):
        t = time.perf_counter()
        r, p = run_finetune(bb, mode, data, args, log)
        r["eval"] = headline(p)
        out[mode] = r
        log(f"  {mode}: {r['train']['trainable']} of {r['train']['total']} parameters trained "
            f"({time.perf_counter() - t:.0f} s): AUROC {r['eval']['auroc']}")
    return out


def summary_rows(name: str, res: dict) -> list[dict]:
    rows = []
    for proto in PROTOCOLS:
        if proto not in res:
            continue
        if proto == "fewshot":
            for e in res[proto]["curve"]:
                rows.append({"backbone": name, "protocol": "fewshot", "k": e["k"], "auroc": e["auroc_mean"],
                             "auroc_sd": e["auroc_sd"], "auprc": e.get("auprc_mean"), "n_seeds": e["n_seeds"]})
        else:
            ev = res[proto]["eval"]
            rows.append({"backbone": name, "protocol": proto, "auroc": ev["auroc"], "auprc": ev["auprc"],
                         "auroc_ci95": ev["auroc_ci95"]})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)

    try:
        protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
        bad = sorted(set(protocols) - set(PROTOCOLS))
        if bad or not protocols:
            raise InputError(f"unknown protocols {bad}; choose from {', '.join(PROTOCOLS)}")
        if args.out.exists() and not args.overwrite:
            raise InputError(f"{args.out} exists; pass --overwrite to replace it")
        specs = _backbone_specs(args.backbone)
        import torch

        from CoronaryCalciumDINOLib.pipeline.device import resolve_device

        if args.threads:
            torch.set_num_threads(args.threads)
        dev = resolve_device(args.device)
        t0 = time.perf_counter()
        data = load_data(args.train, args.eval, args.val_fraction, args.seed)
        results = {"train": str(args.train), "eval": str(args.eval), "protocols": protocols,
                   "task": "candidate is coronary calcium (cache target > 0)",
                   "data": describe(data, args.val_fraction), "backbones": {}, "summary": []}
        log("candidates: " + json.dumps(results["data"]["n_candidates"]) + ", coronary: "
            + json.dumps(results["data"]["n_positive"]))
        for name, spec in specs:
            t = time.perf_counter()
            log(f"backbone {name}")
            bb = open_backbone(spec, data["crop_px"], len(data["windows"])).to(dev)
            res = {"spec": spec, **evaluate_backbone(bb, data, protocols, args, log)}
            res["seconds"] = time.perf_counter() - t
            results["backbones"][name] = res
            results["summary"] += summary_rows(name, res)
            del bb
        results["seconds"] = time.perf_counter() - t0
    except CCDinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out} in {results['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
