"""Evaluate a frozen backbone with the DINOv2-for-radiology protocols; write one JSON.

    python -m training.evaluate_protocols --features feats.npz --protocols knn,linear,fewshot --out results.json
    python -m training.evaluate_protocols --ssl-dir SSL_OUT --studies DIR [--splits splits.json] \\
        --protocols knn,linear,fewshot,lora,bitfit,finetune --variant DINO-LG --out results.json

Inputs (one of):

* ``--features NPZ``: precomputed features: arrays ``labels`` (N,), ``patient_ids`` (N,),
  ``split`` (N,) of ``train`` / ``val`` / ``test``, and one ``features__<name>`` (N, D)
  per feature set (e.g. ``features__last4+avgpool``). Image protocols (lora, bitfit,
  finetune) need images and are not available from features.
* ``--ssl-dir DIR`` (``teacher_backbone.pth`` + ``backbone_config.json`` of the
  self-supervised stage) or ``--bundle DIR`` (a model bundle's backbone), with
  ``--studies`` (a folder of study folders). Every slice goes through the inference
  pipeline's own preprocessing (heart field, resize, HU windows); a slice is positive when
  ``study.json["slices_with_calcium"]`` lists it. Patients are grouped by
  :func:`~CoronaryCalciumDINOLib.data.splits.coca_patient`; splits come from ``--splits``
  or are made by patient (70/15/15, ``--seed``). ``--save-features`` keeps the extracted
  features as an NPZ in the format above.

Protocols: ``knn`` (every feature set), ``linear`` (grid over feature sets and learning
rates), ``fewshot`` (on ``--feature-set``), ``finetune`` / ``lora`` / ``bitfit`` (a slice
classifier trained on the train split, reported on validation and test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from CoronaryCalciumDINOLib.errors import CCDinoError, InputError

PROTOCOLS = ("knn", "linear", "fewshot", "finetune", "lora", "bitfit")
IMAGE_PROTOCOLS = ("finetune", "lora", "bitfit")
DEFAULT_FEATURE_SET = "last1+avgpool"  # the detector's input: CLS (+) mean patch token


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="evaluate_protocols", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=Path, help="precomputed features (.npz)")
    src.add_argument("--ssl-dir", type=Path, help="self-supervised output folder (teacher backbone)")
    src.add_argument("--bundle", type=Path, help="model bundle folder (its backbone is evaluated)")
    p.add_argument("--studies", type=Path, help="folder of study folders (with --ssl-dir / --bundle)")
    p.add_argument("--splits", type=Path, help="splits JSON (train / val / test study ids)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split when --splits is not given")
    p.add_argument("--protocols", default="knn,linear,fewshot", help=f"comma list of {', '.join(PROTOCOLS)}")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--variant", default=None, help="variant name stored in the results (e.g. DINO-LG)")
    p.add_argument("--save-features", type=Path, default=None, help="write the extracted features (.npz)")
    p.add_argument("--blocks", default="1,4", help="numbers of last blocks whose CLS tokens are concatenated")
    p.add_argument("--feature-set", default=DEFAULT_FEATURE_SET, help="feature set of the few-shot protocol")
    p.add_argument("--knn-ks", default="5,20,50,100,200")
    p.add_argument("--knn-temperature", type=float, default=0.07)
    p.add_argument("--lrs", default="1e-3,5e-3,1e-2,5e-2", help="linear-probe learning rates")
    p.add_argument("--epochs", type=int, default=10, help="linear-probe epochs")
    p.add_argument("--batch-size", type=int, default=256, help="linear-probe batch size")
    p.add_argument("--target-sensitivity", type=float, default=0.90)
    p.add_argument("--few-shot-ks", default="1,2,4,8,16", help="patients per class")
    p.add_argument("--few-shot-seeds", type=int, default=5)
    p.add_argument("--few-shot-method", choices=("linear", "knn"), default="linear")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--finetune-lr", type=float, default=None, help="default: 1e-5 full, 1e-3 LoRA / BitFit")
    p.add_argument("--lora-r", type=int, default=48)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--batch", type=int, default=32, help="slices per feature batch")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def load_feature_file(path: Path) -> dict:
    """Read a features NPZ (see the module docstring) into ``{labels, patient_ids, split, features}``."""
    if not path.is_file():
        raise InputError(f"features file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read features file {path.name}: {exc}") from None
    for key in ("labels", "patient_ids", "split"):
        if key not in data:
            raise InputError(f"features file {path.name} lacks the '{key}' array")
    feats = {k[len("features__"):]: data[k] for k in data.files if k.startswith("features__")}
    if not feats:
        raise InputError(f"features file {path.name} has no 'features__<name>' array")
    return {"labels": data["labels"].astype(np.int64), "patient_ids": data["patient_ids"].astype(str),
            "split": data["split"].astype(str), "features": feats, "images": None, "locations": None}


def save_feature_file(data: dict, path: Path) -> None:
    arrays = {"labels": data["labels"], "patient_ids": data["patient_ids"], "split": data["split"]}
    arrays.update({f"features__{k}": v for k, v in data["features"].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_backbone(args):
    """(backbone in eval mode, preprocessing dict, location_conditioning) from --ssl-dir / --bundle."""
    from CoronaryCalciumDINOLib.data.slices import DEFAULT_BOX_MM, DEFAULT_WINDOWS

    if args.bundle is not None:
        from CoronaryCalciumDINOLib.models.bundle import load_bundle

        b = load_bundle(args.bundle)
        return b.backbone.eval(), b.preprocessing, bool(b.manifest["backbone"].get("location_conditioning"))
    from CoronaryCalciumDINOLib.models.backbone import BACKBONE_CONFIG_FILE, load_backbone_dir

    backbone = load_backbone_dir(args.ssl_dir)
    cfg = json.loads((args.ssl_dir / BACKBONE_CONFIG_FILE).read_text(encoding="utf-8"))
    prep = {"windows": [list(map(float, w)) for w in DEFAULT_WINDOWS], "crop_mm": float(DEFAULT_BOX_MM),
            "input_size": int(cfg.get("img_size", 224))}
    return backbone, prep, bool(cfg.get("location_conditioning"))


def study_images(study_dir: Path, prep: dict, conditioned: bool):
    """(images (z, C, S, S) float32, positives (z,) int, locations (z,) or None) of one study."""
    from CoronaryCalciumDINOLib.data.studies import load_study
    from CoronaryCalciumDINOLib.pipeline import preprocess as pp

    st = load_study(study_dir, with_heart=False)
    hu = np.ascontiguousarray(st.ct.hu, dtype=np.float32)
    field = pp.field_for(pp.heart_centre(hu, st.ct.spacing), st.ct.spacing, float(prep["crop_mm"]))
    images = pp.to_windows(pp.extract_field(hu, field), int(prep["input_size"]), prep["windows"]).numpy()
    labels = np.zeros(hu.shape[0], dtype=np.int64)
    labels[[int(z) for z in st.meta.get("slices_with_calcium", [])]] = 1
    locations = pp.slice_locations(st.ct) if conditioned else None
    return images.astype(np.float32), labels, locations


def load_studies(args, backbone, prep: dict, conditioned: bool, keep_images: bool, log) -> dict:
    """Images -> multi-block features for every slice of every study in the splits."""
    from CoronaryCalciumDINOLib.data.splits import coca_patient, load_splits, make_splits
    from CoronaryCalciumDINOLib.data.studies import list_studies
    from CoronaryCalciumDINOLib.evaluation.protocols import extract_block_features

    if args.studies is None:
        raise InputError("--studies is required with --ssl-dir / --bundle")
    dirs = {d.name: d for d in list_studies(args.studies)}
    if not dirs:
        raise InputError(f"no study folders in {args.studies}")
    if args.splits is not None:
        splits = load_splits(args.splits)
    else:
        splits = make_splits(dirs, seed=args.seed, group=coca_patient)
    blocks = _ints(args.blocks)
    feats, labels, pids, split, images, locs = {}, [], [], [], [], []
    for name in ("train", "val", "test"):
        for sid in splits[name]:
            if sid not in dirs:
                raise InputError(f"study {sid} of the {name} split is not in {args.studies}")
            img, lab, loc = study_images(dirs[sid], prep, conditioned)
            f = extract_block_features(backbone, img, blocks=blocks, mean_pool=(False, True),
                                       location=loc, batch_size=args.batch)
            for k, v in f.items():
                feats.setdefault(k, []).append(v)
            labels.append(lab)
            pids += [coca_patient(sid)] * lab.size
            split += [name] * lab.size
            if keep_images:
                images.append(img)
                locs.append(loc)
            log(f"{name} study {sid}: {lab.size} slices, {int(lab.sum())} calcified")
    return {"labels": np.concatenate(labels), "patient_ids": np.array(pids), "split": np.array(split),
            "features": {k: np.concatenate(v) for k, v in feats.items()},
            "images": np.concatenate(images) if keep_images else None,
            "locations": (np.concatenate(locs) if keep_images and conditioned else None)}


# ----------------------------------------------------------------------------- protocols


def run_protocols(data: dict, protocols: list[str], args, backbone=None, log=print) -> dict:
    """Run the chosen protocols on loaded data; returns the JSON-ready results."""
    from CoronaryCalciumDINOLib.evaluation import protocols as P

    lab, pid, split, feats = data["labels"], data["patient_ids"], data["split"], data["features"]
    masks = P.split_masks(split, lab.size)
    P.check_patient_disjoint(pid, masks)
    out: dict = {
        "n_slices": {k: int(v.sum()) for k, v in masks.items()},
        "n_positive": {k: int(lab[v].sum()) for k, v in masks.items()},
        "n_patients": {k: len(set(pid[v])) for k, v in masks.items()},
        "feature_sets": {k: int(v.shape[1]) for k, v in feats.items()},
    }
    trva, te = masks["train"] | masks["val"], masks["test"]
    if "knn" in protocols:
        out["knn"] = {}
        for name, f in feats.items():
            out["knn"][name] = P.knn_eval(f[trva], lab[trva], f[te], lab[te], ks=_ints(args.knn_ks),
                                          temperature=args.knn_temperature)
            log(f"kNN {name}: best k={out['knn'][name]['best_k']} accuracy {out['knn'][name]['best_accuracy']:.3f}")
    if "linear" in protocols:
        r = P.linear_probe(feats, lab, split, pid, lrs=_floats(args.lrs), epochs=args.epochs,
                           batch_size=args.batch_size, target_sensitivity=args.target_sensitivity)
        out["linear"] = r
        log(f"linear probe: {r['selected']['features']} lr={r['selected']['lr']:g} -> test AUROC {r['test'].get('auroc')}")
    if "fewshot" in protocols:
        name = args.feature_set if args.feature_set in feats else next(iter(feats))
        r = P.few_shot_curve(feats[name], lab, pid, split, ks=_ints(args.few_shot_ks), seeds=args.few_shot_seeds,
                             method=args.few_shot_method)
        r["features"] = name
        out["fewshot"] = r
        log("few-shot: " + ", ".join(f"K={e['k']}: {e['auroc_mean']}" for e in r["curve"]))
    wanted = [p for p in IMAGE_PROTOCOLS if p in protocols]
    if wanted:
        if data.get("images") is None or backbone is None:
            raise InputError(f"protocols {wanted} need images: use --ssl-dir or --bundle with --studies")
        x, loc = data["images"], data.get("locations")
        tr, va = masks["train"], masks["val"]
        out["finetune"] = {}
        for mode in wanted:
            mode_name = "full" if mode == "finetune" else mode
            clf, info = P.finetune_classifier(
                backbone, x[tr], lab[tr], mode=mode_name, lr=args.finetune_lr, epochs=args.finetune_epochs,
                batch_size=args.finetune_batch, location=None if loc is None else loc[tr],
                lora_r=args.lora_r, lora_alpha=args.lora_alpha, seed=args.seed)
            res = {"train": info}
            for name, m in (("val", va), ("test", te)):
                res[name] = P.evaluate_classifier(clf, x[m], lab[m], None if loc is None else loc[m])
            out["finetune"][mode_name] = res
            log(f"{mode_name}: {info['trainable']} of {info['total']} backbone parameters trained -> "
                f"test AUROC {res['test'].get('auroc')}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[evaluate] {msg}", file=sys.stderr)

    try:
        protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
        bad = sorted(set(protocols) - set(PROTOCOLS))
        if bad or not protocols:
            raise InputError(f"unknown protocols {bad}; choose from {', '.join(PROTOCOLS)}")
        if args.out.exists() and not args.overwrite:
            raise InputError(f"{args.out} exists; pass --overwrite to replace it")
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        backbone = None
        if args.features is not None:
            data = load_feature_file(args.features)
            source = {"features": str(args.features)}
        else:
            from CoronaryCalciumDINOLib.pipeline.device import resolve_device

            backbone, prep, conditioned = load_backbone(args)
            backbone = backbone.to(resolve_device(args.device))
            keep = any(p in IMAGE_PROTOCOLS for p in protocols)
            data = load_studies(args, backbone, prep, conditioned, keep, log)
            source = {"backbone": str(args.ssl_dir or args.bundle), "studies": str(args.studies),
                      "preprocessing": prep}
            if args.save_features is not None:
                save_feature_file(data, args.save_features)
        results = {"variant": args.variant, "source": source, "protocols": protocols}
        results.update(run_protocols(data, protocols, args, backbone, log))
        results["seconds"] = time.perf_counter() - t0
    except CCDinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    log(f"wrote {args.out} in {results['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
