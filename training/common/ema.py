"""EMA update of the teacher from the student (DINO's momentum encoder)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_s`` for every parameter, matched by name.

    ``student`` may be wrapped by DistributedDataParallel (its ``module`` is used). The
    teacher and the student must have the same parameter names.
    """
    student = getattr(student, "module", student)
    s_params = dict(student.named_parameters())
    for name, pt in teacher.named_parameters():
        ps = s_params[name]
        pt.mul_(momentum).add_(ps.detach().to(pt.dtype), alpha=1.0 - momentum)
