"""Inference networks in plain PyTorch: the bundle's ViT and UNet without importing timm or MONAI.

Importing timm (which pulls torchvision and torch._dynamo) and MONAI (every subpackage)
costs seconds, more than the whole pipeline on a study; the scoring command, started anew
for each study, pays it every time. The modules here compute exactly what timm's
``VisionTransformer`` and MONAI's 2D ``UNet`` compute, in eval mode, for the configurations
they support, and hold the same parameters under the same state-dict keys, so a bundle's
weights load into either:

* :class:`PlainViT`: the DINO ViTs that :func:`.backbone.build_backbone` builds from the
  names ``vit_{tiny,small,base}_patch{16,8}_224`` (class token, no register tokens, no layer
  scale, LayerNorm eps 1e-6, MLP ratio 4, dynamic image size), with the overrides
  ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` and optional location
  conditioning. It has the attributes the feature and attention helpers of
  :mod:`.backbone` walk (``patch_embed``, ``_pos_embed``, ``blocks``, ``norm``, ...), so
  :func:`.backbone.extract_features` and :func:`.backbone.last_attention` run on it unchanged.
* :class:`PlainUNet`: MONAI's ``UNet(spatial_dims=2, ..., norm="batch")`` with PReLU,
  kernel 3, no dropout, any channels / strides / ``num_res_units`` (what
  :func:`.unet.build_unet` builds).

:func:`..models.bundle.load_bundle` uses them when :func:`plain_backbone_supported` /
:func:`plain_unet_supported` accept the bundle's configs and the timm / MONAI modules
otherwise; training always uses timm and MONAI. Tests check that both give the same outputs
with the shipped bundle's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditioning import LocationFiLM

#: timm's defaults of the DINO ViT names (embed_dim, depth, num_heads).
_VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}
#: Architecture overrides the plain ViT understands (others go to timm).
_VIT_OVERRIDES = frozenset({"patch_size", "embed_dim", "depth", "num_heads"})


# ----------------------------------------------------------------------------- ViT


def _vit_arch(cfg: dict) -> dict | None:
    """Architecture of the backbone ``cfg`` (:func:`.backbone.backbone_config`) if the plain ViT builds it."""
    from .backbone import _NAME_RE

    if not isinstance(cfg, dict) or cfg.get("format", "timm-vit") != "timm-vit":
        return None
    m = _NAME_RE.match(str(cfg.get("name", "")))
    overrides = cfg.get("overrides") or {}
    if m is None or not isinstance(overrides, dict) or not set(overrides) <= _VIT_OVERRIDES:
        return None
    if int(cfg.get("num_register_tokens", 0)) != 0 or int(cfg.get("num_prefix_tokens", 1)) != 1:
        return None
    embed_dim, depth, heads = _VIT_SIZES[m.group(1)]
    arch = {
        "img_size": int(cfg.get("img_size", 224)),
        "in_chans": int(cfg.get("in_chans", 3)),
        "patch_size": int(m.group(2)),
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "location_conditioning": bool(cfg.get("location_conditioning", False)),
    }
    arch.update({k: int(v) for k, v in overrides.items()})
    if arch["embed_dim"] % arch["num_heads"] or arch["img_size"] % arch["patch_size"]:
        return None
    return arch


def plain_backbone_supported(cfg: dict) -> bool:
    """Whether :class:`PlainViT` builds the backbone described by ``cfg``."""
    return _vit_arch(cfg) is not None


class _PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(f"input {h} x {w} is not divisible by the patch size {self.patch_size[0]}")
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H/p, W/p, D), as timm's dynamic-size ViT


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = int(num_heads)
        self.head_dim = dim // self.num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _resample_pos_embed(pos_embed: torch.Tensor, new: tuple[int, int], old: tuple[int, int], prefix: int) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed`` (bicubic, antialiased) of the patch part of ``pos_embed``."""
    if tuple(new) == tuple(old):
        return pos_embed
    head, grid = pos_embed[:, :prefix], pos_embed[:, prefix:]
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=None, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([head, grid], dim=1)


