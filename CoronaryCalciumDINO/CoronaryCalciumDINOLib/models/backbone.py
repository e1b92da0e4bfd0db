"""ViT backbones (timm) for self-supervised pretraining and for inference.

One factory builds every backbone the project uses::

    backbone = build_backbone("vit_small_patch16_224", img_size=224, in_chans=3)
    feats = extract_features(backbone, x)        # (B, 2*D): CLS (+) mean patch token
    attn = last_attention(backbone, x)           # (B, heads, N_patches): CLS -> patch attention
    feats, attn = features_and_attention(backbone, x)   # both from one forward pass

* DINO ViTs: ``vit_{tiny,small,base}_patch{16,8}_224``; DINOv2 ViTs: timm's ``*_dinov2``
  names (patch 14; ``*_reg4_dinov2`` have 4 register tokens).
* Models are built with ``dynamic_img_size=True`` so 96-px local crops and other sizes work
  (position embeddings are interpolated), and never download anything: ``pretrained_path``
  loads a local checkpoint (DINO / DINOv2 / timm / this project's training output).
* ``location_conditioning=True`` adds a :class:`~.conditioning.LocationFiLM` (zero-initialised
  per-block scale/shift from the slice location ``c``); pass ``location`` (B,) to the feature
  functions. Plain backbones ignore ``location``. ``location_conditioning=K`` (an int > 1)
  conditions on K coordinates: pass ``location`` (B, K).
* :func:`backbone_config` / :func:`build_backbone_from_config` round-trip the architecture
  through a JSON-able dict (saved in model bundles and next to training checkpoints);
  :func:`load_backbone_dir` loads a pretraining output folder.

Token layout of the final norm output: ``[CLS, registers..., patches...]``; features and
attention always exclude register tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .conditioning import LocationFiLM, apply_film

#: File names written by the pretraining script for the downstream detector.
BACKBONE_WEIGHTS_FILE = "teacher_backbone.pth"
BACKBONE_CONFIG_FILE = "backbone_config.json"

_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_WRAPPERS = ("teacher", "student", "model", "state_dict", "model_state")
_NAME_RE = re.compile(r"^vit_(tiny|small|base)_patch(8|16)_224$")


def _timm_name(name: str) -> tuple[str, dict]:
    """Resolve ``name`` to a registered timm model plus keyword overrides.

    timm registers ``vit_small_patch8_224`` / ``vit_base_patch8_224`` but not a tiny patch-8
    model; ``vit_tiny_patch8_224`` is built as ``vit_tiny_patch16_224`` with ``patch_size=8``.
    """
    import timm

    if timm.is_model(name) and name.startswith("vit_"):
        return name, {}
    m = _NAME_RE.match(name)
    if m:
        return f"vit_{m.group(1)}_patch16_224", {"patch_size": int(m.group(2))}
    raise InputError(
        f"unknown backbone '{name}' (use vit_{{tiny,small,base}}_patch{{16,8}}_224 or a timm *_dinov2 name)"
    )


def build_backbone(
    name: str = "vit_small_patch16_224",
    img_size: int = 224,
    in_chans: int = 3,
    pretrained_path: str | Path | None = None,
    location_conditioning: bool | int = False,
    drop_path: float = 0.1,
    overrides: dict | None = None,
) -> nn.Module:
    """Build a timm ViT without classifier head (``num_classes=0``) and with dynamic image size.

    ``overrides`` are extra timm keyword arguments that change the architecture (e.g.
    ``{"depth": 2}`` for tiny experiments); they are recorded in :func:`backbone_config`.
    ``pretrained_path`` loads a local checkpoint with :func:`load_pretrained`.
    """
    import timm

    timm_name, extra = _timm_name(name)
    extra.update(overrides or {})
    model = timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=0,
        img_size=int(img_size),
        in_chans=int(in_chans),
        dynamic_img_size=True,
        drop_path_rate=float(drop_path),
        **extra,
    )
    n_coords = int(location_conditioning)
    if n_coords:
        model.location_film = LocationFiLM(model.embed_dim, len(model.blocks), n_coords=n_coords)
    model.ccdino_build_args = {
        "name": name,
        "img_size": int(img_size),
        "in_chans": int(in_chans),
        # True / False for one slice coordinate or none (the format of earlier bundles)
        "location_conditioning": n_coords if n_coords > 1 else bool(n_coords),
        "overrides": dict(overrides or {}),
    }
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path)
    return model


# ----------------------------------------------------------------------------- config


def num_register_tokens(backbone: nn.Module) -> int:
    reg = getattr(backbone, "reg_token", None)
    return 0 if reg is None else int(reg.shape[1])


def backbone_config(backbone: nn.Module) -> dict:
    """JSON-able description of ``backbone`` for :func:`build_backbone_from_config`."""
    args = getattr(backbone, "ccdino_build_args", None)
    if args is None:
        raise InputError("backbone was not built by build_backbone (no build arguments recorded)")
    patch = backbone.patch_embed.patch_size
    return {
        "format": "timm-vit",
        **args,
        "patch_size": int(patch[0]),
        "embed_dim": int(backbone.embed_dim),
        "depth": len(backbone.blocks),
        "num_heads": int(backbone.blocks[0].attn.num_heads),
        "num_prefix_tokens": int(backbone.num_prefix_tokens),
        "num_register_tokens": num_register_tokens(backbone),
        "feature_dim": 2 * int(backbone.embed_dim),
    }


def build_backbone_from_config(cfg: dict) -> nn.Module:
    """Rebuild the (randomly initialised) backbone described by :func:`backbone_config`."""
    try:
        return build_backbone(
            name=cfg["name"],
            img_size=cfg.get("img_size", 224),
            in_chans=cfg.get("in_chans", 3),
            location_conditioning=cfg.get("location_conditioning", False),
            drop_path=0.0,
            overrides=cfg.get("overrides") or None,
        )
    except KeyError as exc:
        raise InputError(f"backbone config lacks {exc}") from None


def load_backbone_dir(folder: str | Path, map_location: str = "cpu") -> nn.Module:
    """Load the teacher backbone saved by ``training.pretrain_dino`` in ``folder`` (eval mode)."""
    folder = Path(folder)
    cfg_path = folder / BACKBONE_CONFIG_FILE
    if not cfg_path.is_file():
        raise InputError(f"backbone config not found: {cfg_path}")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    model = build_backbone_from_config(cfg)
    load_pretrained(model, folder / BACKBONE_WEIGHTS_FILE, map_location=map_location)
    return model.eval()


# ----------------------------------------------------------------------------- loading


def _unwrap_state_dict(obj) -> dict:
    """Find the tensor dict inside a checkpoint: prefer the teacher, strip wrapper prefixes."""
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict) or not obj:
        raise InputError("checkpoint holds no state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for _ in range(2):  # e.g. "module.backbone.blocks.0..." needs two passes
        for p in _PREFIXES:
            if any(k.startswith(p) for k in sd):
                sd = {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
    return sd


def _adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a patch-embedding kernel (O, I, kh, kw) to ``in_chans`` input channels.

    3 -> 1: sum over channels (same response to a grey image); 1 -> N: repeat divided by N
    (same response when all N channels are equal).
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    raise InputError(f"cannot adapt a {have}-channel patch embedding to {in_chans} channels")


def load_pretrained(model: nn.Module, path: str | Path, map_location: str = "cpu") -> dict:
    """Load a local checkpoint into ``model`` (a backbone from :func:`build_backbone`).

    Accepts a plain state dict or one wrapped in ``teacher`` / ``student`` / ``model`` /
    ``state_dict`` (the teacher is preferred), with ``module.`` / ``backbone.`` /
    ``_orig_mod.`` key prefixes, DINO and DINOv2 (original or timm) key layouts. Position
    embeddings are resampled to the model's grid, patch kernels to its patch size and input
    channels adapted 3 <-> 1. Keys that are not part of the backbone (DINO heads) are
    ignored; backbone keys missing from the file (except the zero-initialised location
    conditioning) are an error. Returns ``{"loaded", "ignored", "missing"}`` key lists.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    if not path.is_file():
        raise InputError(f"pretrained checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is an input problem
        raise InputError(f"cannot read pretrained checkpoint {path}: {exc}") from None
    sd = _unwrap_state_dict(obj)
    key = "patch_embed.proj.weight"
    if key in sd:
        sd[key] = _adapt_in_chans(sd[key], model.patch_embed.proj.weight.shape[1])
    film = {k: v for k, v in sd.items() if k.startswith("location_film.")}
    sd = checkpoint_filter_fn({k: v for k, v in sd.items() if k not in film}, model)
    sd.update(film)
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own}
    ignored = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in usable and not k.startswith("location_film."))
    if missing:
        raise InputError(
            f"checkpoint {path.name} does not fit backbone: {len(missing)} missing keys (e.g. {missing[0]})"
        )
    bad = [k for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise InputError(
            f"checkpoint {path.name} does not fit backbone: shape of {bad[0]} is "
            f"{tuple(usable[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}"
        )
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "ignored": ignored, "missing": missing}


