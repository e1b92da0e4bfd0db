"""Slice detector: a linear classifier on frozen ViT features, and its threshold choice.

The detector sees one feature vector per axial slice (CLS token concatenated with the mean
patch token of the frozen teacher backbone), standardises it with the training set's
mean/std (stored as buffers, so they travel with the weights) and returns one logit: does
this slice hold coronary calcium?

A slice is *selected* when its probability is >= the bundle's threshold. The threshold is
chosen on validation slices as the highest value that keeps the slice sensitivity at or
above a target (0.90 by default); the Youden point is reported next to it
(:func:`choose_thresholds`).
"""

from __future__ import annotations

import torch
from torch import nn


class SliceDetector(nn.Module):
    """Standardise the features, then one linear layer -> one logit per slice."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = int(in_dim)
        self.register_buffer("feature_mean", torch.zeros(self.in_dim))
        self.register_buffer("feature_std", torch.ones(self.in_dim))
        self.linear = nn.Linear(self.in_dim, 1)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Take the mean / std used to standardise inputs from training features (N, D)."""
        f = features.detach().float()
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.float() - self.feature_mean) / self.feature_std
        return self.linear(x).squeeze(-1)


def choose_thresholds(labels, probabilities, target_sensitivity: float = 0.90) -> dict:
    """Operating points from validation slices (metrics from :mod:`..evaluation.metrics`).

    ``threshold``: the highest threshold keeping sensitivity >= ``target_sensitivity``;
    ``youden_threshold``: the Youden point (None with one class only). Raises ``ValueError``
    without a positive slice, since then no sensitivity threshold exists.
    """
    from ..evaluation.metrics import threshold_for_sensitivity, youden_threshold

    thr = threshold_for_sensitivity(labels, probabilities, target_sensitivity)
    if thr is None:
        raise ValueError("no calcified slice among the validation slices: cannot choose a threshold")
    return {
        "threshold": float(thr),
        "youden_threshold": youden_threshold(labels, probabilities),
        "target_sensitivity": float(target_sensitivity),
    }
