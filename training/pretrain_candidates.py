"""DINO / DINO-LG self-supervised pretraining of a small ViT on calcium-candidate crops.

    python -m training.pretrain_candidates --cache runs/x/train.npz --out runs/x/ssl-lg --label-guided

The crops come from :mod:`training.candidate_data` (the inference crop sampler,
:mod:`CoronaryCalciumDINOLib.pipeline.candidates`). Views of one sample (DINO multi-crop at
native pixel size, 0.5 mm):

* 2 global views: ``crop_px`` square, moved up to ``margin`` pixels, zoomed 0.85-1.15,
  flipped left-right at random (SSL only), HU windows jittered (centre +-20 HU, width
  x0.9-1.1);
* ``local_crops`` local views: ``local_px`` square covering 30-60 % of the global side.

**DINO-LG** (``--label-guided``): samples are candidates (connected >= 130 HU regions in the
heart field); a share ``--guided-share`` of each batch are candidates on labelled coronary
calcium, the rest hard negatives (the other candidates: bone, aortic wall, valves, noise),
and local views stay centred on the candidate (jitter of a few pixels). **Plain DINO**
(default): samples are crops at uniformly random places of the heart field, local views at
random places in the global field: no label is used. The DINO loss, head, teacher EMA and
schedules are the same (:mod:`training.common.dino`).

Variants of DINO-LG (label-guided samples only):

* ``--multiview adjacent`` (VET-DINO): the second global view of a candidate is cut from a
  neighbouring slice at the same (x, y) (``--adjacent``: the file of
  :func:`training.candidate_data.build_adjacent`), so the student learns to predict the
  teacher's output on the other slice of the same study;
* ``--arch vit_small_patch14_reg4_dinov2`` (:data:`DINOV2_ARCH`): the DINOv2 ViT design
  (4 register tokens, LayerScale) at the default width and patch 8 (``--overrides``);
  randomly initialised unless ``--pretrained`` names a local checkpoint (DINO / DINOv2 /
  timm; patch kernels and position embeddings are resampled to fit);
* ``--location-conditioning`` (DrasCLR's idea): the ViT blocks are FiLM-modulated by where
  the candidate sits in the heart field (:data:`LOCATION_FEATURES` of its context,
  :class:`~CoronaryCalciumDINOLib.models.conditioning.LocationFiLM`, zero-initialised); the
  features are then computed with the same location at inference.

Resumable: ``checkpoint.pt`` is written every ``--ckpt-every`` steps; the teacher backbone
(``backbone.pt`` with its config) and ``log.jsonl`` are written at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from CoronaryCalciumDINOLib.data.slices import hu_to_windows
from CoronaryCalciumDINOLib.models.backbone import backbone_config, build_backbone
from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_NAMES
from CoronaryCalciumDINOLib.pipeline.device import autocast_for, resolve_device

from .candidate_data import load_cache
from .common.checkpoint import load_checkpoint, save_checkpoint
from .common.dino import DINOHead, DINOLoss, MultiCropWrapper
from .common.ema import update_teacher
from .common.schedules import (
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    param_groups,
    set_optimizer_values,
)

#: The candidate ViT: patch 8 at 0.5 mm pixels = 4 mm tokens (the paper's ViT-B/8 at native
#: CT pixels sees about the same), 4 blocks of width 128: runs on a 2-core CPU.
DEFAULT_ARCH = "vit_tiny_patch16_224"
DEFAULT_OVERRIDES = {"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4}
#: DINOv2 design (register tokens, LayerScale); built with :data:`DEFAULT_OVERRIDES` by default
DINOV2_ARCH = "vit_small_patch14_reg4_dinov2"
#: The candidate's position in the heart field, the location of location-conditioned ViTs
LOCATION_FEATURES = ("x_field", "y_field", "z_scan")

#: The SSL variants of this script, by name: (label, its flags). ``{adjacent}`` stands for the
#: neighbouring-slice crop file (:func:`training.candidate_data.build_adjacent`).
VARIANTS = {
    "dino": ("plain DINO", []),
    "dino-lg": ("DINO-LG", ["--label-guided"]),
    "dino-lg-mv": ("DINO-LG + multi-view (neighbouring slice)", ["--label-guided", "--multiview", "adjacent",
                                                                 "--adjacent", "{adjacent}"]),
    "dino-lg-v2": ("DINO-LG, DINOv2-style ViT (4 registers, LayerScale)", ["--label-guided", "--arch", DINOV2_ARCH]),
    "dino-lg-loc": ("DINO-LG + location FiLM (x, y, z in the heart field)", ["--label-guided",
                                                                              "--location-conditioning"]),
}


def variant_flags(name: str, adjacent=None) -> list[str]:
    """The flags of SSL variant ``name`` (:data:`VARIANTS`), ``adjacent`` filled in."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown SSL variant {name!r}: use {', '.join(VARIANTS)}")
    flags = VARIANTS[name][1]
    if "{adjacent}" in flags and adjacent is None:
        raise SystemExit(f"the {name} variant needs the neighbouring-slice crops (--adjacent)")
    return [str(adjacent) if f == "{adjacent}" else f for f in flags]


