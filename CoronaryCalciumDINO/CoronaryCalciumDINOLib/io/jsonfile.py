"""JSON files of the project (reports, splits, study metadata, metrics): one writer, one reader.

Writes are atomic (:mod:`.atomic`), NumPy values and paths become plain JSON, NaN and
infinity are refused (one line naming the value);
a missing or malformed file is a one-line :class:`..errors.InputError`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import write_text_atomic


def _non_finite(obj, where: str = ""):
    """Path of the first NaN/inf number in a JSON-like structure, or None."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc" and not np.all(np.isfinite(obj)):
            return where
    elif isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return f"{where} = {float(obj)}"
    return None


def check_finite(data) -> None:
    """A report (or any JSON the project writes) never holds NaN or infinity: one-line
    :class:`InputError` naming the value (an input the checks of :mod:`..limits` let through
    would otherwise give a silent non-number)."""
    found = _non_finite(data)
    if found:
        raise InputError(f"the report would hold a non-finite number ({found}); the input gives no valid score")


def json_default(obj):
    """``json.dumps(default=...)`` for NumPy scalars and arrays and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(data, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (atomically: temporary file, then rename); never NaN/inf."""
    check_finite(data)
    return write_text_atomic(path, json.dumps(data, indent=2, default=json_default, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    """Read a JSON file; a missing or malformed file is a one-line :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{what} {p.name} is not valid JSON: {exc}") from None
