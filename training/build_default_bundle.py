"""Build the default model bundle shipped with the module, in one command.

    python -m training.build_default_bundle --work runs/default-bundle \\
        --out CoronaryCalciumDINO/Resources/Models/ccdino-default --overwrite

Stages (each skipped when its output already exists in ``--work``, so a run can resume):

1. synthetic training studies, seeds ``--first-seed`` .. (never a held-out seed);
2. self-supervised DINO-LG pretraining of a small ViT (``training.pretrain_dino
   --label-guided``) for ``--ssl-steps`` steps;
3. the slice detector on frozen teacher features (``training.train_detector``);
4. the per-artery UNet (``training.train_segmenter``);
5. evaluation of the assembled bundle on ``--n-test`` held-out synthetic studies
   (:data:`CoronaryCalciumDINOLib.data.splits.HELDOUT_SYNTHETIC_SEEDS`);
6. the bundle (fp16 weights, manifest with metrics, model card) written to ``--out``, and
   the metrics plus the exact stage commands written to ``--results``.

The defaults are a tiny CPU budget (minutes per stage on 2 threads); scale ``--n-train``,
``--ssl-steps``, ``--arch``, ``--img-size`` and ``--seg-steps`` up on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_default_bundle", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "default-bundle", help="working folder (resumable)")
    p.add_argument("--out", type=Path, default=REPO / "CoronaryCalciumDINO" / "Resources" / "Models" / "ccdino-default")
    p.add_argument("--results", type=Path, default=REPO / "training" / "results")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--name", default="ccdino-default")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--n-train", type=int, default=40, help="synthetic training + validation studies")
    p.add_argument("--n-test", type=int, default=40, help="held-out synthetic studies for the reported metrics")
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--matrix", type=int, default=None, help="synthetic image matrix (default: the generator's 512)")
    p.add_argument("--arch", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=112, help="ViT global crop / detector input size")
    p.add_argument("--local-size", type=int, default=48)
    p.add_argument("--ssl-steps", type=int, default=400)
    p.add_argument("--ssl-batch", type=int, default=16)
    p.add_argument("--ssl-lr", type=float, default=4e-3,
                   help="DINO lr at batch 256 (scaled linearly: 4e-3 at batch 16 gives 2.5e-4)")
    p.add_argument("--ssl-out-dim", type=int, default=4096, help="DINO head output dimension (prototypes)")
    p.add_argument("--ssl-teacher-temp", type=float, default=0.04, help="DINO teacher softmax temperature")
    p.add_argument("--ssl-center-momentum", type=float, default=0.9,
                   help="EMA momentum of the teacher centre (0: centre on the previous batch's mean)")
    p.add_argument("--ssl-freeze-last-layer", type=int, default=1,
                   help="epochs (of ssl-steps / 10 steps) with the head's last layer frozen")
    p.add_argument("--plain-dino", action="store_true",
                   help="plain DINO (no label-guided crops), e.g. for the DINO vs DINO-LG comparison")
    p.add_argument("--ssl-no-norm-last-layer", action="store_true",
                   help="let the head's last-layer weight norms be learned")
    p.add_argument("--crop-mm", type=float, default=160.0, help="detector heart field (mm)")
    p.add_argument("--seg-crop-mm", type=float, default=140.0)
    p.add_argument("--seg-input", type=int, default=192)
    p.add_argument("--seg-steps", type=int, default=3000)
    p.add_argument("--seg-batch", type=int, default=8)
    p.add_argument("--seg-patch", type=int, default=128)
    p.add_argument("--seg-channels", default="16,32,64,128")
    p.add_argument("--seg-neg-ratio", type=float, default=1.0, help="slices without calcium per calcified slice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def _rel(path: Path) -> Path:
    """``path`` relative to the repository when inside it (recorded commands stay portable)."""
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stage_studies(args, folder: Path) -> list[Path]:
    """Stage 1: the synthetic training studies (existing complete ones are kept)."""
    from CoronaryCalciumDINOLib.data.splits import check_disjoint
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import synthetic_study_dirs

    seeds = range(args.first_seed, args.first_seed + args.n_train)
    check_disjoint(seeds)
    # every training study gets at least one plaque: calcified slices are rare (< 10 %)
    return synthetic_study_dirs(seeds, folder, lambda f, m: _log(f"synth {m}"), plaques=True, **_overrides(args))


def _overrides(args) -> dict:
    return {} if args.matrix is None else {"matrix": args.matrix}


def main(argv=None) -> int:
    import torch

    from CoronaryCalciumDINOLib.data.splits import HELDOUT_SYNTHETIC_SEEDS
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import evaluate_bundle, summarise, synthetic_study_dirs
    from CoronaryCalciumDINOLib.models.backbone import BACKBONE_CONFIG_FILE, load_backbone_dir
    from CoronaryCalciumDINOLib.models.bundle import load_bundle, save_bundle
    from CoronaryCalciumDINOLib.report import write_json

    from . import pretrain_dino, train_detector, train_segmenter

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; use --overwrite")
    args.out, args.results = args.out.resolve(), args.results.resolve()
    work = args.work.resolve()
    os.chdir(REPO)  # paths inside the repository are recorded relative to it
    work = _rel(work)
    work.mkdir(parents=True, exist_ok=True)
    # seconds of each stage when it actually ran (kept across resumed runs)
    timings_file = work / "stage_seconds.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    commands: dict[str, list[str]] = {}

    def ran(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")

    t = time.perf_counter()
    stage_studies(args, work / "studies")
    studies = work / "studies"
    if "synth_s" not in timings:
        ran("synth_s", t)
    _log(f"{args.n_train} training studies ready")

    ssl_dir = work / "ssl"
    commands["ssl"] = [
        "--data", str(studies), "--output", str(ssl_dir), "--arch", args.arch, "--img-size", str(args.img_size),
        "--local-size", str(args.local_size), "--local-crops", "4", *([] if args.plain_dino else ["--label-guided"]), "--batch-size", str(args.ssl_batch),
        "--epochs", "10", "--warmup-epochs", "1", "--lr", str(args.ssl_lr), "--max-steps", str(args.ssl_steps),
        "--iters-per-epoch", str(max(1, args.ssl_steps // 10)), "--out-dim", str(args.ssl_out_dim),
        "--head-hidden", "512", "--head-bottleneck", "128", "--freeze-last-layer", str(args.ssl_freeze_last_layer),
        "--teacher-temp", str(args.ssl_teacher_temp), "--warmup-teacher-temp", str(args.ssl_teacher_temp),
        "--center-momentum", str(args.ssl_center_momentum), "--momentum-teacher", "0.99",
        "--num-workers", "0", "--cache-studies", str(args.n_train), "--device", args.device,
        "--seed", "0", "--drop-path", "0.0",
    ] + (["--no-norm-last-layer"] if args.ssl_no_norm_last_layer else [])
    t = time.perf_counter()
    if not (ssl_dir / BACKBONE_CONFIG_FILE).is_file():
        _log("stage 2: DINO-LG pretraining")
        if pretrain_dino.main(commands["ssl"]) != 0:
            raise SystemExit("self-supervised stage failed")
        ran("ssl_s", t)

    det_dir = work / "detector"
    commands["detector"] = ["--studies", str(studies), "--backbone", str(ssl_dir), "--out", str(det_dir),
                            "--crop-mm", str(args.crop_mm), "--device", args.device, "--threads", str(args.threads)]
    t = time.perf_counter()
    if not (det_dir / train_detector.DETECTOR_FILE).is_file():
        _log("stage 3: slice detector")
        train_detector.main(commands["detector"])
        ran("detector_s", t)

    seg_dir = work / "segmenter"
    commands["segmenter"] = ["--studies", str(studies), "--out", str(seg_dir), "--crop-mm", str(args.seg_crop_mm),
                             "--input-size", str(args.seg_input), "--steps", str(args.seg_steps),
                             "--batch", str(args.seg_batch), "--patch", str(args.seg_patch),
                             "--channels", args.seg_channels, "--neg-ratio", str(args.seg_neg_ratio), "--device", args.device, "--threads", str(args.threads)]
    t = time.perf_counter()
    if not (seg_dir / train_segmenter.SEGMENTER_FILE).is_file():
        _log("stage 4: segmenter")
        train_segmenter.main(commands["segmenter"])
        ran("segmenter_s", t)

    # assemble (metrics are added once measured)
    det = torch.load(det_dir / train_detector.DETECTOR_FILE, map_location="cpu")
    seg = torch.load(seg_dir / train_segmenter.SEGMENTER_FILE, map_location="cpu")
    backbone = load_backbone_dir(ssl_dir)
    bb_cfg = json.loads((ssl_dir / BACKBONE_CONFIG_FILE).read_text())
    det_metrics = json.loads((det_dir / train_detector.METRICS_FILE).read_text())
    seg_metrics = json.loads((seg_dir / train_segmenter.METRICS_FILE).read_text())
    ssl_summary = _ssl_summary(ssl_dir)
    hardware = _hardware(args.device)
    common = dict(
        name=args.name, version=args.version,
        trained_on=f"{args.n_train} synthetic non-contrast cardiac CT studies (seeds {args.first_seed}-"
                   f"{args.first_seed + args.n_train - 1}), trained on {hardware}",
        not_validated_on="patient data (no real CT was used for training or validation)",
        backbone_config=bb_cfg, backbone_state=backbone.state_dict(),
        detector_state=det["state_dict"],
        detector_info={"in_dim": det["in_dim"], "threshold": det["threshold"],
                       "youden_threshold": det["youden_threshold"], "target_sensitivity": det["target_sensitivity"]},
        segmenter_config=seg["config"], segmenter_state=seg["state_dict"], preprocessing=det["preprocessing"],
    )
    candidate = save_bundle(work / "candidate", overwrite=True, **common)

    t = time.perf_counter()
    _log("stage 5: evaluation on held-out synthetic studies")
    test_seeds = range(HELDOUT_SYNTHETIC_SEEDS.start, HELDOUT_SYNTHETIC_SEEDS.start + args.n_test)
    test_dirs = synthetic_study_dirs(test_seeds, work / "heldout", **_overrides(args))
    b = load_bundle(candidate)
    outcomes = evaluate_bundle(b, test_dirs, device=args.device, progress=lambda f, m: _log(m))
    heldout = summarise(outcomes, b.threshold, det["target_sensitivity"])
    ran("evaluation_s", t)

    metrics = {
        "heldout_synthetic": {"seeds": [test_seeds.start, test_seeds.stop], **heldout},
        "detector_validation": {k: det_metrics[k] for k in ("val", "val_at_youden", "threshold", "youden_threshold")},
        "segmenter_validation": seg_metrics["val"],
        "ssl": ssl_summary,
    }
    environment = {"device": args.device, "hardware": hardware, "threads": args.threads, "torch": torch.__version__,
                   "python": platform.python_version(), "machine": platform.machine()}
    card = model_card(args, metrics, bb_cfg, seg["config"], det, timings, environment)
    save_bundle(args.out, overwrite=args.overwrite, metrics=_compact(metrics), model_card=card, **common)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json({"bundle": str(_rel(args.out)),
                "metrics": metrics, "timings_s": timings, "environment": environment,
                "detector_train": det_metrics, "segmenter_train": seg_metrics},
               args.results / f"{args.name}-metrics.json")
    write_json({"recipe": "python -m training.build_default_bundle " + " ".join(argv or sys.argv[1:]),
                "stages": {"ssl": "python -m training.pretrain_dino " + " ".join(commands["ssl"]),
                           "detector": "python -m training.train_detector " + " ".join(commands["detector"]),
                           "segmenter": "python -m training.train_segmenter " + " ".join(commands["segmenter"])}},
               args.results / f"{args.name}-commands.json")
    _log(f"bundle written to {_rel(args.out)}")
    return 0


def _ssl_summary(ssl_dir: Path) -> dict:
    """Steps and last logged loss of the self-supervised stage (from its log.jsonl)."""
    log = ssl_dir / "log.jsonl"
    last = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "loss" in rec:
                last = rec
    return {k: last[k] for k in ("step", "epoch", "loss") if k in last}


def _compact(metrics: dict) -> dict:
    """The headline numbers for the manifest (the full metrics go to the results file)."""
    h = metrics["heldout_synthetic"]
    t = h["slices"]["at_threshold"]
    return {
        "heldout_synthetic_studies": h["n_studies"],
        "slice_sensitivity": t["sensitivity"], "slice_specificity": t["specificity"],
        "slice_auroc": h["slices"]["auroc"], "slice_auprc": h["slices"]["auprc"],
        "total_agatston_icc_2_1": h["pipeline"]["agatston_agreement"]["total"]["icc_2_1"],
        "total_agatston_mae": h["pipeline"]["agatston_agreement"]["total"]["mae"],
        "risk_accuracy": h["pipeline"]["risk"]["accuracy"],
        "risk_kappa_linear": h["pipeline"]["risk"]["kappa_linear"],
        "risk_accuracy_unet_all_slices": h["unet_all_slices"]["risk"]["accuracy"],
    }


def _fmt(v, nd=3) -> str:
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _hardware(device: str) -> str:
    """``CPU`` or the GPU's name, for the bundle's records."""
    import torch

    from CoronaryCalciumDINOLib.pipeline.device import resolve_device

    dev = resolve_device(device)
    return "CPU" if dev.type == "cpu" else f"GPU ({torch.cuda.get_device_name(dev)})"


def model_card(args, metrics, bb_cfg, seg_cfg, det, timings, environment) -> str:
    h = metrics["heldout_synthetic"]
    s = h["slices"]["at_threshold"]
    pa, ua = h["pipeline"], h["unet_all_slices"]
    rows = "\n".join(
        f"| {a} | {_fmt(pa['agatston_agreement'][a]['icc_2_1'])} | {_fmt(pa['agatston_agreement'][a]['pearson_r'])} | "
        f"{_fmt(pa['agatston_agreement'][a]['mae'], 1)} | {_fmt(pa['agatston_agreement'][a]['bland_altman']['bias'], 1)} |"
        for a in ("LM", "LAD", "LCX", "RCA", "total")
    )
    minutes = sum(timings.values()) / 60.0
    ssl = metrics.get("ssl", {})
    dv = metrics["detector_validation"]["val"]
    sv = metrics["segmenter_validation"]
    import math

    uniform = math.log(args.ssl_out_dim)
    collapsed = ssl.get("loss") is not None and abs(ssl["loss"] - uniform) < 0.05
    ssl_note = (
        f"Final DINO loss {ssl['loss']:.3f} after {ssl.get('step')} steps, i.e. ln({args.ssl_out_dim}) = {uniform:.3f}: this short run "
        "did not leave DINO's initial uniform-output phase, so the backbone's features are close to those of its "
        "random initialisation; the slice detector is correspondingly weak."
        if collapsed else f"Final DINO loss {_fmt(ssl.get('loss'))} after {ssl.get('step')} steps."
    )
    return f"""# {args.name} {args.version}

