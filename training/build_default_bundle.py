"""Build the default model bundle shipped with the module, in one command, on a CPU.

    python -m training.build_default_bundle --overwrite            # 2-core CPU
    python -m training.build_default_bundle --device cuda --n-train 2000 --ssl-steps 20000 \\
        --ssl-batch 512 --seg-steps 20000 --work runs/big --out runs/big-bundle \\
        --name ccdino-big --results runs/big/results                              # scaled up

Stages (each skipped when its output already exists in ``--work`` and was made from the same
inputs, so a run resumes where it stopped; an output made from other studies or settings is
made again; the SSL stage also resumes from its own checkpoint):

1. synthetic studies: ``--n-train`` training + validation studies (seeds ``--first-seed``..,
   never a held-out seed; the last ``--n-val`` are the validation studies) with
   ``--n-phantoms`` calcium-scoring phantoms (:mod:`CoronaryCalciumDINOLib.synth.phantom`,
   seeds ``--phantom-seed``..; the last ``--n-val-phantoms`` for validation),
   ``--n-calibration`` calibration studies (seeds ``--calibration-seed``..), ``--n-test``
   held-out studies (seeds 900000..) and ``--n-test-phantoms`` held-out phantoms (seeds
   900100..);
2. candidate caches (:mod:`training.candidate_data`): the inference crop sampler run on
   every study (the training cache also keeps, as they are, the heart field's candidates the
   anatomy step leaves out: bone, calcified costal cartilage, chest wall, almost all of them
   non-coronary);
3. DINO-LG self-supervised pretraining of the candidate ViT
   (:mod:`training.pretrain_candidates`);
4. detector heads, the gradient-boosted baseline and the per-artery segmenter
   (:mod:`training.train_candidates`), then the noise rule fitted on the calibration studies
   (:mod:`training.fit_noise_rule`);
5. evaluation of the assembled bundle on the held-out studies (pipeline and the
   segmenter on every slice, slice detection, Agatston agreement, risk, power of zero)
   with the baseline's slice detection on the same candidates, and the real phantom scan;
6. the bundle (fp16 weights, manifest with metrics, model card) written to ``--out``, and
   the metrics and the exact stage commands written to ``--results``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from CoronaryCalciumDINOLib.models.bundle import DEFAULT_BUNDLE_DIR

REPO = Path(__file__).resolve().parents[1]
#: Default ``--cut-fields``: the share of training and validation studies cut to a
#: heart-centred field of view (training.candidate_data.cut_field). 0: tried at 0.3, it did
#: not keep the aorta's names on the real dev scans in the 180 mm fields set off the heart
#: (training/results/cut-fields-experiment.md).
CUT_FIELDS = 0.0
PHANTOM = REPO / "Testing" / "Data" / "qrm-phantom-canon"


def parse_args(argv=None) -> argparse.Namespace:
    from .candidate_data import SEGMENTER_OUTSIDE_MAX_MM2, add_segmenter_draw_arguments

    p = argparse.ArgumentParser(prog="python -m training.build_default_bundle", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "default-bundle", help="working folder (resumable)")
    p.add_argument("--out", type=Path, default=DEFAULT_BUNDLE_DIR,
                   help="bundle folder (default: the packaged default bundle, CoronaryCalciumDINOLib/bundles/ccdino-default)")
    p.add_argument("--results", type=Path, default=REPO / "training" / "results")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--name", default=None, help="bundle name (default ccdino-default; with another "
                   "--ssl-variant, ccdino-<variant>)")
    p.add_argument("--version", default="0.6.8")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the DINO-LG, heads and segmenter and phantom-head stages (another one trains "
                        "an independent bundle from the same studies: the run-to-run spread)")
    # 60 validation studies (30 left the threshold to a handful of slices) and 340 training studies:
    # training/results/ccdino-0.6.2-candidate.md and ccdino-0.6.3-candidate.md
    p.add_argument("--n-train", type=int, default=400, help="synthetic training + validation studies")
    p.add_argument("--n-val", type=int, default=60, help="of which validation studies (threshold choice)")
    p.add_argument("--n-test", type=int, default=100, help="held-out synthetic studies for the reported metrics")
    p.add_argument("--n-calibration", type=int, default=400,
                   help="synthetic studies that fit the noise rule (100 left its edge to chance: 32 of 32 calcium-free at 0 there, 29 of 33 on the held-out studies)")
    p.add_argument("--calibration-seed", type=int, default=800000, help="first seed of the calibration studies")
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--n-phantoms", type=int, default=60, help="synthetic calcium-scoring phantoms for training + validation")
    p.add_argument("--n-val-phantoms", type=int, default=10, help="of which validation phantoms")
    p.add_argument("--phantom-seed", type=int, default=700000, help="first seed of the training phantoms")
    p.add_argument("--n-test-phantoms", type=int, default=20, help="held-out synthetic phantoms (seeds 900100..)")
    p.add_argument("--max-neg", type=int, default=1500, help="non-coronary candidates kept per training study")
    # the chest wall's candidates as negatives, the segmenter only its specks: training/results/ccdino-0.6.4-candidate.md
    p.add_argument("--seg-outside-max-mm2", type=float, default=SEGMENTER_OUTSIDE_MAX_MM2,
                   help="the segmenter also trains on the candidates the heart region leaves out of at most this area "
                        "(the chest wall's specks, not its bone; 0: none)")
    p.add_argument("--train-in-region-only", action="store_true",
                   help="train on the heart region's candidates only (0.6.3 and before); the default also "
                        "trains on those the anatomy step leaves out (bone, chest wall; almost all non-coronary)")
    p.add_argument("--cut-fields", type=float, default=CUT_FIELDS, metavar="SHARE",
                   help="share of the training and validation studies the caches cut to a heart-centred field of "
                        f"view first ({cut_fields_text()}: training.candidate_data."
                        f"cut_field; default {CUT_FIELDS:g}: none, as the shipped bundles were trained; 0.3 was tried: "
                        "training/results/cut-fields-experiment.md)")
    p.add_argument("--ssl-steps", type=int, default=1200)
    p.add_argument("--ssl-batch", type=int, default=64)
    p.add_argument("--ssl-variant", choices=BUNDLE_VARIANTS, default="dino-lg",
                   help="self-supervised pretraining (training.pretrain_candidates.VARIANTS): DINO-LG (the default), "
                        "plain DINO, or DINO-LG + multi-view (VET-DINO, neighbouring slices); a variant other than "
                        "the default trains its own networks in the same --work (stage folders named after it)")
    p.add_argument("--seg-steps", type=int, default=2000)
    # size balancing, the coarse views' dropout and what the dropped draws learn (0.5, 0.5 and
    # calcium: 0.6.7, training/results/ccdino-0.6.7.md; 0.5, 0.5 and arteries: the 0.6.6 candidate,
    # not shipped, training/results/ccdino-0.6.6-candidate.md; 0, 0: up to 0.6.5)
    add_segmenter_draw_arguments(p)
    # 0.98, the kept held-out target: 0.99 reached into calcified slices no candidate reaches
    # (training/results/ccdino-0.6.2-candidate.md)
    p.add_argument("--target-sensitivity", type=float, default=0.98,
                   help="slice sensitivity on the validation studies that sets the detector threshold")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1, help="processes generating synthetic studies")
    p.add_argument("--matrix", type=int, default=None, help="synthetic image matrix (default: the generator's 512)")
    p.add_argument("--n-slices", type=int, default=None, help="synthetic slices per study (default: the generator's)")
    p.add_argument("--non-gated-every", type=int, default=0, metavar="K",
                   help="render every K-th training / validation study as its non-gated reconstruction "
                        "(5 mm slices, cardiac motion blur; default 0: none). Calibration and held-out studies stay gated")
    p.add_argument("--train-plaques", action="store_true",
                   help="every training study gets coronary plaques (for tiny runs; default: the generator's mix)")
    return p.parse_args(argv)


#: SSL variants the pipeline can run a bundle of (location conditioning needs positions the
#: pipeline does not pass; the DINOv2-style ViT is for the probes)
BUNDLE_VARIANTS = ("dino-lg", "dino", "dino-lg-mv")
#: what the model card says of each
SSL_TEXT = {"dino-lg": "DINO-LG (label-guided candidate crops)", "dino": "plain DINO (no label guidance)",
            "dino-lg-mv": "DINO-LG (label-guided candidate crops) + multi-view (VET-DINO: the second global view "
                          "cut from the neighbouring slice)"}


def segmenter_draw_flags(args) -> list[str]:
    """The segmenter stage's draw settings as flags, all three always: a work folder whose
    segmenter was trained with other settings (or before they existed) is not current."""
    return ["--seg-size-power", f"{args.seg_size_power:g}", "--seg-coarse-dropout", f"{args.seg_coarse_dropout:g}",
            "--seg-dropped-learn", args.seg_dropped_learn]


def _rel(path: Path) -> Path:
    """``path`` relative to the repository when inside it (recorded commands stay portable)."""
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _hardware(device: str) -> str:
    import torch

    from CoronaryCalciumDINOLib.pipeline.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads used)"
    return f"GPU ({torch.cuda.get_device_name(dev)})"


def main(argv=None) -> int:
    import numpy as np
    import torch

    from CoronaryCalciumDINOLib.data.splits import HELDOUT_PHANTOM_SEEDS, HELDOUT_SYNTHETIC_SEEDS, check_disjoint
    from CoronaryCalciumDINOLib.evaluation.metrics import slice_metrics
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import evaluate_bundle, summarise, synthetic_study_dirs
    from CoronaryCalciumDINOLib.models.bundle import load_bundle, save_bundle
    from CoronaryCalciumDINOLib.evaluation.metrics import choose_thresholds
    from CoronaryCalciumDINOLib.pipeline.candidates import CandidateConfig
    from CoronaryCalciumDINOLib.report import write_json

    from . import fit_noise_rule, pretrain_candidates, train_candidates
    from .candidate_data import build_adjacent, build_cache, load_cache, segmenter_draw_problem

    args = parse_args(argv)
    reserved = HELDOUT_PHANTOM_SEEDS.start - HELDOUT_SYNTHETIC_SEEDS.start
    if not 1 <= args.n_test <= reserved or not 1 <= args.n_test_phantoms <= len(HELDOUT_PHANTOM_SEEDS):
        raise SystemExit(f"--n-test must be 1..{reserved} and --n-test-phantoms 1..{len(HELDOUT_PHANTOM_SEEDS)} "
                         "(the reserved held-out seeds)")
    if not 1 <= args.n_val_phantoms < args.n_phantoms:
        raise SystemExit("--n-val-phantoms must be at least 1 and less than --n-phantoms")
    torch.set_num_threads(args.threads)
    if args.ssl_variant != "dino-lg" and args.out.resolve() == Path(DEFAULT_BUNDLE_DIR).resolve():
        raise SystemExit(f"--ssl-variant {args.ssl_variant} needs its own --out (the default one is the shipped bundle)")
    if args.seed < 0:
        raise SystemExit("--seed must be >= 0")
    if not 0 <= args.cut_fields <= 1:
        raise SystemExit(f"--cut-fields must be a share between 0 and 1, got {args.cut_fields:g}")
    problem = segmenter_draw_problem(args.seg_size_power, args.seg_coarse_dropout, args.seg_dropped_learn)
    if problem:
        raise SystemExit(problem)
    if args.seed and args.out.resolve() == Path(DEFAULT_BUNDLE_DIR).resolve():
        raise SystemExit(f"--seed {args.seed} needs its own --out (the default one is the shipped bundle)")
    if args.name is None:
        args.name = "ccdino-default" if args.ssl_variant == "dino-lg" else f"ccdino-{args.ssl_variant}"
        if args.seed:  # its metrics and commands never replace the shipped bundle's in --results
            args.name += f"-seed{args.seed}"
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; use --overwrite")
    args.out, args.results = args.out.resolve(), args.results.resolve()
    work = args.work.resolve()
    os.chdir(REPO)  # paths inside the repository are recorded relative to it
    work = _rel(work)
    work.mkdir(parents=True, exist_ok=True)
    timings_file = work / "stage_seconds.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    commands: dict[str, list[str]] = {}

    def ran(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")

    inputs_file = work / "stage_inputs.json"
    stage_inputs: dict[str, str] = json.loads(inputs_file.read_text()) if inputs_file.is_file() else {}

    def current(name: str, done: Path, inputs, output: Path | None = None) -> bool:
        """True when the stage is done (``done`` exists) and was made from the same ``inputs``
        (commands without their ``--threads`` / ``--device``, which do not change what is made).

        ``name`` is the stage's output (a folder or file name in ``--work``). When its inputs
        changed (other studies or settings), the stage's old ``output`` (default ``done``) is
        removed and it is made again; a stage stopped half-way resumes; an output the recipe
        has no record of (made by hand, or by a version of the recipe that kept none) is used
        as it is, finished or not."""
        output = output or done
        key = hashlib.sha256(json.dumps(_settings(inputs), sort_keys=True, default=str).encode()).hexdigest()
        if stage_inputs.get(name) == key:
            return done.exists()
        if name not in stage_inputs and output.exists():
            _log(f"{name}: using {_rel(output)} as it is (no record of what it was made from)")
        elif output.exists():
            _log(f"{name}: inputs changed since {_rel(output)} was made; making it again")
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        stage_inputs[name] = key
        inputs_file.write_text(json.dumps(stage_inputs, indent=2) + "\n")
        return done.exists()

    # 1. studies
    t = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.n_train)
    check_disjoint(seeds)
    over = {k: v for k, v in (("matrix", args.matrix), ("n_slices", args.n_slices)) if v is not None}
    if args.non_gated_every < 0:
        raise SystemExit("--non-gated-every must be >= 0")
    train_over = {**over, **({"plaques": True} if args.train_plaques else {})}
    k = args.non_gated_every
    ng_seeds = [s for s in seeds if k and (s - seeds.start) % k == k - 1]
    by_seed = dict(zip([s for s in seeds if s not in ng_seeds],
                       synthetic_study_dirs([s for s in seeds if s not in ng_seeds], work / "studies",
                                            lambda f, m: _log(f"synth {m}"), workers=args.workers, **train_over)))
    if ng_seeds:
        by_seed.update(zip(ng_seeds, synthetic_study_dirs(ng_seeds, work / "studies", lambda f, m: _log(f"synth {m}"),
                                                          workers=args.workers, non_gated=True, **train_over)))
    studies = [by_seed[s] for s in seeds]  # in seed order: the last --n-val are the validation studies
    cal_seeds = range(args.calibration_seed, args.calibration_seed + args.n_calibration)
    check_disjoint(cal_seeds)
    if set(cal_seeds) & set(seeds):
        raise SystemExit("calibration seeds overlap the training seeds")
    ph_seeds = range(args.phantom_seed, args.phantom_seed + args.n_phantoms)
    check_disjoint(ph_seeds)
    ph_over = {k: v for k, v in over.items() if k != "n_slices"}  # a phantom's calcium may lie anywhere along it
    phantoms = synthetic_study_dirs(ph_seeds, work / "phantoms", lambda f, m: _log(f"synth {m}"), workers=args.workers,
                                    phantom=True, **ph_over)
    cal_dirs = synthetic_study_dirs(cal_seeds, work / "calibration", lambda f, m: _log(f"synth {m}"),
                                    workers=args.workers, **over)
    test_seeds = range(HELDOUT_SYNTHETIC_SEEDS.start, HELDOUT_SYNTHETIC_SEEDS.start + args.n_test)
    test_dirs = synthetic_study_dirs(test_seeds, work / "heldout", lambda f, m: _log(f"synth {m}"), workers=args.workers,
                                     **over)
    test_ph_seeds = range(HELDOUT_PHANTOM_SEEDS.start, HELDOUT_PHANTOM_SEEDS.start + args.n_test_phantoms)
    test_phantoms = synthetic_study_dirs(test_ph_seeds, work / "heldout-phantoms", lambda f, m: _log(f"synth {m}"),
                                         workers=args.workers, phantom=True, **ph_over)
    if "synth_s" not in timings:
        ran("synth_s", t)
    train_dirs, val_dirs = studies[: args.n_train - args.n_val], studies[args.n_train - args.n_val:]
    n_tp = args.n_phantoms - args.n_val_phantoms

    # 2. caches
    t = time.perf_counter()
    cfg = CandidateConfig()
    train_cache = build_cache(train_dirs, work / "train.npz", cfg, max_neg=args.max_neg, log=_log,
                              outside_region=not args.train_in_region_only, cut_share=args.cut_fields)
    val_cache = build_cache(val_dirs, work / "val.npz", cfg, max_neg=None, n_random=0, log=_log,
                            cut_share=args.cut_fields)
    test_cache = build_cache(test_dirs, work / "test.npz", cfg, max_neg=None, n_random=0, log=_log)
    if "caches_s" not in timings:
        ran("caches_s", t)
    t = time.perf_counter()
    # every phantom candidate is kept: its few rods and bone regions are the hard negatives
    ph_train_cache = build_cache(phantoms[:n_tp], work / "phantoms-train.npz", cfg, max_neg=None, n_random=0, log=_log)
    ph_val_cache = build_cache(phantoms[n_tp:], work / "phantoms-val.npz", cfg, max_neg=None, n_random=0, log=_log)
    if "phantom_caches_s" not in timings:
        ran("phantom_caches_s", t)

    # 3. SSL
    variant = args.ssl_variant
    # the default variant's stages keep their plain names; another variant's get its name, so that
    # the variants of one --work share its studies and caches and keep their own networks
    sfx = "" if variant == "dino-lg" else f"-{variant}"
    ssl_dir = work / f"ssl-{variant}"
    adjacent = None
    if variant == "dino-lg-mv":
        t = time.perf_counter()
        adjacent = build_adjacent(train_cache, work / "studies", work / "train-adjacent.npz", log=_log)
        if "adjacent_s" not in timings:
            ran("adjacent_s", t)
    commands["ssl"] = ["--cache", str(train_cache), "--out", str(ssl_dir), "--steps", str(args.ssl_steps),
                       "--batch", str(args.ssl_batch), "--seed", str(args.seed), "--threads", str(args.threads),
                       "--device", args.device] + pretrain_candidates.variant_flags(variant, adjacent)
    t = time.perf_counter()
    if not current(ssl_dir.name, ssl_dir / "backbone.pt", [commands["ssl"], _cache_meta(train_cache)], ssl_dir):
        _log(f"stage 3: {pretrain_candidates.VARIANTS[variant][0]} pretraining")
        pretrain_candidates.main(commands["ssl"])
        ran(f"ssl{sfx}_s".replace("-", "_"), t)

    # 4. supervised
    sup_dir = work / f"supervised{sfx}"
    commands["supervised"] = ["--train", str(train_cache), "--val", str(val_cache), "--backbone",
                              str(ssl_dir / "backbone.pt"), "--out", str(sup_dir), "--seg-steps", str(args.seg_steps),
                              "--target-sensitivity", str(args.target_sensitivity), "--threads", str(args.threads),
                              "--device", args.device, "--seg-outside-max-mm2", str(args.seg_outside_max_mm2),
                              *segmenter_draw_flags(args)]
    # seed 0 is the stages' own default: left out, so that runs made before --seed stay current
    seed_flag = ["--seed", str(args.seed)] if args.seed else []
    commands["supervised"] += seed_flag
    t = time.perf_counter()
    if not current(sup_dir.name, sup_dir / "supervised.pt",
                   [commands["supervised"], stage_inputs[ssl_dir.name], _cache_meta(val_cache)], sup_dir):
        _log("stage 4: detector heads, baseline, segmenter")
        train_candidates.main(commands["supervised"])
        ran(f"supervised{sfx}_s".replace("-", "_"), t)

    # 4c. phantom detector head (same frozen features; a phantom needs no segmenter)
    ph_dir = work / f"phantom{sfx}"
    commands["phantom"] = ["--phantom-head", "--train", str(ph_train_cache), "--val", str(ph_val_cache), "--backbone",
                           str(ssl_dir / "backbone.pt"), "--out", str(ph_dir), "--target-sensitivity",
                           str(args.target_sensitivity), "--threads", str(args.threads), "--device", args.device,
                           *seed_flag]
    t = time.perf_counter()
    if not current(ph_dir.name, ph_dir / "phantom_head.pt",
                   [commands["phantom"], stage_inputs[ssl_dir.name], _cache_meta(ph_train_cache),
                    _cache_meta(ph_val_cache)],
                   ph_dir):
        _log("stage 4c: phantom detector head")
        train_candidates.main(commands["phantom"])
        ran(f"phantom_head{sfx}_s".replace("-", "_"), t)
    ph_head = torch.load(ph_dir / "phantom_head.pt", map_location="cpu", weights_only=False)

    # assemble (metrics are added once measured)
    sup = torch.load(sup_dir / "supervised.pt", map_location="cpu", weights_only=False)
    ssl = torch.load(ssl_dir / "backbone.pt", map_location="cpu", weights_only=False)
    hardware = _hardware(args.device)
    det_info = {**sup["detector_config"], **sup["threshold"]}
    common = dict(
        name=args.name, version=args.version,
        trained_on=f"{args.n_train} synthetic non-contrast cardiac CT studies (seeds {seeds.start}-{seeds.stop - 1}"
                   + (f"; one in {k} of them ({len(ng_seeds)}) as its non-gated 5 mm reconstruction with "
                      "cardiac motion blur" if ng_seeds else "") + ") "
                   f"and {args.n_phantoms} synthetic calcium-scoring phantoms (seeds {ph_seeds.start}-{ph_seeds.stop - 1}), "
                   f"trained on {hardware}",
        not_validated_on="patient data (no real CT was used for training or validation)",
        backbone_config=ssl["config"], backbone_state=ssl["state"],
        detector_state=sup["detector"], detector_info=det_info,
        segmenter_config=sup["segmenter_config"], segmenter_state=sup["segmenter"],
        candidates=cfg.to_dict(),
        phantom_state=ph_head["detector"], phantom_info={**ph_head["detector_config"], **ph_head["threshold"]},
    )
    # 4b. noise rule, on the calibration studies, with the bundle assembled without one
    rule_file = work / f"noise_rule{sfx}.json"
    cand_dir = work / f"candidate{sfx}"
    commands["noise_rule"] = ["--bundle", str(cand_dir), "--studies", str(work / "calibration"),
                              "--out", str(rule_file), "--device", args.device]
    t = time.perf_counter()
    if not current(rule_file.name, rule_file, [commands["noise_rule"], stage_inputs[sup_dir.name], stage_inputs[ph_dir.name],
                                             [p.name for p in cal_dirs]]):
        _log(f"stage 4b: noise rule on {len(cal_dirs)} calibration studies")
        no_rule = save_bundle(cand_dir, overwrite=True, **common)
        table = fit_noise_rule.lesion_table(load_bundle(no_rule), cal_dirs, args.device, _log)
        write_json(fit_noise_rule.fit(table), rule_file)
        ran(f"noise_rule{sfx}_s".replace("-", "_"), t)
    noise_fit = json.loads(rule_file.read_text())
    common["noise_rule"] = noise_fit["rule"]
    candidate = save_bundle(cand_dir, overwrite=True, **common)

    # 5. evaluation
    t = time.perf_counter()
    _log(f"stage 5: evaluation on {len(test_dirs)} held-out synthetic studies")
    b = load_bundle(candidate)
    outcomes = evaluate_bundle(b, test_dirs, device=args.device, progress=lambda f, m: _log(m))
    heldout = summarise(outcomes, b.threshold, args.target_sensitivity)
    # the simple baseline on the same candidates, its threshold chosen on the same validation studies
    tr, va, te = load_cache(train_cache), load_cache(val_cache), load_cache(test_cache)
    gbm = train_candidates.gbm_baseline(tr)
    ys_v, ps_v, _ = train_candidates.slice_probs(va, gbm(va))
    gthr = choose_thresholds(ys_v, ps_v, args.target_sensitivity)["threshold"]
    ys, ps, _ = train_candidates.slice_probs(te, gbm(te))
    # the pipeline's slice labels, for a check that both rows use the same slices
    pos = np.concatenate([o.positive for o in outcomes])
    if not np.array_equal(pos, ys):
        _log("warning: baseline slice labels differ from the pipeline's (study order?)")
    baseline = slice_metrics(ys, ps, gthr, args.target_sensitivity)
    _log(f"stage 5: evaluation on {len(test_phantoms)} held-out synthetic phantoms")
    ph_outcomes = evaluate_bundle(b, test_phantoms, device=args.device, progress=lambda f, m: _log(m))
    heldout_phantoms = summarise(ph_outcomes, b.phantom_threshold, args.target_sensitivity)
    phantom = phantom_check(b, args.device)
    ran(f"evaluation{sfx}_s".replace("-", "_"), t)

    metrics = {
        "heldout_synthetic": {"seeds": [test_seeds.start, test_seeds.stop], **heldout},
        "heldout_synthetic_phantoms": {"seeds": [test_ph_seeds.start, test_ph_seeds.stop], **heldout_phantoms},
        "baseline_gbm_hand_features": {"slices": baseline, "threshold": gthr},
        "validation": sup["report"],
        "validation_phantom_head": ph_head["report"],
        "noise_rule": {k: noise_fit[k] for k in ("rule", "studies", "without_rule", "with_rule")}
        | {"calibration_seeds": [cal_seeds.start, cal_seeds.stop]},
        "phantom": phantom,
        "ssl": _ssl_summary(ssl_dir),
    }
    environment = {"device": args.device, "hardware": hardware, "threads": args.threads, "torch": torch.__version__,
                   "python": platform.python_version(), "machine": platform.machine()}
    own = _own_timings(timings, variant)
    card = model_card(args, metrics, ssl["config"], sup, own, environment, cfg)
    save_bundle(args.out, overwrite=args.overwrite, metrics=_compact(metrics), model_card=card, **common)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json({"bundle": str(_rel(args.out)), "metrics": metrics, "timings_s": own, "environment": environment},
               args.results / f"{args.name}-metrics.json")
    write_json({"recipe": "python -m training.build_default_bundle " + " ".join(argv if argv is not None else sys.argv[1:]),
                "stages": {"ssl": "python -m training.pretrain_candidates " + " ".join(commands["ssl"]),
                           "supervised": "python -m training.train_candidates " + " ".join(commands["supervised"]),
                           "phantom": "python -m training.train_candidates " + " ".join(commands["phantom"]),
                           "noise_rule": "python -m training.fit_noise_rule " + " ".join(commands["noise_rule"])}},
               args.results / f"{args.name}-commands.json")
    _log(f"bundle written to {_rel(args.out)} ({sum(own.values()) / 60:.1f} min of stages)")
    return 0


def _own_timings(timings: dict, variant: str) -> dict:
    """The stage times of ``variant``'s bundle: the shared stages (studies, caches) and its own."""
    tok = "" if variant == "dino-lg" else "_" + variant.replace("-", "_")
    own = {}
    for k, v in timings.items():
        if k == "adjacent_s" and variant != "dino-lg-mv":
            continue
        if any(k.startswith(n + "_") and k != f"{n}{tok}_s" for n in ("ssl", "supervised", "phantom_head",
                                                                      "noise_rule", "evaluation")):
            continue
        own[k] = v
    return own


