"""Saving and resuming pretraining state.

``checkpoint.pth`` holds ``student``, ``teacher`` (state dicts of the multi-crop wrappers),
``optimizer``, ``scaler`` (or None), ``dino_loss`` (its centre), ``epoch`` (next epoch to
run), ``step`` (global iterations done), ``args`` and the RNG state. Writes are atomic (a
temporary file renamed over the old one), so an interrupted save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.atomic import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict | None) -> None:
    import random

    import numpy as np

    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
