"""Parameter-efficient fine-tuning of timm ViTs: LoRA and BitFit.

**LoRA** (Hu et al., 2021): a frozen linear layer ``W x + b`` gains a low-rank update
``(alpha / r) * B A x`` with ``A`` (r x in) randomly initialised and ``B`` (out x r) zero,
so the wrapped model computes exactly the same function at the start. Only ``A`` and
``B`` train. :meth:`LoRALinear.merge` folds the update into ``W`` (no inference overhead),
:meth:`LoRALinear.unmerge` takes it out again. The DINOv2-for-radiology setting is
r = 48, alpha = 16 on the ``qkv``, ``fc1`` and ``fc2`` layers of every transformer block.

**BitFit** (Ben Zaken et al., 2022): only the bias terms train.

Both functions freeze the backbone's other parameters in place; a task head placed on top
is trained separately by the caller (see :func:`.protocols.finetune_classifier`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from CoronaryCalciumDINOLib.errors import InputError

LORA_TARGETS: tuple[str, ...] = ("qkv", "fc1", "fc2")


class LoRALinear(nn.Module):
    """``nn.Linear`` with a frozen base weight and a trainable low-rank update."""

    def __init__(self, base: nn.Linear, r: int = 48, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise InputError(f"LoRA rank must be >= 1, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``scaling * B @ A`` (out x in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (forward then skips the LoRA branch)."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update from the base weight again."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(
    model: nn.Module,
    r: int = 48,
    alpha: float = 16.0,
    targets: Sequence[str] = LORA_TARGETS,
    dropout: float = 0.0,
) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose attribute name is in ``targets``.

    Returns the dotted names of the wrapped layers; raises :class:`InputError` when none
    matched (e.g. the model is not a timm ViT). Afterwards only LoRA parameters require
    gradients.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wanted = set(targets)
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in wanted and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, r=r, alpha=alpha, dropout=dropout))
                replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not replaced:
        raise InputError(f"no linear layer named {sorted(wanted)} found for LoRA")
    return replaced


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA matrices (A and B of every wrapped layer)."""
    return [p for m in lora_modules(model) for p in (m.lora_A, m.lora_B)]


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer; returns how many were merged."""
    mods = lora_modules(model)
    for m in mods:
        m.merge()
    return len(mods)


def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every LoRA layer; returns how many were unmerged."""
    mods = lora_modules(model)
    for m in mods:
        m.unmerge()
    return len(mods)


def apply_bitfit(model: nn.Module) -> list[str]:
    """Make only bias parameters trainable; returns their names (InputError if none)."""
    names = []
    for name, p in model.named_parameters():
        is_bias = name == "bias" or name.endswith(".bias")
        p.requires_grad_(is_bias)
        if is_bias:
            names.append(name)
    if not names:
        raise InputError("the model has no bias parameters for BitFit")
    return names


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