def _settings(inputs):
    """``inputs`` without the ``--threads`` / ``--device`` values of any command in it."""
    if isinstance(inputs, list):
        out, skip = [], False
        for v in inputs:
            if skip:
                skip = False
                continue
            if v in ("--threads", "--device"):
                skip = True
                continue
            out.append(_settings(v))
        return out
    return inputs


def _cache_meta(path: Path) -> dict:
    """What a candidate cache was built from (its studies and settings)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


def phantom_check(bundle, device: str) -> dict:
    """The bundle on the real QRM phantom series: which slices it selects, what it labels."""
    import numpy as np

    from CoronaryCalciumDINOLib.io import load_ct
    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    if not PHANTOM.is_dir():
        return {"note": f"{_rel(PHANTOM)} not found"}
    ct = load_ct(str(PHANTOM))
    res = run_pipeline(ct, bundle, device=device)
    return {
        "slices": int(ct.hu.shape[0]),
        "selected_slices": [int(i) for i in np.flatnonzero(res.selected)],
        "lesions": [{"artery": les.artery, "slice": les.slice, "area_mm2": les.area_mm2, "peak_hu": les.peak_hu}
                    for les in res.score.lesions],
        "total_agatston": res.score.total.agatston,
        "seconds": res.timings.get("total_s"),
    }


def _ssl_summary(ssl_dir: Path) -> dict:
    """Steps and last logged loss / entropies of the self-supervised stage (from its log.jsonl)."""
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
    return {k: last[k] for k in ("step", "loss", "teacher_entropy", "batch_entropy") if k in last}


def _compact(metrics: dict) -> dict:
    """The headline numbers for the manifest (the full metrics go to the results file)."""
    h = metrics["heldout_synthetic"]
    t = h["slices"]["at_threshold"]
    p = h["pipeline"]
    return {
        "heldout_synthetic_studies": h["n_studies"],
        "slice_sensitivity": t["sensitivity"], "slice_specificity": t["specificity"],
        "slice_auroc": h["slices"]["auroc"], "slice_auprc": h["slices"]["auprc"],
        "total_agatston_icc_2_1": p["agatston_agreement"]["total"]["icc_2_1"],
        **{f"{a}_agatston_icc_2_1": p["agatston_agreement"][a]["icc_2_1"] for a in ("LM", "LAD", "LCX", "RCA")},
        "total_agatston_mae": p["agatston_agreement"]["total"]["mae"],
        "risk_accuracy": p["risk"]["accuracy"],
        "risk_kappa_linear": p["risk"]["kappa_linear"],
        "zero_scored_zero": p["zero_scored_zero"],
        "risk_accuracy_unet_all_slices": h["unet_all_slices"]["risk"]["accuracy"],
    }


def _fmt(v, nd=3) -> str:
    return "n/a" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def segmenter_draw_text(args) -> str:
    """The model card's words on the segmenter's draw settings (nothing when none is set)."""
    parts = []
    if args.seg_size_power:
        parts.append(f"its candidates drawn evened out by size (weight n^-{args.seg_size_power:g}, n those of the "
                     "same size bin)")
    if args.seg_coarse_dropout:
        parts.append(f"for a {args.seg_coarse_dropout:g} share of them the coarse views of the slice read as the "
                     "average one" + (" and only calcium against background is learnt; the arteries are learnt with "
                                      "the views, and calcium is decided without them (a second pass with the views "
                                      "at the average)" if args.seg_dropped_learn == "calcium" else ""))
    return f" Trained with {'; '.join(parts)}." if parts else ""


def cut_fields_text() -> str:
    """The cut fields' geometry in words (:func:`training.candidate_data.cut_field`)."""
    from .candidate_data import CUT_FIELD_MM, CUT_OFF_MM

    return f"{CUT_FIELD_MM[0]:g}-{CUT_FIELD_MM[1]:g} mm, its centre up to {CUT_OFF_MM:g} mm off the heart's"