# ----------------------------------------------------------------------------- forward


def _film_params(backbone: nn.Module, batch: int, location) -> torch.Tensor | None:
    film = getattr(backbone, "location_film", None)
    if film is None:
        return None
    if location is None:
        raise InputError("this backbone is location-conditioned: pass the slice location c in [-1, 1]")
    k = getattr(film, "n_coords", 1)
    c = torch.as_tensor(location, dtype=torch.float32, device=backbone.cls_token.device)
    if c.numel() % k:
        raise InputError(f"locations of {k} coordinates expected, got a tensor of shape {tuple(c.shape)}")
    c = c.reshape(-1, k)
    if c.shape[0] == 1 and batch > 1:
        c = c.expand(batch, k)
    if c.shape[0] != batch:
        raise InputError(f"got {c.shape[0]} locations for a batch of {batch} images")
    return film(c)


def _embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = backbone.patch_embed(x)
    x = backbone._pos_embed(x)
    x = backbone.patch_drop(x)
    return backbone.norm_pre(x)


def iter_blocks(backbone: nn.Module, x: torch.Tensor, location=None):
    """Run the transformer blocks and yield ``(index, block, block input, block output)``.

    The one place that embeds the patches and applies the location conditioning (when the
    backbone has it) before each block; every feature / attention helper walks the blocks
    through it.
    """
    params = _film_params(backbone, x.shape[0], location)
    h = _embed(backbone, x)
    for i, blk in enumerate(backbone.blocks):
        if params is not None:
            h = apply_film(h, params, i)
        out = blk(h)
        yield i, blk, h, out
        h = out


