"""Device choice, autocast and batching helpers of the pipeline."""

from __future__ import annotations

import os

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


def free_cpus() -> int:
    """How many of the CPUs this process may use are not busy: the CPUs it may run on less
    the load average of the last minute (rounded), at least 1; all of them where the load
    average is unknown."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return n
    return max(1, min(n, int(n - load + 0.5)))


def use_free_cpus() -> int:
    """Run PyTorch's CPU operators on at most :func:`free_cpus` threads (never more than it
    would use anyway); returns the thread count. Left alone when ``OMP_NUM_THREADS`` is set
    (the user's choice).

    The networks are small and run many short operators: an OpenMP thread that waits for a
    CPU busy with other work holds up every one of them (measured on a 2-CPU machine at load
    2.5: the detector on 194 candidates took 0.5 s on 2 threads, 0.1 s on 1)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = min(torch.get_num_threads(), free_cpus())
    torch.set_num_threads(n)
    return n


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AVX-512 bf16 / AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_autocast(use: bool | None = None):
    """bf16 autocast on the CPU: ``use=None`` where the CPU supports bf16 natively, else as told."""
    import contextlib

    import torch

    if use is None:
        use = cpu_bf16_supported()
    return torch.autocast("cpu", dtype=torch.bfloat16) if use else contextlib.nullcontext()


def autocast_for(dev, cpu_bf16: bool | None = False):
    """Autocast context for ``dev``: bf16 (or fp16) on CUDA; on the CPU bf16 when
    ``cpu_bf16`` is True (None: where the CPU supports it natively), else none."""
    import torch

    if dev.type != "cuda":
        return cpu_autocast(cpu_bf16)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def chunks(indices: np.ndarray, size: int):
    """Consecutive pieces of ``indices`` of at most ``size`` items."""
    for s in range(0, len(indices), size):
        yield indices[s : s + size]