**{"A tiny demonstration model, trained on a CPU" if environment["hardware"] == "CPU" else "A model trained on " + environment["hardware"]}
on synthetic data. Not validated on patient data. Research use only; not a medical device.**

## What it is
- Backbone: `{bb_cfg['name']}` (ViT, {bb_cfg['depth']} blocks, {bb_cfg['num_heads']} heads, embed {bb_cfg['embed_dim']}),
  input {bb_cfg['img_size']} px, 3 HU windows {det['preprocessing']['windows']}, heart field
  {det['preprocessing']['crop_mm']:.0f} mm. Self-supervised {'DINO' if args.plain_dino else 'DINO-LG (label-guided crops)'} for
  {args.ssl_steps} steps of batch {args.ssl_batch} from random initialisation. {ssl_note}
- Slice detector: linear head on frozen teacher features (CLS + mean patch token); threshold
  {det['threshold']:.4f} chosen on validation slices for sensitivity >= {det['target_sensitivity']:.2f}
  (Youden point {_fmt(det['youden_threshold'], 4)}). Validation slices: sensitivity
  {_fmt(dv['at_threshold']['sensitivity'])}, specificity {_fmt(dv['at_threshold']['specificity'])}, AUROC {_fmt(dv['auroc'])}.
- Segmenter: MONAI 2D UNet, channels {seg_cfg['channels']}, 5 classes (background, LM, LAD, LCX, RCA),
  input {seg_cfg['input_size']} px over {seg_cfg['crop_mm']:.0f} mm
  ({seg_cfg['crop_mm'] / seg_cfg['input_size']:.2f} mm pixels), slice +/- {seg_cfg['neighbours']} neighbour(s),
  {args.seg_steps} steps. Validation Dice on calcified slices: LM {_fmt(sv['dice']['LM'])}, LAD
  {_fmt(sv['dice']['LAD'])}, LCX {_fmt(sv['dice']['LCX'])}, RCA {_fmt(sv['dice']['RCA'])}, any calcium
  {_fmt(sv['dice_any_calcium'])}.

