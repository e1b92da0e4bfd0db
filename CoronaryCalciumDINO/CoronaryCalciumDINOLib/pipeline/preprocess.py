"""Geometry shared by the networks' preprocessing: the canonical layout and square fields.

* :func:`canonical_flips` / :func:`flip_axes`: the array flips that bring a CT into the
  canonical axial LPS layout the networks and the heart localiser expect.
* :class:`Field`, :func:`field_for`, :func:`extract_field`: a square field of the axial
  slices in CT pixel coordinates (it may reach outside the image: outside is air).

What the networks see (candidates, crops, windows, context) is built from these by
:mod:`.candidates`, the one module training and inference both call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError

AIR_HU = -1024.0

#: Default HU windows (low, high), one channel each: mediastinum, wide, calcium.
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((-160.0, 240.0), (-200.0, 800.0), (130.0, 1130.0))


def hu_to_windows(hu, windows: Sequence[tuple[float, float]] = DEFAULT_WINDOWS):
    """Map HU to window channels, each ``(hu - low) / (high - low)`` clipped to [0, 1].

    The channel axis is inserted just before the last two (row, column) axes:
    ``(H, W) -> (C, H, W)`` and ``(N, H, W) -> (N, C, H, W)``; in general
    ``(..., H, W) -> (..., C, H, W)``. NumPy input gives a float32 NumPy array; a torch
    tensor gives a float32 tensor on the same device (torch is not imported here).
    """
    if len(windows) == 0:
        raise InputError("at least one HU window is needed")
    for low, high in windows:
        if not high > low:
            raise InputError(f"HU window must have high > low, got ({low}, {high})")
    if getattr(hu, "ndim", 0) < 2:
        raise InputError("hu_to_windows needs an array of at least 2 dimensions (H, W)")
    if type(hu).__module__.split(".")[0] == "torch":
        import torch  # already loaded: the input is a torch tensor

        x = hu.float().unsqueeze(-3)
        return torch.cat([((x - lo) / (hi - lo)).clamp_(0.0, 1.0) for lo, hi in windows], dim=-3)
    x = np.asarray(hu, dtype=np.float32)
    out = np.empty(x.shape[:-2] + (len(windows),) + x.shape[-2:], dtype=np.float32)
    for c, (lo, hi) in enumerate(windows):
        np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0, out=out[..., c, :, :])
    return out


@dataclass(frozen=True)
class Field:
    """A square field in CT pixel coordinates: rows [y0, y0+ny), columns [x0, x0+nx)."""

    y0: int
    x0: int
    ny: int
    nx: int

    def clipped(self, shape_yx: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
        """(image rows, image cols, field rows, field cols) slices of the part inside the image."""
        h, w = shape_yx
        iy0, iy1 = max(self.y0, 0), min(self.y0 + self.ny, h)
        ix0, ix1 = max(self.x0, 0), min(self.x0 + self.nx, w)
        return (
            slice(iy0, max(iy1, iy0)),
            slice(ix0, max(ix1, ix0)),
            slice(iy0 - self.y0, max(iy1, iy0) - self.y0),
            slice(ix0 - self.x0, max(ix1, ix0) - self.x0),
        )


#: A CT axis counts as aligned with an LPS axis when their direction cosine exceeds this.
ALIGNED_COSINE = 0.9


def canonical_flips(direction) -> tuple[bool, bool, bool] | None:
    """Array flips (z, y, x) that bring a CT into the canonical orientation, or ``None``.

    The networks and the heart localiser expect the canonical axial LPS layout: columns
    (i) towards patient left, rows (j) towards posterior (anterior at row 0), slices (k)
    towards superior. A CT whose axes are each within about 25 degrees of these (possibly
    reversed) is brought there by flipping the reversed axes; flips keep every voxel's
    physical position when the geometry is flipped along, and they are undone on the
    outputs. ``None`` means the axes are permuted (e.g. a sagittal or coronal stack) or
    strongly oblique: no flip can give the canonical layout.
    """
    d = np.asarray(direction, dtype=float)
    flips = []
    for axis in range(3):  # column 0 = i (x), 1 = j (y), 2 = k (z)
        c = d[:, axis]
        if abs(c[axis]) < ALIGNED_COSINE:
            return None
        flips.append(bool(c[axis] < 0))
    return flips[2], flips[1], flips[0]


def flip_axes(flips: tuple[bool, bool, bool], offset: int = 0) -> tuple[int, ...]:
    """Array axes to flip for ``flips`` (z, y, x), shifted by ``offset`` leading axes."""
    return tuple(offset + a for a, f in enumerate(flips) if f)


def field_for(centre_yx: tuple[float, float], spacing, crop_mm: float) -> Field:
    """The ``crop_mm`` square field around ``centre_yx`` for in-plane ``spacing`` (dz, dy, dx)."""
    dy, dx = float(spacing[1]), float(spacing[2])
    ny = max(1, int(round(crop_mm / dy)))
    nx = max(1, int(round(crop_mm / dx)))
    cy, cx = centre_yx  # pixel-index coordinates: pixel k spans [k - 0.5, k + 0.5)
    return Field(y0=int(np.floor(cy - (ny - 1) / 2.0 + 0.5)), x0=int(np.floor(cx - (nx - 1) / 2.0 + 0.5)), ny=ny, nx=nx)


def extract_field(hu_slices: np.ndarray, field: Field, fill: float = AIR_HU) -> np.ndarray:
    """(n, ny, nx) float32 HU of ``field`` cut from (n, y, x) slices; ``fill`` (air) outside the image."""
    n = hu_slices.shape[0]
    out = np.full((n, field.ny, field.nx), fill, dtype=np.float32)
    iy, ix, fy, fx = field.clipped(hu_slices.shape[1:])
    out[:, fy, fx] = hu_slices[:, iy, ix]
    return out