def forward_tokens(backbone: nn.Module, x: torch.Tensor, location=None) -> torch.Tensor:
    """Final-norm tokens (B, prefix + N_patches, D), with location conditioning if the backbone has it."""
    for _, _, _, h in iter_blocks(backbone, x, location):
        pass
    return backbone.norm(h)


def extract_features(backbone: nn.Module, x: torch.Tensor, location=None) -> torch.Tensor:
    """Slice features (B, 2*D): CLS token (+) mean of the patch tokens (registers excluded)."""
    tokens = forward_tokens(backbone, x, location)
    patches = tokens[:, backbone.num_prefix_tokens:]
    return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=1)


def _attention_from_input(blk: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of block ``blk`` for its input tokens ``h``: (B, heads, N, N)."""
    attn = blk.attn
    y = blk.norm1(h)
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q.float() @ k.float().transpose(-2, -1)) * (attn.head_dim ** -0.5)
    return logits.softmax(dim=-1)


def block_attention(backbone: nn.Module, x: torch.Tensor, location=None, block: int = -1) -> torch.Tensor:
    """Full softmax attention (B, heads, N, N) of one block, computed explicitly from its qkv.

    timm uses fused scaled-dot-product attention that does not expose the weights, so the
    block input is recomputed and ``softmax(q k^T / sqrt(d))`` is formed from the block's
    own ``qkv`` projection (and q/k norms, identities for DINO / DINOv2 models).
    """
    block = block % len(backbone.blocks)
    for i, blk, h_in, _ in iter_blocks(backbone, x, location):
        if i == block:
            return _attention_from_input(blk, h_in)
    raise AssertionError("unreachable: block index checked above")


def features_and_attention(backbone: nn.Module, x: torch.Tensor, location=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features` and :func:`last_attention` from one forward pass."""
    last = len(backbone.blocks) - 1
    attn = None
    for i, blk, h_in, h in iter_blocks(backbone, x, location):
        if i == last:
            attn = _attention_from_input(blk, h_in)
    tokens = backbone.norm(h)
    p = backbone.num_prefix_tokens
    feats = torch.cat([tokens[:, 0], tokens[:, p:].mean(dim=1)], dim=1)
    return feats, attn[:, :, 0, p:]


def last_attention(backbone: nn.Module, x: torch.Tensor, location=None) -> torch.Tensor:
    """CLS -> patch attention of the last block, (B, heads, N_patches) (registers excluded).

    Reshape to ``(B, heads, H/p, W/p)`` for maps; rows do not sum to 1 because attention to
    the CLS and register tokens is left out.
    """
    full = block_attention(backbone, x, location, block=-1)
    return full[:, :, 0, backbone.num_prefix_tokens:]


def patch_grid(backbone: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Patch grid (rows, cols) for an input of ``height`` x ``width`` pixels."""
    p = backbone.patch_embed.patch_size
    return height // p[0], width // p[1]