## How it was trained
- Data: {args.n_train} synthetic studies from the project's generator (seeds {args.first_seed}-
  {args.first_seed + args.n_train - 1}, each with at least one coronary plaque), study-level
  train/validation split. Held-out test studies use the generator's defaults (about 30 %
  without coronary calcium).
- Hardware: {environment['hardware']} ({environment['threads']} CPU threads, torch {environment['torch']}); total
  {minutes:.0f} minutes for all stages ({', '.join(f"{k[:-2]} {v / 60:.1f}" for k, v in timings.items())} min). Rebuild: `python -m training.build_default_bundle`.

## Measured on {h['n_studies']} held-out synthetic studies (seeds {h['seeds'][0]}-{h['seeds'][1] - 1})
Slices ({h['slices']['n']} slices, {h['slices']['n_positive']} with calcium): sensitivity {_fmt(s['sensitivity'])},
specificity {_fmt(s['specificity'])}, AUROC {_fmt(h['slices']['auroc'])}, AUPRC {_fmt(h['slices']['auprc'])}.

Agatston agreement of the pipeline with the reference labels:

| artery | ICC(2,1) | Pearson r | MAE | bias |
|---|---|---|---|---|
{rows}

Risk category (0, 1-10, 11-100, 101-400, >400): accuracy {_fmt(pa['risk']['accuracy'])}, linear
weighted kappa {_fmt(pa['risk']['kappa_linear'])}; the same UNet on every slice (no detector):
accuracy {_fmt(ua['risk']['accuracy'])}, kappa {_fmt(ua['risk']['kappa_linear'])}.

## Limits
- Synthetic studies only: real anatomy, noise, motion, stents, valves and bone near the
  coronaries differ; expect worse, possibly much worse, results on patient scans.
- Tiny model and budget: the numbers above describe this demonstration, not the method.
- Slices unlike the training data (e.g. slices above or below the body, phantoms) can get
  high detector probabilities.
- Not validated on patient data (e.g. COCA); use `ccdino evaluate` with your own data and
  retrain with `training/` on a GPU before drawing any conclusion.
"""


if __name__ == "__main__":
    sys.exit(main())