class PlainViT(nn.Module):
    """Inference-only ViT with timm's ``VisionTransformer`` state-dict keys (``num_classes=0``,
    ``dynamic_img_size=True``); see the module docstring for what it supports."""

    def __init__(self, img_size: int, in_chans: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 location_conditioning: bool = False):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_prefix_tokens = 1
        self.reg_token = None
        self.patch_embed = _PatchEmbed(int(img_size), int(patch_size), int(in_chans), self.embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, self.embed_dim))
        self.patch_drop = nn.Identity()
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[_Block(self.embed_dim, int(num_heads)) for _ in range(int(depth))])
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        if location_conditioning:
            self.location_film = LocationFiLM(self.embed_dim, int(depth))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        pos = _resample_pos_embed(self.pos_embed, (h, w), self.patch_embed.grid_size, self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, -1, c)], dim=1)
        return x + pos

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token of the final norm (timm's ``forward`` with ``num_classes=0``)."""
        return self.forward_features(x)[:, 0]


def build_plain_backbone(cfg: dict) -> PlainViT:
    """The :class:`PlainViT` (randomly initialised) of the backbone config ``cfg``; raises
    ``ValueError`` for a config it does not build (use :func:`.backbone.build_backbone_from_config`)."""
    arch = _vit_arch(cfg)
    if arch is None:
        raise ValueError(f"the plain ViT does not build backbone {cfg.get('name') if isinstance(cfg, dict) else cfg!r}")
    model = PlainViT(**arch)
    model.ccdino_build_args = {
        "name": cfg["name"],
        "img_size": arch["img_size"],
        "in_chans": arch["in_chans"],
        "location_conditioning": arch["location_conditioning"],
        "overrides": dict(cfg.get("overrides") or {}),
    }
    return model


# ----------------------------------------------------------------------------- UNet


def plain_unet_supported(config) -> bool:
    """Whether :class:`PlainUNet` builds the UNet of the segmenter config (what :func:`.unet.build_unet` builds)."""
    from .unet import SegmenterConfig

    try:
        cfg = config if isinstance(config, SegmenterConfig) else SegmenterConfig.from_dict(config)
    except (TypeError, ValueError):
        return False
    return (len(cfg.channels) == len(cfg.strides) + 1 >= 2 and int(cfg.num_res_units) >= 0
            and all(int(s) >= 1 for s in cfg.strides))


class _ADN(nn.Sequential):
    """MONAI's ADN with ordering "NDA": batch norm, (no) dropout, PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.add_module("N", nn.BatchNorm2d(channels))
        self.add_module("A", nn.PReLU())


class _Convolution(nn.Sequential):
    """MONAI's ``Convolution``: kernel 3, padding 1, then ADN unless ``conv_only``."""

    def __init__(self, cin: int, cout: int, stride: int, conv_only: bool = False, transposed: bool = False):
        super().__init__()
        if transposed:
            conv = nn.ConvTranspose2d(cin, cout, 3, stride=stride, padding=1, output_padding=stride - 1)
        else:
            conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.add_module("conv", conv)
        if not conv_only:
            self.add_module("adn", _ADN(cout))


class _ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``subunits`` convolutions plus a (strided / 1x1) residual path."""

    def __init__(self, cin: int, cout: int, stride: int, subunits: int, last_conv_only: bool = False):
        super().__init__()
        self.conv = nn.Sequential()
        sin, sstride = cin, stride
        for su in range(max(1, int(subunits))):
            only = last_conv_only and su == max(1, int(subunits)) - 1
            self.conv.add_module(f"unit{su}", _Convolution(sin, cout, sstride, conv_only=only))
            sin, sstride = cout, 1
        if stride != 1 or cin != cout:
            k, pad = (3, 1) if stride != 1 else (1, 0)
            self.residual = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
        else:
            self.residual = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class _SkipConnection(nn.Module):
    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class PlainUNet(nn.Module):
    """MONAI's 2D ``UNet`` (batch norm, PReLU, kernel 3, no dropout) with its state-dict keys."""

    def __init__(self, in_channels: int, out_channels: int, channels, strides, num_res_units: int):
        super().__init__()
        channels = [int(c) for c in channels]
        strides = [int(s) for s in strides]
        res = int(num_res_units)

        def down(cin, cout, stride):
            return _ResidualUnit(cin, cout, stride, res) if res > 0 else _Convolution(cin, cout, stride)

        def up(cin, cout, stride, is_top):
            conv = _Convolution(cin, cout, stride, conv_only=is_top and res == 0, transposed=True)
            if res > 0:
                return nn.Sequential(conv, _ResidualUnit(cout, cout, 1, 1, last_conv_only=is_top))
            return conv

        def block(cin, cout, chans, strs, is_top):
            c, s = chans[0], strs[0]
            if len(chans) > 2:
                sub, upc = block(c, c, chans[1:], strs[1:], False), 2 * c
            else:
                sub, upc = down(c, chans[1], 1), c + chans[1]
            return nn.Sequential(down(cin, c, s), _SkipConnection(sub), up(upc, cout, s, is_top))

        self.model = block(int(in_channels), int(out_channels), channels, strides, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_plain_unet(config) -> PlainUNet:
    """The :class:`PlainUNet` (randomly initialised) of a segmenter config (:class:`.unet.SegmenterConfig` or dict)."""
    from .unet import SegmenterConfig

    cfg = config if isinstance(config, SegmenterConfig) else SegmenterConfig.from_dict(config)
    if not plain_unet_supported(cfg):
        raise ValueError("the plain UNet does not build this segmenter config")
    return PlainUNet(cfg.in_channels, cfg.out_classes, cfg.channels, cfg.strides, cfg.num_res_units)
