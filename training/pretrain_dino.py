"""Self-supervised pretraining of a ViT on CT slices: DINO and its variants, in one script.

Methods are options of the same training loop::

    plain DINO           (default)
    DINO-LG              --label-guided             label-guided crops + hard negatives + calcified oversampling
    VET-DINO multi-view  --multiview adjacent|series   2 views per sample; teacher sees one view's globals
    DINOv2 backbone      --arch vit_small_patch14_reg4_dinov2 [--pretrained dinov2.pth]
    location (DrasCLR)   --location-conditioning [--neighbor-loss-weight W]

Run as ``python -m training.pretrain_dino --synthetic 20 --output runs/dino`` on one device
or ``torchrun --nproc_per_node=N -m training.pretrain_dino ...`` for DDP. Outputs in
``--output``: ``args.json``, ``log.jsonl`` (one line per step and per epoch),
``checkpoint.pth`` (resumable with ``--resume``) and, for downstream use, the *teacher*
backbone as ``teacher_backbone.pth`` + ``backbone_config.json`` (load with
:func:`CoronaryCalciumDINOLib.models.backbone.load_backbone_dir`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from CoronaryCalciumDINOLib.errors import CCDinoError, InputError
from CoronaryCalciumDINOLib.models.backbone import (
    BACKBONE_CONFIG_FILE,
    BACKBONE_WEIGHTS_FILE,
    backbone_config,
    build_backbone,
)

from .common.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .common.crops import CropConfig
from .common.dino import DINOHead, DINOLoss, MultiCropWrapper
from .common.distributed import DistEnv, barrier, cleanup, init_distributed
from .common.ema import update_teacher
from .common.schedules import (
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    param_groups,
    set_optimizer_values,
)
from .common.ssl_data import CalcifiedOversampler, SSLDataset, StudySource

CHECKPOINT_FILE = "checkpoint.pth"
LOG_FILE = "log.jsonl"
ARGS_FILE = "args.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pretrain_dino", description=__doc__.split("\n\n")[0])
    d = p.add_argument_group("data")
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder of study folders (ct.nrrd, labels.nrrd, heart.nrrd, study.json)")
    src.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic studies in memory")
    d.add_argument("--synthetic-matrix", type=int, default=None, help="pixels per side of generated studies")
    d.add_argument("--synthetic-slices", type=int, default=None, help="slices of generated studies")
    d.add_argument("--num-workers", type=int, default=4)
    d.add_argument("--cache-studies", type=int, default=8, help="studies kept in memory per data worker (--data)")

    a = p.add_argument_group("model")
    a.add_argument("--arch", default="vit_small_patch16_224", help="timm ViT name (DINO or *_dinov2)")
    a.add_argument("--depth", type=int, default=None, help="override the number of blocks (tiny experiments)")
    a.add_argument("--pretrained", type=Path, default=None, help="local backbone checkpoint to start from")
    a.add_argument("--location-conditioning", action="store_true", help="FiLM the blocks by the slice location")
    a.add_argument("--drop-path", type=float, default=0.1)
    a.add_argument("--out-dim", type=int, default=16384, help="DINO head output dimension")
    a.add_argument("--head-hidden", type=int, default=2048)
    a.add_argument("--head-bottleneck", type=int, default=256)
    a.add_argument("--no-norm-last-layer", dest="norm_last_layer", action="store_false")

    c = p.add_argument_group("crops")
    c.add_argument("--img-size", type=int, default=224, help="global crop size (and backbone image size)")
    c.add_argument("--local-size", type=int, default=96)
    c.add_argument("--global-crops", type=int, default=2)
    c.add_argument("--local-crops", type=int, default=8)
    c.add_argument("--global-scale", type=float, nargs=2, default=(0.4, 1.0))
    c.add_argument("--local-scale", type=float, nargs=2, default=(0.05, 0.4))
    c.add_argument("--label-guided", action="store_true", help="DINO-LG label-guided crops")
    c.add_argument("--p-guided", type=float, default=0.5)
    c.add_argument("--p-hard-negative", type=float, default=0.1)
    c.add_argument("--calcified-fraction", type=float, default=0.4,
                   help="share of calcified slices per batch with --label-guided (0 = natural)")
    c.add_argument("--multiview", choices=("none", "adjacent", "series"), default="none")
    c.add_argument("--neighbor-loss-weight", type=float, default=0.0,
                   help="weight of the neighbour-slice DINO term (with --multiview none)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=100)
    o.add_argument("--iters-per-epoch", type=int, default=None, help="default: slices // global batch")
    o.add_argument("--batch-size", type=int, default=64, help="per process")
    o.add_argument("--lr", type=float, default=5e-4, help="at a global batch of 256 (scaled linearly)")
    o.add_argument("--min-lr", type=float, default=1e-6)
    o.add_argument("--warmup-epochs", type=float, default=10)
    o.add_argument("--wd", type=float, default=0.04)
    o.add_argument("--wd-end", type=float, default=0.4)
    o.add_argument("--momentum-teacher", type=float, default=0.996)
    o.add_argument("--teacher-temp", type=float, default=0.04)
    o.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    o.add_argument("--warmup-teacher-temp-epochs", type=int, default=0)
    o.add_argument("--center-momentum", type=float, default=0.9, help="EMA momentum of the teacher centre")
    o.add_argument("--freeze-last-layer", type=int, default=1, help="epochs with the head's last layer frozen")
    o.add_argument("--clip-grad", type=float, default=3.0, help="per-parameter gradient norm clip (0 = off)")
    o.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="auto: bf16 on CUDA when supported (else fp16), off on CPU")

    r = p.add_argument_group("run")
    r.add_argument("--output", type=Path, required=True)
    r.add_argument("--resume", action="store_true", help=f"continue from OUTPUT/{CHECKPOINT_FILE}")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--save-every", type=int, default=1, help="checkpoint every N epochs")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.multiview != "none" and args.neighbor_loss_weight > 0:
        raise InputError("--neighbor-loss-weight needs --multiview none (multi-view already pairs neighbours)")
    if args.global_crops < 1 or args.local_crops < 0:
        raise InputError("need at least 1 global crop and >= 0 local crops")
    if args.global_crops + args.local_crops < 2 and args.multiview == "none":
        raise InputError("DINO needs at least 2 crops per sample")
    if args.synthetic is not None and args.synthetic < 1:
        raise InputError("--synthetic needs N >= 1")
    if not 0.0 <= args.calcified_fraction < 1.0:
        raise InputError("--calcified-fraction must be in [0, 1)")
    if not 0.0 <= args.center_momentum <= 1.0:
        raise InputError("--center-momentum must be in [0, 1]")


# ----------------------------------------------------------------------------- data


def synthetic_studies(n: int, seed: int, overrides: dict, second_series: bool = False) -> tuple[list, list]:
    """``n`` studies from the project's generator (seeds ``seed .. seed + n - 1``).

    With ``second_series`` each study also gets a second acquisition on the same grid: its
    noise-free HU plus an independent realisation of textured Gaussian noise (white noise
    smoothed in-plane over about 1 pixel, rescaled to the study's noise level) for
    ``--multiview series``. Returns (studies, extra series per study).
    """
    from scipy import ndimage

    from CoronaryCalciumDINOLib.synth import render_study

    studies, extras = [], []
    for i in range(n):
        res = render_study(seed + i, keep_clean=second_series, **overrides)
        studies.append(res.study)
        if not second_series:
            extras.append([])
            continue
        sd = float(res.study.meta.get("params", {}).get("noise_sd_hu", 20.0))
        rng = np.random.default_rng([seed + i, 2])
        noise = ndimage.gaussian_filter(rng.standard_normal(res.clean.shape, dtype=np.float32), (0, 1.0, 1.0))
        noise *= np.float32(sd / max(float(noise.std()), 1e-6))
        extras.append([np.maximum(res.clean.astype(np.float32) + noise, -1024.0)])
    return studies, extras


def build_data(args, env: DistEnv):
    """Dataset, sampler, loader and iterations per epoch."""
    if args.data is not None:
        source, records = StudySource.from_folder(args.data, cache_size=args.cache_studies)
    else:
        overrides = {k: v for k, v in (("matrix", args.synthetic_matrix), ("n_slices", args.synthetic_slices)) if v}
        studies, extras = synthetic_studies(args.synthetic, args.seed, overrides, args.multiview == "series")
        source, records = StudySource.in_memory(studies, extras)
    crop_cfg = CropConfig(
        global_size=args.img_size,
        local_size=args.local_size,
        n_global=args.global_crops,
        n_local=args.local_crops,
        global_scale=tuple(args.global_scale),
        local_scale=tuple(args.local_scale),
        label_guided=args.label_guided,
        p_guided=args.p_guided,
        p_hard_negative=args.p_hard_negative,
    )
    dataset = SSLDataset(
        source, records, crop_cfg, multiview=args.multiview, neighbor=args.neighbor_loss_weight > 0
    )
    global_batch = args.batch_size * env.world_size
    iters = args.iters_per_epoch or max(1, len(records) // global_batch)
    frac = args.calcified_fraction if (args.label_guided and args.calcified_fraction > 0) else None
    sampler = CalcifiedOversampler(records, iters * args.batch_size, frac, seed=args.seed, rank=env.rank)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=env.device.type == "cuda",
        drop_last=True,
        persistent_workers=args.num_workers > 0,
    )
    return dataset, sampler, loader, iters


# ----------------------------------------------------------------------------- models


def build_models(args, env: DistEnv):
    """Student (DDP-wrapped when distributed), teacher (no gradients), both on the device."""
    overrides = {"depth": args.depth} if args.depth else None
    common = dict(
        name=args.arch, img_size=args.img_size, in_chans=3,
        location_conditioning=args.location_conditioning, overrides=overrides,
    )
    s_bb = build_backbone(pretrained_path=args.pretrained, drop_path=args.drop_path, **common)
    patch = int(s_bb.patch_embed.patch_size[0])
    for flag, size in (("--img-size", args.img_size), ("--local-size", args.local_size)):
        if size % patch:
            raise InputError(f"{flag} {size} is not a multiple of the patch size {patch} of {args.arch}")
    t_bb = build_backbone(drop_path=0.0, **common)
    head_kw = dict(
        out_dim=args.out_dim, hidden_dim=args.head_hidden, bottleneck_dim=args.head_bottleneck,
        norm_last_layer=args.norm_last_layer,
    )
    student = MultiCropWrapper(s_bb, DINOHead(s_bb.embed_dim, **head_kw)).to(env.device)
    teacher = MultiCropWrapper(t_bb, DINOHead(t_bb.embed_dim, **head_kw)).to(env.device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    student_ddp = student
    if env.world_size > 1:
        student_ddp = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    return student, student_ddp, teacher


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler). bf16/fp16 only on CUDA."""
    if device.type != "cuda" or mode == "off":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            print(f"--amp {mode} ignored on {device.type}: mixed precision runs only on CUDA", file=sys.stderr)
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


# ----------------------------------------------------------------------------- training


def teacher_collapse_stats(q: list[torch.Tensor]) -> dict:
    """Two entropies of the teacher distributions (one (B, K) tensor per teacher crop).

    ``teacher_entropy``: mean per-sample entropy (ln K = uniform collapse, 0 = one-hot);
    ``teacher_batch_entropy``: entropy of the batch-mean distribution (near 0 = every sample
    on the same prototype, one-hot collapse). A healthy run has the first well below ln K
    and the second well above the first.
    """
    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    return {
        "teacher_entropy": float(torch.stack([entropy(qi).mean() for qi in q]).mean()),
        "teacher_batch_entropy": float(torch.stack([entropy(qi.mean(0)) for qi in q]).mean()),
    }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_backbone(teacher: MultiCropWrapper, out: Path) -> None:
    torch.save(teacher.backbone.state_dict(), out / BACKBONE_WEIGHTS_FILE)
    (out / BACKBONE_CONFIG_FILE).write_text(json.dumps(backbone_config(teacher.backbone), indent=2), encoding="utf-8")


def train(args: argparse.Namespace) -> dict:
    """Run pretraining; returns a summary (steps done, last loss, steps/s)."""
    check_args(args)
    env = init_distributed(args.device)
    try:
        return _train(args, env)
    finally:
        cleanup()


def _train(args, env: DistEnv) -> dict:
    out = Path(args.output)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_FILE
    if not args.resume and ckpt_path.exists():
        raise InputError(f"{ckpt_path} exists: use --resume to continue or choose another --output")
    barrier()

    _seed_everything(args.seed)  # identical initial weights on every process
    student, student_ddp, teacher = build_models(args, env)
    _seed_everything(args.seed + env.rank)  # different augmentations per process
    dataset, sampler, loader, iters = build_data(args, env)
    n_t = args.global_crops
    loss_fn = DINOLoss(
        args.out_dim, args.epochs, n_teacher_crops=n_t, teacher_temp=args.teacher_temp,
        warmup_teacher_temp=args.warmup_teacher_temp, warmup_teacher_temp_epochs=args.warmup_teacher_temp_epochs,
        center_momentum=args.center_momentum,
    ).to(env.device)
    optimizer = torch.optim.AdamW(param_groups(student))
    amp_dtype, use_scaler = amp_settings(args.amp, env.device)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    base_lr = args.lr * args.batch_size * env.world_size / 256.0
    lr_s = cosine_schedule(base_lr, args.min_lr, args.epochs, iters, warmup_epochs=min(args.warmup_epochs, args.epochs))
    wd_s = cosine_schedule(args.wd, args.wd_end, args.epochs, iters)
    mom_s = cosine_schedule(args.momentum_teacher, 1.0, args.epochs, iters)

    step = 0
    if args.resume:
        if not ckpt_path.is_file():
            raise InputError(f"--resume: no checkpoint at {ckpt_path}")
        ck = load_checkpoint(ckpt_path)
        try:
            student.load_state_dict(ck["student"])
            teacher.load_state_dict(ck["teacher"])
            optimizer.load_state_dict(ck["optimizer"])
            loss_fn.load_state_dict(ck["dino_loss"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"--resume: {ckpt_path} does not match the model options ({first})") from None
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        step = int(ck["step"])
        if env.world_size == 1:
            set_rng_state(ck.get("rng"))
    elif env.is_main:
        (out / ARGS_FILE).write_text(json.dumps(vars(args), indent=2, default=str), encoding="utf-8")

    total = args.epochs * iters
    stop_at = min(total, args.max_steps) if args.max_steps is not None else total
    log = open(out / LOG_FILE, "a", encoding="utf-8") if env.is_main else None
    autocast = (
        (lambda: torch.autocast(device_type="cuda", dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext
    )
    neighbor = args.neighbor_loss_weight > 0
    t_start, steps_run, last_loss = time.time(), 0, float("nan")

    def save(epoch_next: int) -> None:
        if not env.is_main:
            return
        save_checkpoint(ckpt_path, {
            "student": student.state_dict(), "teacher": teacher.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "dino_loss": loss_fn.state_dict(), "epoch": epoch_next, "step": step,
            "args": vars(args), "rng": rng_state(),
        })
        _write_backbone(teacher, out)

    try:
        while step < stop_at:
            epoch, it0 = divmod(step, iters)
            # a resumed partial epoch draws fresh samples for its remaining iterations
            sampler.set_epoch(epoch * 7919 + it0)
            student_ddp.train()
            epoch_losses, t_epoch = [], time.time()
            for it, batch in zip(range(it0, iters), loader):
                if step >= stop_at:
                    break
                set_optimizer_values(optimizer, float(lr_s[step]), float(wd_s[step]))
                crops = [c.to(env.device, non_blocking=True) for c in batch["crops"]]
                locs = [v.to(env.device) for v in batch["locations"]] if args.location_conditioning else None
                s_crops, s_locs = crops, locs
                if neighbor:  # the neighbour's global crop rides with the globals (one student forward)
                    s_crops = crops[:n_t] + [batch["neighbor"].to(env.device)] + crops[n_t:]
                    if locs is not None:
                        s_locs = locs[:n_t] + [batch["neighbor_location"].to(env.device)] + locs[n_t:]
                with autocast():
                    with torch.no_grad():
                        t_out = teacher(crops[:n_t], locs[:n_t] if locs is not None else None)
                    s_out = student_ddp(s_crops, s_locs)
                q = loss_fn.teacher_probs(t_out, epoch)
                loss_nb = None
                if neighbor:
                    chunks = list(s_out.chunk(len(s_crops)))
                    nb_out = chunks.pop(n_t)
                    s_out = torch.cat(chunks)
                    loss_nb = loss_fn.cross_entropy(q, nb_out, skip_same=False)
                loss = loss_fn.cross_entropy(q, s_out)
                if loss_nb is not None:
                    loss = loss + args.neighbor_loss_weight * loss_nb
                loss_fn.update_center(t_out)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}; stopping")

                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if args.clip_grad > 0:
                    clip_gradients(student, args.clip_grad)
                cancel_last_layer_gradients(student, epoch, args.freeze_last_layer)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                update_teacher(student, teacher, float(mom_s[step]))

                step += 1
                steps_run += 1
                last_loss = float(loss.item())
                epoch_losses.append(last_loss)
                if log is not None:
                    rec = {
                        "step": step, "epoch": epoch, "loss": last_loss, "lr": float(lr_s[step - 1]),
                        "wd": float(wd_s[step - 1]), "momentum": float(mom_s[step - 1]),
                        "teacher_temp": loss_fn.teacher_temp(epoch),
                    }
                    with torch.no_grad():  # collapse monitors, see teacher_collapse_stats
                        rec.update(teacher_collapse_stats(q))
                    if loss_nb is not None:
                        rec["loss_neighbor"] = float(loss_nb.item())
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            epoch_done = step % iters == 0 or step >= stop_at
            if log is not None and epoch_losses:
                dt = time.time() - t_epoch
                log.write(json.dumps({
                    "epoch_end": epoch, "step": step, "loss_mean": float(np.mean(epoch_losses)),
                    "steps": len(epoch_losses), "steps_per_s": len(epoch_losses) / max(dt, 1e-9),
                }) + "\n")
                log.flush()
            if epoch_done and ((epoch + 1) % args.save_every == 0 or step >= stop_at):
                save(step // iters)
    finally:
        if log is not None:
            log.close()
    barrier()
    elapsed = time.time() - t_start
    return {"steps": step, "steps_this_run": steps_run, "loss": last_loss,
            "steps_per_s": steps_run / max(elapsed, 1e-9), "output": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = train(args)
    except CCDinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
