"""Candidate detector: a head on frozen ViT features of a candidate and its context.

A candidate (:mod:`..pipeline.candidates`) is described by the frozen teacher ViT's
features of its crop (CLS token concatenated with the mean patch token) and by its
context vector (where it sits in the heart field, its HU statistics, coarse views of the
slice). The detector standardises both with the training set's mean/std (buffers that
travel with the weights) and returns one logit: is this candidate coronary calcium?
``hidden=0`` is the paper's protocol, a linear head; ``hidden>0`` adds one hidden layer.
``use_context=False`` sees the ViT features alone.

A slice's probability is the maximum over its candidates; a slice is *selected* when it is
>= the bundle's threshold, chosen on validation studies
(:func:`..evaluation.metrics.choose_thresholds`): the highest value keeping the slice
sensitivity at or above a target; the Youden point is reported next to it.
"""

from __future__ import annotations

import torch
from torch import nn


class CandidateDetector(nn.Module):
    """Standardise [features, context], then a linear layer (or a small MLP) -> one logit."""

    def __init__(self, feature_dim: int, context_dim: int, hidden: int = 0, use_context: bool = True):
        super().__init__()
        self.feature_dim, self.context_dim = int(feature_dim), int(context_dim)
        self.hidden, self.use_context = int(hidden), bool(use_context)
        self.in_dim = self.feature_dim + (self.context_dim if self.use_context else 0)
        self.register_buffer("feature_mean", torch.zeros(self.in_dim))
        self.register_buffer("feature_std", torch.ones(self.in_dim))
        if self.hidden > 0:
            self.net = nn.Sequential(nn.Linear(self.in_dim, self.hidden), nn.GELU(), nn.Dropout(0.1),
                                     nn.Linear(self.hidden, 1))
        else:
            self.net = nn.Linear(self.in_dim, 1)

    def inputs(self, features: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if not self.use_context:
            return features.float()
        return torch.cat([features.float(), context.float()], dim=1)

    def set_standardisation(self, x: torch.Tensor) -> None:
        """Take the mean / std used to standardise inputs from training inputs (N, in_dim)."""
        f = x.detach().float()
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(1e-3))

    def forward(self, features: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = (self.inputs(features, context) - self.feature_mean) / self.feature_std
        return self.net(x).squeeze(-1)

    def config(self) -> dict:
        return {"feature_dim": self.feature_dim, "context_dim": self.context_dim, "hidden": self.hidden,
                "use_context": self.use_context}