def candidate_locations(cache: dict) -> np.ndarray:
    """(N, 3) float32 location of each candidate of a cache (:data:`LOCATION_FEATURES`)."""
    cols = [CONTEXT_NAMES.index(n) for n in LOCATION_FEATURES]
    return np.ascontiguousarray(cache["context"][:, cols], dtype=np.float32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.pretrain_candidates", description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="training cache (.npz) of training.candidate_data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label-guided", action="store_true", help="DINO-LG crops (else plain DINO)")
    p.add_argument("--guided-share", type=float, default=0.4, help="share of a DINO-LG batch on coronary calcium")
    p.add_argument("--multiview", choices=("none", "adjacent"), default="none",
                   help="adjacent: 2nd global view from a neighbouring slice (VET-DINO; needs --adjacent)")
    p.add_argument("--adjacent", type=Path, default=None, help="neighbouring-slice crops (candidate_data.build_adjacent)")
    p.add_argument("--location-conditioning", action="store_true", help="FiLM the ViT by the candidate's position")
    p.add_argument("--pretrained", type=Path, default=None, help="local checkpoint to start from (else random init)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--local-crops", type=int, default=4)
    p.add_argument("--local-px", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (not scaled)")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=float, default=0.1, help="share of steps with linear lr warm-up")
    p.add_argument("--wd", type=float, default=0.04)
    p.add_argument("--wd-end", type=float, default=0.4)
    p.add_argument("--momentum", type=float, default=0.99, help="teacher EMA momentum (cosine to 1)")
    p.add_argument("--out-dim", type=int, default=1024)
    p.add_argument("--head-hidden", type=int, default=512)
    p.add_argument("--head-bottleneck", type=int, default=128)
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--warmup-teacher-temp", type=float, default=0.02)
    p.add_argument("--center-momentum", type=float, default=0.9)
    p.add_argument("--freeze-last-layer", type=float, default=0.05, help="share of steps with the last layer frozen")
    p.add_argument("--clip", type=float, default=3.0)
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--overrides", default=json.dumps(DEFAULT_OVERRIDES), help="timm ViT overrides (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="CPU autocast in bf16")
    p.add_argument("--ckpt-every", type=int, default=100)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- views


def _affine_crops(x: torch.Tensor, out_px: int, frac: torch.Tensor, centre: torch.Tensor, flip: torch.Tensor):
    """Resample (B, 1, S, S) to (B, 1, out_px, out_px): a square of side ``frac`` (of S) at ``centre`` ([-1, 1])."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    sx = frac * torch.where(flip, -1.0, 1.0)
    theta[:, 0, 0], theta[:, 1, 1] = sx, frac
    theta[:, 0, 2], theta[:, 1, 2] = centre[:, 0], centre[:, 1]
    grid = F.affine_grid(theta, (b, 1, out_px, out_px), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jittered_windows(hu: torch.Tensor, windows, gen: torch.Generator) -> torch.Tensor:
    b = hu.shape[0]
    chans = []
    for lo, hi in windows:
        c = 0.5 * (lo + hi) + (torch.rand(b, 1, 1, generator=gen) * 40 - 20)
        w = (hi - lo) * (0.9 + 0.2 * torch.rand(b, 1, 1, generator=gen))
        chans.append(((hu - (c - w / 2)) / w).clamp(0, 1))
    return torch.stack(chans, 1)


def make_views(hu: torch.Tensor, crop_px: int, margin: int, n_local: int, local_px: int, guided: bool,
               windows, gen: torch.Generator, partner: torch.Tensor | None = None) -> list[torch.Tensor]:
    """DINO multi-crop views of stored crops ``hu`` (B, S, S) HU, S = crop_px + 2 margin.

    ``partner`` (B, S, S): another view of the same samples (a neighbouring slice); the second
    global view is then cut from it (multi-view), the others from ``hu``."""
    b, s = hu.shape[0], hu.shape[-1]
    x = hu[:, None].float()
    base = crop_px / s
    views = []
    for g in range(2):
        src = partner[:, None].float() if (partner is not None and g == 1) else x
        frac = base * (0.85 + 0.3 * torch.rand(b, generator=gen))
        shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (margin / s) * 2 * 0.5
        flip = torch.rand(b, generator=gen) < 0.5
        views.append(_jittered_windows(_affine_crops(src, crop_px, frac, shift, flip)[:, 0], windows, gen))
    for _ in range(n_local):
        frac = base * (0.3 + 0.3 * torch.rand(b, generator=gen))
        if guided:  # stay on the candidate
            shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (3.0 / s)
        else:
            room = (base - frac).clamp_min(0)[:, None]
            shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * room
        flip = torch.rand(b, generator=gen) < 0.5
        views.append(_jittered_windows(_affine_crops(x, local_px, frac, shift, flip)[:, 0], windows, gen))
    return views


def plain_view(hu: torch.Tensor, crop_px: int, windows) -> torch.Tensor:
    """The inference input: the central ``crop_px`` of stored crops, fixed windows."""
    s = hu.shape[-1]
    m = (s - crop_px) // 2
    return hu_to_windows(hu[:, m:m + crop_px, m:m + crop_px].float(), windows)


# ----------------------------------------------------------------------------- training


def _sampler(data: dict, guided: bool, share: float, rng: np.random.Generator, adjacent: dict | None = None,
             locations: np.ndarray | None = None):
    """``draw(n)`` -> (crops, partner crops or None, locations or None) of n samples."""
    if not guided:
        pool = data["random_crops"]
        return lambda n: (pool[rng.integers(0, len(pool), n)], None, None)
    pos = np.flatnonzero(data["target"] > 0)
    neg = np.flatnonzero(data["target"] == 0)
    crops = data["crops"]

    def draw(n):
        k = int(round(share * n)) if pos.size else 0
        idx = np.concatenate([rng.choice(pos, k), rng.choice(neg, n - k)])
        partner = None
        if adjacent is not None:  # the slice below or above; the other one where that is clamped away
            side = rng.integers(0, 2, n)
            side = np.where(adjacent["adjacent_dz"][idx, side] == 0, 1 - side, side)
            partner = adjacent["crops_adjacent"][idx, side]
        return crops[idx], partner, (None if locations is None else locations[idx])

    return draw


def load_adjacent(path, cache: dict) -> dict:
    """Neighbouring-slice crops of ``cache`` (:func:`training.candidate_data.build_adjacent`), checked to fit it."""
    with np.load(path, allow_pickle=False) as z:
        adj = {k: z[k] for k in ("crops_adjacent", "adjacent_dz")}
        key = json.loads(str(z["meta"]))
    if key["meta"] != cache["meta"] or len(adj["crops_adjacent"]) != len(cache["target"]):
        raise SystemExit(f"{path} was not built for this cache")
    return adj


def train(args) -> Path:
    torch.set_num_threads(max(1, int(args.threads)))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "backbone.pt").exists():
        print(f"{out}/backbone.pt exists: nothing to do")
        return out
    data = load_cache(args.cache)
    meta = data["meta"]
    if (args.multiview != "none" or args.location_conditioning) and not args.label_guided:
        raise SystemExit("--multiview and --location-conditioning work on candidates: use --label-guided")
    if args.multiview == "adjacent" and args.adjacent is None:
        raise SystemExit("--multiview adjacent needs --adjacent (training.candidate_data.build_adjacent)")
    adjacent = load_adjacent(args.adjacent, data) if args.multiview == "adjacent" else None
    locations = candidate_locations(data) if args.location_conditioning else None
    crop_px, margin = int(meta["config"]["crop_px"]), int(meta["margin"])
    windows = [tuple(w) for w in meta["config"]["windows"]]
    overrides = json.loads(args.overrides) if isinstance(args.overrides, str) else dict(args.overrides)

    def net():
        torch.manual_seed(args.seed)
        bb = build_backbone(args.arch, img_size=crop_px, in_chans=len(windows), drop_path=0.0, overrides=overrides,
                            location_conditioning=len(LOCATION_FEATURES) if args.location_conditioning else False,
                            pretrained_path=args.pretrained)
        head = DINOHead(bb.embed_dim, args.out_dim, args.head_hidden, args.head_bottleneck, norm_last_layer=False)
        return MultiCropWrapper(bb, head)

    dev = resolve_device(args.device)
    student, teacher = net().to(dev), net().to(dev)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    steps = int(args.steps)
    loss_fn = DINOLoss(args.out_dim, epochs=steps, n_teacher_crops=2, teacher_temp=args.teacher_temp,
                       warmup_teacher_temp=args.warmup_teacher_temp,
                       warmup_teacher_temp_epochs=int(0.3 * steps), center_momentum=args.center_momentum).to(dev)
    opt = torch.optim.AdamW(param_groups(student), lr=args.lr)
    lr_s = cosine_schedule(args.lr, args.min_lr, steps, 1, warmup_epochs=args.warmup * steps)
    wd_s = cosine_schedule(args.wd, args.wd_end, steps, 1)
    mom_s = cosine_schedule(args.momentum, 1.0, steps, 1)
    freeze = int(round(args.freeze_last_layer * steps))
    start = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["opt"])
        loss_fn.load_state_dict(state["loss"])
        gen.set_state(state["gen"])
        rng = state["rng"]
        start = int(state["step"])
        print(f"resuming at step {start}")
    draw = _sampler(data, args.label_guided, args.guided_share, rng, adjacent, locations)
    use_bf16 = {"on": True, "off": False}.get(args.bf16)
    log = open(out / "log.jsonl", "a", encoding="utf-8")
    t0 = time.perf_counter()
    student.train()
    for step in range(start, steps):
        set_optimizer_values(opt, float(lr_s[step]), float(wd_s[step]))
        crops, partner, loc = draw(args.batch)
        hu = torch.from_numpy(crops.astype(np.float32))
        partner = None if partner is None else torch.from_numpy(partner.astype(np.float32))
        views = make_views(hu, crop_px, margin, args.local_crops, args.local_px, args.label_guided, windows, gen,
                           partner=partner)
        views = [v.to(dev, non_blocking=True) for v in views]
        locs = None if loc is None else [torch.from_numpy(loc).to(dev)] * len(views)
        with autocast_for(dev, cpu_bf16=use_bf16):
            t_out = teacher(views[:2], None if locs is None else locs[:2])
            s_out = student(views, locs)
        loss = loss_fn(s_out.float(), t_out.float(), step)
        if not math.isfinite(loss.item()):
            raise SystemExit(f"DINO loss is {loss.item()} at step {step}: stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(student, args.clip)
        cancel_last_layer_gradients(student, step, freeze)
        opt.step()
        update_teacher(student, teacher, float(mom_s[step]))
        if step % 20 == 0 or step == steps - 1:
            with torch.no_grad():
                q = F.softmax((t_out.float() - loss_fn.center) / loss_fn.teacher_temp(step), -1)
                ent = float(-(q * q.clamp_min(1e-12).log()).sum(-1).mean())
                mq = q.mean(0)
                batch_ent = float(-(mq * mq.clamp_min(1e-12).log()).sum())
            rec = {"step": step, "loss": loss.item(), "teacher_entropy": ent, "batch_entropy": batch_ent,
                   "lr": float(lr_s[step]), "s": round(time.perf_counter() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if (step + 1) % args.ckpt_every == 0 and step + 1 < steps:
            save_checkpoint(ckpt, {"student": student.state_dict(), "teacher": teacher.state_dict(),
                                   "opt": opt.state_dict(), "loss": loss_fn.state_dict(), "gen": gen.get_state(),
                                   "rng": rng, "step": step + 1})
    bb = teacher.backbone.cpu()
    save_checkpoint(out / "backbone.pt", {"config": backbone_config(bb), "state": bb.state_dict(),
                                          "ssl": {"label_guided": bool(args.label_guided), "steps": steps,
                                                  "seed": args.seed, "multiview": args.multiview,
                                                  "location_conditioning": bool(args.location_conditioning),
                                                  "pretrained": None if args.pretrained is None else str(args.pretrained),
                                                  "seconds": round(time.perf_counter() - t0, 1)}})
    if ckpt.exists():
        ckpt.unlink()
    return out


def main(argv=None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
