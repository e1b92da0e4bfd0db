"""Device choice, autocast and batching helpers of the pipeline."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def resolve_device(device: str | None = "auto"):
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` must be available."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def autocast_for(dev):
    """Autocast context for ``dev``: bf16 (or fp16) on CUDA, a no-op on the CPU."""
    import contextlib

    import torch

    if dev.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def chunks(indices: np.ndarray, size: int):
    """Consecutive pieces of ``indices`` of at most ``size`` items."""
    for s in range(0, len(indices), size):
        yield indices[s : s + size]
