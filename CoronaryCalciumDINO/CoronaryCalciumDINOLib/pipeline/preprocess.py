"""From CT slices to network inputs, and from network outputs back to the CT grid.

Every stage works on a square *field* of the axial slices centred on the heart
(:func:`..data.slices.heart_box` finds the centre; one centre per volume). The field is
``crop_mm`` wide; in CT pixels it is ``round(crop_mm / dy)`` rows by ``round(crop_mm / dx)``
columns and may reach outside the image (outside is air, -1024 HU). The field is resampled
to the network's input size and turned into HU-window channels with
:func:`..data.slices.hu_to_windows` (fixed windows on HU, never per-image min-max).

The same functions prepare training samples (``training/``) and inference inputs, so the
networks see identical preprocessing in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1024.0


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


def heart_centre(hu: np.ndarray, spacing) -> tuple[float, float]:
    """(row, column) of the heart-centred field for a volume (z, y, x) of HU."""
    from ..data.slices import heart_box

    # HU-only localiser (no heart mask), as at inference time; the box is clamped to the
    # image, so its centre is the heart centre unless the heart touches the image border.
    y0, y1, x0, x1 = heart_box(hu, spacing)
    return (0.5 * (y0 + y1) - 0.5, 0.5 * (x0 + x1) - 0.5)


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


def slice_locations(ct) -> np.ndarray:
    """Location of every slice in [-1, 1] (inferior to superior) over the scan range.

    Used only by location-conditioned backbones; without a heart mask at inference the
    scan range stands for the heart's z-extent (cardiac scans cover about the heart).
    """
    from ..data.slices import slice_location

    nz = ct.hu.shape[0]
    sup = bool(np.asarray(ct.direction, dtype=float)[2, 2] >= 0)
    return np.array([slice_location(z, (0, nz - 1), sup) for z in range(nz)], dtype=np.float32)


def extract_field(hu_slices: np.ndarray, field: Field, fill: float = AIR_HU) -> np.ndarray:
    """(n, ny, nx) float32 HU of ``field`` cut from (n, y, x) slices; ``fill`` (air) outside the image."""
    n = hu_slices.shape[0]
    out = np.full((n, field.ny, field.nx), fill, dtype=np.float32)
    iy, ix, fy, fx = field.clipped(hu_slices.shape[1:])
    out[:, fy, fx] = hu_slices[:, iy, ix]
    return out


def resample_hu(field_hu, size: int):
    """(n, ny, nx) HU (array or tensor) -> (n, size, size) float32 tensor.

    Bilinear with pixel-centre alignment, antialiased when shrinking (a small lesion is
    blurred, never dropped by the sampling grid).
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(field_hu, dtype=torch.float32)
    if t.shape[-2:] == (size, size):
        return t
    shrink = t.shape[-1] > size or t.shape[-2] > size
    return F.interpolate(t[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)[:, 0]


def to_windows(field_hu, size: int, windows):
    """(n, ny, nx) HU (array or tensor) -> (n, len(windows), size, size) float32 tensor.

    HU are resampled to ``size`` (:func:`resample_hu`), then mapped through the fixed HU
    windows by :func:`..data.slices.hu_to_windows`.
    """
    from ..data.slices import hu_to_windows

    return hu_to_windows(resample_hu(field_hu, size), windows)


def neighbour_stack(hu: np.ndarray, indices, neighbours: int) -> np.ndarray:
    """(n, 2*neighbours+1, y, x) slices z-k..z+k for each index (clamped at the volume ends)."""
    idx = np.asarray(indices, dtype=int)
    offsets = np.arange(-neighbours, neighbours + 1)
    zz = np.clip(idx[:, None] + offsets[None, :], 0, hu.shape[0] - 1)
    return hu[zz]


def segmenter_input(hu: np.ndarray, indices, field: Field, config) -> "torch.Tensor":  # noqa: F821
    """Segmenter input for slices ``indices``: (n, in_channels, S, S) float32 tensor.

    Channels: windows of slice z-k, ..., z, ..., z+k (k = ``config.neighbours``).
    """
    import torch

    stack = neighbour_stack(hu, indices, config.neighbours)  # (n, m, y, x)
    n, m = stack.shape[:2]
    f = extract_field(stack.reshape(n * m, *stack.shape[2:]), field)
    x = to_windows(f, config.input_size, config.windows)  # (n*m, w, S, S)
    return x.reshape(n, m * x.shape[1], config.input_size, config.input_size).contiguous() if n else torch.zeros(
        (0, config.in_channels, config.input_size, config.input_size)
    )


def labels_to_field(labels: np.ndarray, field: Field, size: int) -> np.ndarray:
    """(n, y, x) labels -> (n, size, size) uint8 on the resampled field (nearest neighbour)."""
    import torch
    import torch.nn.functional as F

    f = np.zeros((labels.shape[0], field.ny, field.nx), dtype=np.uint8)
    iy, ix, fy, fx = field.clipped(labels.shape[1:])
    f[:, fy, fx] = labels[:, iy, ix]
    if f.shape[1:] == (size, size):
        return f
    t = torch.from_numpy(f)[:, None].float()
    return F.interpolate(t, size=(size, size), mode="nearest-exact")[:, 0].to(torch.uint8).numpy()


def field_to_grid(values, field: Field, shape_yx: tuple[int, int], mode: str = "nearest"):
    """(n, [c,] S, S) tensor on the resampled field -> (n, [c,] y, x) numpy on the CT grid.

    ``mode="nearest"`` for labels (uint8 in, uint8 out), ``"bilinear"`` for float maps.
    Pixels of the CT grid outside the field are 0.
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(values)
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    n, c = t.shape[:2]
    dtype = t.dtype
    if mode == "nearest":
        up = F.interpolate(t.float(), size=(field.ny, field.nx), mode="nearest-exact").to(dtype)
    else:
        up = F.interpolate(t.float(), size=(field.ny, field.nx), mode="bilinear", align_corners=False)
    up = up.cpu().numpy()
    out = np.zeros((n, c, *shape_yx), dtype=up.dtype)
    iy, ix, fy, fx = field.clipped(shape_yx)
    out[:, :, iy, ix] = up[:, :, fy, fx]
    return out[:, 0] if squeeze else out
