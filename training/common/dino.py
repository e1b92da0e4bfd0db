"""DINO projection head, multi-crop wrapper and DINO loss (Caron et al., 2021).

Head: MLP ``in -> hidden -> hidden -> bottleneck`` (GELU, trunc-normal 0.02 init), L2
normalisation, then a weight-normalised linear layer ``bottleneck -> out_dim`` whose weight
magnitude is fixed to 1 when ``norm_last_layer`` (the default).

Loss: the teacher's outputs are centred (``c``, an EMA of the batch-mean teacher output,
all-reduced across processes) and sharpened (softmax at temperature ``tau_t``, warmed up
linearly from ``warmup_teacher_temp``), then detached; the student's outputs are softmaxed at
``tau_s = 0.1``. The loss is the cross-entropy ``-sum q_t log p_s`` averaged over all pairs
(teacher crop i, student crop v) that are not the same image, and over the batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from CoronaryCalciumDINOLib.models.backbone import forward_tokens

from .distributed import all_reduce_mean


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``W = g * v / ||v||`` (row norms); ``g`` fixed to 1 if ``fixed_norm``."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True):
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's default initialisation
        self.weight_v = nn.Parameter(v)
        self.weight_g = None if fixed_norm else nn.Parameter(torch.ones(out_dim, 1))

    def weight(self) -> torch.Tensor:
        w = self.weight_v / self.weight_v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return w if self.weight_g is None else w * self.weight_g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight())


class DINOHead(nn.Module):
    """DINO projection head (see module docstring)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        nlayers = max(int(nlayers), 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_norm=norm_last_layer)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops of possibly different sizes.

    Consecutive crops of equal size are concatenated and run through the backbone once
    (so 2 global + N local crops cost two backbone calls); the CLS token of each goes to the
    head. ``locations`` (one (B,) tensor per crop) feed location-conditioned backbones.
    Output: (n_crops * B, out_dim), crop-major.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor], locations: list[torch.Tensor] | None = None) -> torch.Tensor:
        sizes = torch.tensor([c.shape[-1] for c in crops])
        counts = torch.unique_consecutive(sizes, return_counts=True)[1]
        start, cls = 0, []
        for n in counts.tolist():
            x = torch.cat(crops[start: start + n])
            loc = torch.cat(locations[start: start + n]) if locations is not None else None
            cls.append(forward_tokens(self.backbone, x, loc)[:, 0])
            start += n
        return self.head(torch.cat(cls))


def teacher_temperature_schedule(
    teacher_temp: float, warmup_teacher_temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Per-epoch teacher temperature: linear warm-up, then constant."""
    warmup_epochs = max(0, min(int(warmup_epochs), int(epochs)))
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
            np.full(max(int(epochs) - warmup_epochs, 0), teacher_temp),
        )
    )


class DINOLoss(nn.Module):
    """DINO cross-entropy with teacher centring and sharpening.

    ``forward(student_out, teacher_out, epoch)`` assumes the first ``n_teacher_crops``
    student crops are the teacher's crops (same images), which are skipped as pairs.
    :meth:`teacher_probs`, :meth:`cross_entropy` and :meth:`update_center` are the pieces,
    used directly for extra terms (the neighbour loss).
    """

    def __init__(
        self,
        out_dim: int,
        epochs: int,
        n_teacher_crops: int = 2,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.n_teacher_crops = int(n_teacher_crops)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temperature_schedule(
            teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs, epochs
        )

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[min(int(epoch), len(self.teacher_temps) - 1)])

    def teacher_probs(self, teacher_out: torch.Tensor, epoch: int) -> list[torch.Tensor]:
        """Centred, sharpened, detached teacher distributions, one (B, K) per teacher crop."""
        q = F.softmax((teacher_out.float() - self.center) / self.teacher_temp(epoch), dim=-1)
        return list(q.detach().chunk(self.n_teacher_crops))

    def cross_entropy(
        self, q: list[torch.Tensor], student_out: torch.Tensor, skip_same: bool = True
    ) -> torch.Tensor:
        """Mean over pairs (i, v) and batch of ``-sum_k q_i log softmax(s_v / tau_s)``.

        With ``skip_same`` the pair (i, i) is left out (student crop i is teacher crop i).
        """
        n_student = student_out.shape[0] // q[0].shape[0]
        logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(n_student)
        total, n_terms = 0.0, 0
        for i, qi in enumerate(q):
            for v, lv in enumerate(logp):
                if skip_same and v == i:
                    continue
                total = total + torch.sum(-qi * lv, dim=-1).mean()
                n_terms += 1
        if n_terms == 0:
            raise ValueError("DINO loss needs at least one (teacher, other student crop) pair")
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)`` with the mean over all processes' batches."""
        batch_center = all_reduce_mean(teacher_out.float().mean(dim=0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = self.cross_entropy(self.teacher_probs(teacher_out, epoch), student_out)
        self.update_center(teacher_out)
        return loss
