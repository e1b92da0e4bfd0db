"""Schedules and optimisation helpers of DINO training.

* :func:`cosine_schedule` - per-iteration values: linear warm-up then half-cosine from
  ``base`` to ``final`` (learning rate 5e-4 * batch/256 -> 1e-6, weight decay 0.04 -> 0.4,
  teacher momentum 0.996 -> 1).
* :func:`param_groups` - AdamW groups, no weight decay on biases, norms (1-D parameters) and
  the cls / register / position tokens.
* :func:`clip_gradients` - per-parameter gradient-norm clipping (DINO's ``clip_grad``).
* :func:`cancel_last_layer_gradients` - freeze the head's last layer during the first epochs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """Array of ``epochs * iters_per_epoch`` values.

    The first ``warmup_epochs * iters_per_epoch`` values rise linearly from ``start_warmup``
    to ``base``; the rest follow ``final + (base - final) * (1 + cos(pi * t / T)) / 2`` for
    t = 0..T-1 (so the first is ``base`` and the last approaches ``final``).
    """
    total = int(epochs) * int(iters_per_epoch)
    n_warm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warm = np.linspace(start_warmup, base, n_warm, endpoint=False) if n_warm > 0 else np.zeros(0)
    n_cos = total - n_warm
    t = np.arange(n_cos)
    cos = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * t / max(n_cos, 1)))
    return np.concatenate([warm, cos])


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups: regularised weights and unregularised biases / norms / tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or p.ndim <= 1 or any(t in name for t in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_wd": True}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """Scale each parameter's gradient to norm <= ``clip``; return the pre-clip norms."""
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        norm = p.grad.detach().norm(2)
        norms.append(float(norm))
        coef = clip / (norm + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    return norms


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of the head's ``last_layer`` while ``epoch < freeze_last_layer``.

    Setting them to ``None`` makes AdamW skip the parameter entirely (no moment or weight
    decay update), as in DINO.
    """
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def set_optimizer_values(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Apply this iteration's learning rate to every group and weight decay to the regularised one."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if not group.get("no_wd", False):
            group["weight_decay"] = wd