def train_region_text(args) -> str:
    """The model card's line on what the networks trained on."""
    cut = (f" A {args.cut_fields:g} share of the training and validation studies was cut to a heart-centred field of "
           f"view first ({cut_fields_text()}: --cut-fields)." if args.cut_fields else "")
    if args.train_in_region_only:
        return "The networks trained on the heart region's candidates only (--train-in-region-only)." + cut
    return ("The training cache also holds, as they are, the heart field's candidates the region leaves out (bone, "
            f"calcified costal cartilage, chest wall: almost all non-coronary; at most {args.max_neg} non-coronary "
            "candidates per study in all): the self-supervised stage, the detector heads and the baseline train on all "
            f"of them, the segmenter on those of at most {args.seg_outside_max_mm2:g} mm^2 (the chest wall's specks, "
            "not its bone); validation and the held-out evaluation take the region's only, as inference does." + cut)


def model_card(args, metrics, bb_cfg, sup, timings, environment, cfg) -> str:
    from CoronaryCalciumDINOLib.pipeline.candidates import PHANTOM_FAT_SHARE, PHANTOM_MAX_AREA_MM2

    h = metrics["heldout_synthetic"]
    s = h["slices"]["at_threshold"]
    pa, ua = h["pipeline"], h["unet_all_slices"]
    g = metrics["baseline_gbm_hand_features"]["slices"]["at_threshold"]
    rows = "\n".join(
        f"| {a} | {_fmt(pa['agatston_agreement'][a]['icc_2_1'])} | {_fmt(ua['agatston_agreement'][a]['icc_2_1'])} | "
        f"{_fmt(pa['agatston_agreement'][a]['mae'], 1)} | {_fmt(pa['agatston_agreement'][a]['bland_altman']['bias'], 1)} |"
        for a in ("LM", "LAD", "LCX", "RCA", "total")
    )
    minutes = sum(timings.values()) / 60.0
    ssl = metrics.get("ssl", {})
    rep = sup["report"]
    head = rep["shipped_head"]
    heads = "\n".join(
        f"| {n} | {_fmt(r['candidate_auroc'], 4)} | {_fmt(r['slice']['sensitivity'])} | {_fmt(r['slice']['specificity'])} |"
        for n, r in rep["heads"].items()
    )
    ph = metrics["phantom"]
    hp = metrics["heldout_synthetic_phantoms"]
    ph_rep = metrics["validation_phantom_head"]
    nr = metrics["noise_rule"]
    nb = nr["rule"].get("min_neighbour_sd", 0.0)
    nb_text = f" and less than {nb:g} SDs under its footprint on the slices above and below" if nb > 0 else ""
    dc = sup["detector_config"]
    return f"""# {args.name} {args.version}

**A small model trained on a {environment['hardware']} on synthetic data. Not validated on
patient data. Research use only; not a medical device.**

## What it is
- Anatomy (`pipeline/anatomy.py`, from HU alone, in training as in inference): lungs, bone,
  sternum, spine and descending aorta in 3D; candidates off bone in the heart region
  between them only (a chest CT is looked at over the range a cardiac scan would hold).
- Candidates: every connected region >= {cfg.threshold_hu:.0f} HU of >= {cfg.min_area_mm2:g} mm^2 in a
  {cfg.field_mm:.0f} mm heart field of each axial slice, in the heart region; crops of {cfg.crop_px} x {cfg.crop_px} px of
  {cfg.pixel_mm} mm (native CT pixel size), HU windows {[list(w) for w in cfg.windows]}, and a context
  vector of {sup['segmenter_config']['context_dim']} features (position, HU statistics, coarse views).
  {train_region_text(args)}
- Backbone: ViT (`{bb_cfg['name']}` with patch {bb_cfg['patch_size']}, {bb_cfg['depth']} blocks, {bb_cfg['num_heads']}
  heads, width {bb_cfg['embed_dim']}), {SSL_TEXT[args.ssl_variant]}
  for {args.ssl_steps} steps of batch {args.ssl_batch} from random initialisation (final DINO loss
  {_fmt(ssl.get('loss'))}, teacher entropy {_fmt(ssl.get('teacher_entropy'))}).
- Detector: `{head}` head on the frozen teacher features (CLS + mean patch token){' and the context' if dc['use_context'] else ''};
  slice probability = max over the slice's candidates; threshold {sup['threshold']['threshold']:.4f} chosen
  on {args.n_val} validation studies for slice sensitivity >= {args.target_sensitivity}.
- Segmenter: MONAI 2D UNet (channels {sup['segmenter_config']['channels']}) on each candidate crop of the selected
  slices, context as extra channels; 5 classes (background, LM, LAD, LCX, RCA).{segmenter_draw_text(args)}
- Noise rule: a flagged region smaller than {nr['rule']['min_area_mm2']:g} mm^2 whose peak is less than
  {nr['rule']['min_contrast_sd']:g} noise SDs above soft tissue ({nr['rule']['soft_tissue_hu']:g} HU){nb_text} is taken for image
  noise and not labelled (the report says how many); fitted on {nr['studies']} calibration studies (seeds
  {nr['calibration_seeds'][0]}-{nr['calibration_seeds'][1] - 1}): power of zero {_fmt(nr['without_rule']['power_of_zero'])} ->
  {_fmt(nr['with_rule']['power_of_zero'])}, risk accuracy {_fmt(nr['without_rule']['risk_accuracy'])} ->
  {_fmt(nr['with_rule']['risk_accuracy'])} there.

Validation heads (candidate AUROC; slice sensitivity / specificity at each head's own threshold):

| head | candidate AUROC | slice sensitivity | slice specificity |
|---|---|---|---|
{heads}

## How it was trained
{args.n_train} synthetic studies (seeds {args.first_seed}-{args.first_seed + args.n_train - 1}; the last
{args.n_val} for validation), {environment['hardware']}, torch {environment['torch']}: {minutes:.0f} minutes for all
stages ({', '.join(f"{k[:-2]} {v / 60:.1f}" for k, v in timings.items())} min). Rebuild:
`python -m training.build_default_bundle --overwrite`.

## Measured on {h['n_studies']} held-out synthetic studies (seeds {h['seeds'][0]}-{h['seeds'][1] - 1})
Slices ({h['slices']['n']}, {h['slices']['n_positive']} with calcium): sensitivity {_fmt(s['sensitivity'])},
specificity {_fmt(s['specificity'])}, AUROC {_fmt(h['slices']['auroc'], 4)}. Gradient-boosted baseline on
hand features, same candidates: sensitivity {_fmt(g['sensitivity'])}, specificity {_fmt(g['specificity'])}.

| artery | ICC(2,1) gated | ICC(2,1) segmenter on every candidate | MAE gated | bias gated |
|---|---|---|---|---|
{rows}

Risk category accuracy {_fmt(pa['risk']['accuracy'])} (segmenter on every candidate {_fmt(ua['risk']['accuracy'])});
studies taken for phantoms: {h['taken_for_phantoms']};
share of the {pa['zero_studies']} studies without coronary calcium scored exactly 0: {_fmt(pa['zero_scored_zero'])}
(segmenter on every candidate {_fmt(ua['zero_scored_zero'])}).

## Calcium-scoring phantoms
A scan whose slices with candidates hold almost no fat (median fat share < {PHANTOM_FAT_SHARE:g}; a patient's
heart field has epicardial and chest-wall fat) is taken for a calcium-scoring phantom. Its
candidates of up to {PHANTOM_MAX_AREA_MM2:g} mm^2, less the specks at the end of a larger region (a calibration rod's or
a bone's partial volume on the slice before it), then go to a second detector head (`{ph_rep['head']}` on the same frozen ViT features and
context) trained on {args.n_phantoms - args.n_val_phantoms} synthetic phantoms (a thorax phantom with a cardiac calcification
insert; seeds {args.phantom_seed}-{args.phantom_seed + args.n_phantoms - 1}, the last {args.n_val_phantoms} for its threshold {ph_rep['threshold']:.4f});
the picked candidates' own voxels are labelled, named by side (patient right RCA, left
anterior LAD, left posterior LCX: a phantom has no arteries, only its total means
something), without the segmenter. The patients' networks never see phantoms.

{hp['n_studies']} held-out synthetic phantoms (seeds {hp['seeds'][0]}-{hp['seeds'][1] - 1}; {hp['taken_for_phantoms']} taken for phantoms): slice sensitivity
{_fmt(hp['slices']['at_threshold']['sensitivity'])}, specificity {_fmt(hp['slices']['at_threshold']['specificity'])}; total Agatston ICC(2,1)
{_fmt(hp['pipeline']['agatston_agreement']['total']['icc_2_1'])} (MAE {_fmt(hp['pipeline']['agatston_agreement']['total']['mae'], 1)}); phantoms without calcium
scored 0: {_fmt(hp['pipeline']['zero_scored_zero'])}.

The real phantom scan (Testing/Data/qrm-phantom-canon; the insert's calcifications lie in
slices 21-23): selected slices {ph.get('selected_slices')}; labelled lesions: {len(ph.get('lesions', []))}
({', '.join(f"{x['artery']} slice {x['slice']} {x['area_mm2']:.1f} mm^2 peak {x['peak_hu']:.0f} HU" for x in ph.get('lesions', [])) or 'none'});
total Agatston {_fmt(ph.get('total_agatston'), 1)}. Bone labelled there counts as a failure
(`tests/test_pipeline.py`).

## Real scans
Trained on synthetic studies only. Measured on five real non-gated chest CTs (the public
sample of COCA; never trained or tuned on): `training/results/real-dev-coca.md`, with the
command that gives it. The artery names are its weakest part there.

## Limits
- Synthetic studies only: real anatomy, noise, motion, stents, valves and bone near the
  coronaries differ; expect worse results on patient scans.
- Contrast-enhanced CT is not a calcium-scoring scan (the pipeline warns).
- Not validated on patient data (e.g. COCA); use `ccdino evaluate` with your own data.
"""


if __name__ == "__main__":
    sys.exit(main())
