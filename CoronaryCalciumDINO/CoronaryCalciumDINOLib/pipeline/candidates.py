"""Calcium candidates: the one place that turns a CT into what the networks see.

Training (``training/``) and inference (:mod:`.inference`) call these functions and
nothing else to prepare network inputs, so both see identical preprocessing; a bundle's
manifest records the :class:`CandidateConfig` it was trained with.

Definitions
-----------
heart field
    A square of ``field_mm`` (default 160 mm) around the heart centre found from HU alone
    (:func:`.anatomy.heart_centre`; calcium labels are never used), at the CT's own
    pixel size. Outside the image is air (-1024 HU).
candidate
    A 2D connected region (in-plane 8-connectivity, never across slices) of voxels with
    HU >= ``threshold_hu`` inside the heart field, of area >= ``min_area_mm2``: exactly
    what the Agatston definition could count as a lesion if it lay in an artery. Bone,
    aortic wall, valves, noise and coronary calcium are all candidates; the networks decide
    which is which. A slice without candidates cannot hold a countable lesion.
crop
    ``crop_px`` x ``crop_px`` pixels of ``pixel_mm`` (default 32 px of 0.5 mm = 16 mm,
    close to the CT's native 0.4-0.8 mm pixels: a 1 mm^2 lesion keeps about 4 pixels and
    its peak) centred on the pixel corner nearest the candidate's centroid, bilinear, turned into the HU windows
    (:func:`.preprocess.hu_to_windows`, fixed windows, never min-max) as channels.
context
    Where the candidate sits and what surrounds it (:data:`CONTEXT_NAMES`): position in the
    heart field and along the scan, area, peak and mean HU, mean HU of the 6 mm and 20 mm
    squares around it, the share of >= threshold voxels within 20 mm, the highest HU under
    its footprint on the slices above and below (on a scan's first or last slice the one
    neighbour it has stands for both: :func:`neighbour_slices`), the slice's noise level and the peak's
    contrast over it, and two coarse 5 x 5 views of the slice around it (8 mm
    and 24 mm cells). :data:`HAND_FEATURES` is the handful used by the gradient-boosted
    baseline.
target
    (training only) the candidate's class: the artery label held by most of its voxels
    when at least half of them are labelled, else 0 (not coronary calcium).

Array order is (z, y, x); the CT is expected in the canonical axial layout
(:func:`.preprocess.canonical_flips`). Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..constants import ARTERY_TO_LABEL
from ..errors import InputError
from ..scoring.agatston import _INPLANE_8, AREA_TOLERANCE_MM2
from .anatomy import heart_centre
from .preprocess import AIR_HU, DEFAULT_WINDOWS, Field, extract_field, field_for, hu_to_windows

#: Half-widths (mm) of the surroundings squares and the coarse-view cell sizes (mm).
_NEAR_MM, _FAR_MM = 3.0, 10.0
_COARSE_CELLS_MM = (8.0, 24.0)
_COARSE_N = 5

CONTEXT_NAMES: tuple[str, ...] = (
    "x_field",  # (column - heart centre) in mm / (field / 2), + towards patient left
    "y_field",  # (row - heart centre) in mm / (field / 2), + towards posterior
    "z_scan",  # slice position in the scan range, -1 inferior .. +1 superior
    "z_from_top_dm",  # distance below the most superior slice, in dm
    "log_area_mm2",
    "peak_hu_k",  # peak HU / 1000
    "mean_hu_k",
    "near_mean_hu_k",  # mean HU of the 6 mm square around the centroid
    "far_mean_hu_k",  # mean HU of the 20 mm square
    "far_dense_share",  # share of voxels >= threshold in the 20 mm square
    "above_max_hu_k",  # highest HU under the candidate's footprint on the slice above (superior) / 1000
    "below_max_hu_k",
    "noise_sd_hu_100",  # image noise SD of the slice (:func:`slice_noise`) / 100
    "peak_snr_10",  # (peak - mean of the 6 mm square) / noise / 10
) + tuple(f"coarse{int(c)}_{i}" for c in _COARSE_CELLS_MM for i in range(_COARSE_N * _COARSE_N))

#: Column of each context feature
CONTEXT_INDEX: dict[str, int] = {n: i for i, n in enumerate(CONTEXT_NAMES)}

#: The hand features of the simple baseline: position, area, peak and mean HU, surroundings.
HAND_FEATURES: tuple[str, ...] = (
    "x_field", "y_field", "z_scan", "log_area_mm2", "peak_hu_k", "mean_hu_k", "near_mean_hu_k", "far_mean_hu_k",
)


@dataclass(frozen=True)
class CandidateConfig:
    """Settings of candidate search, crops and context (stored in the bundle manifest)."""

    threshold_hu: float = 130.0
    min_area_mm2: float = 1.0
    field_mm: float = 160.0
    crop_px: int = 32
    pixel_mm: float = 0.5
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS

    def __post_init__(self) -> None:
        for name in ("threshold_hu", "min_area_mm2", "field_mm", "pixel_mm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v):
                raise InputError(f"candidate config: {name} must be a finite number, got {v!r}")
        if not self.field_mm > 0 or not self.pixel_mm > 0 or self.min_area_mm2 < 0:
            raise InputError("candidate config: field_mm and pixel_mm must be > 0 and min_area_mm2 >= 0")
        if not isinstance(self.crop_px, int) or self.crop_px < 4:
            raise InputError(f"candidate config: crop_px must be an integer >= 4, got {self.crop_px!r}")
        object.__setattr__(self, "windows", tuple((float(a), float(b)) for a, b in self.windows))
        for lo, hi in self.windows:
            if not hi > lo:
                raise InputError(f"candidate config: HU window must have high > low, got ({lo}, {hi})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = [list(w) for w in self.windows]
        d["context"] = list(CONTEXT_NAMES)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateConfig":
        if not isinstance(d, dict):
            raise InputError(f"candidate config must be an object, got {type(d).__name__}")
        ctx = d.get("context")
        if ctx is not None and list(ctx) != list(CONTEXT_NAMES):
            raise InputError("candidate config: the bundle's context features differ from this version's")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "windows" in known:
            try:
                known["windows"] = tuple((float(a), float(b)) for a, b in known["windows"])
            except (TypeError, ValueError):
                raise InputError(f"candidate config: windows must be [[low, high], ...], got {d['windows']!r}") from None
        return cls(**known)


@dataclass(frozen=True)
class NoiseRule:
    """Which candidates stand out of the image noise (stored in the bundle manifest).

    A candidate is *significant* when its area is at least ``min_area_mm2``, or its peak is
    at least ``min_contrast_sd`` noise SDs (:func:`slice_noise`) above soft tissue
    (``soft_tissue_hu``), or (with ``min_neighbour_sd`` > 0) the highest HU under its
    footprint on the slice above or below is at least ``min_neighbour_sd`` noise SDs above
    soft tissue. A small, faint region in a noisy image is what noise alone produces (a
    1-3 mm^2 speck 3 SDs above the blood pool happens on most noisy slices) and cannot be
    told from a faint plaque on one slice; a plaque usually reaches the neighbouring slice,
    a speck of noise seldom does. The AI pipeline does not label regions that fail all
    three, since one of them turns a calcium-free study into a non-zero score. The numbers
    are fitted per bundle on calibration studies (never on the studies a bundle is
    evaluated on); the defaults (0) keep every candidate. The rule applies to what the
    model labels only: a label map given by a reader is scored as it is.
    """

    min_contrast_sd: float = 0.0
    min_area_mm2: float = 0.0
    soft_tissue_hu: float = 40.0
    min_neighbour_sd: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_contrast_sd", "min_area_mm2", "soft_tissue_hu", "min_neighbour_sd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise InputError(f"noise rule: {name} must be a finite number, got {v!r}")
        if self.min_contrast_sd < 0 or self.min_area_mm2 < 0 or self.min_neighbour_sd < 0:
            raise InputError("noise rule: min_contrast_sd, min_area_mm2 and min_neighbour_sd must be >= 0")

    @property
    def active(self) -> bool:
        return self.min_contrast_sd > 0 and self.min_area_mm2 > 0

    def _sd(self, context: np.ndarray, hu: np.ndarray) -> np.ndarray:
        noise = np.asarray(context)[:, CONTEXT_INDEX["noise_sd_hu_100"]] * 100.0
        return (hu - self.soft_tissue_hu) / np.maximum(noise, 1e-6)

    def contrast_sd(self, context: np.ndarray) -> np.ndarray:
        """(n,) each candidate's peak above soft tissue, in noise SDs (from its context)."""
        return self._sd(context, np.asarray(context)[:, CONTEXT_INDEX["peak_hu_k"]] * 1000.0)

    def neighbour_sd(self, context: np.ndarray) -> np.ndarray:
        """(n,) the highest HU under each candidate's footprint on the slices above and below,
        above soft tissue, in noise SDs (from its context)."""
        ctx = np.asarray(context)
        hu = np.maximum(ctx[:, CONTEXT_INDEX["above_max_hu_k"]], ctx[:, CONTEXT_INDEX["below_max_hu_k"]]) * 1000.0
        return self._sd(ctx, hu)

    def keeps(self, contrast_sd, area_mm2, neighbour_sd=None) -> np.ndarray:
        """bool: whether regions of these contrasts (noise SDs), areas (mm^2) and neighbour
        contrasts (noise SDs; needed when ``min_neighbour_sd`` > 0) count."""
        contrast_sd, area_mm2 = np.asarray(contrast_sd, dtype=float), np.asarray(area_mm2, dtype=float)
        if not self.active:
            return np.ones(np.broadcast(contrast_sd, area_mm2).shape, dtype=bool)
        keep = (area_mm2 >= self.min_area_mm2 - AREA_TOLERANCE_MM2) | (contrast_sd >= self.min_contrast_sd)
        if self.min_neighbour_sd > 0:
            if neighbour_sd is None:
                raise ValueError("this noise rule needs the neighbour contrasts")
            keep |= np.asarray(neighbour_sd, dtype=float) >= self.min_neighbour_sd
        return keep

    def significant(self, context: np.ndarray) -> np.ndarray:
        """(n,) bool: the candidates (rows of ``context``) that count."""
        ctx = np.asarray(context)
        return self.keeps(self.contrast_sd(ctx), np.exp(ctx[:, CONTEXT_INDEX["log_area_mm2"]]), self.neighbour_sd(ctx))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "NoiseRule":
        if not isinstance(d, dict):
            raise InputError(f"noise rule must be an object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"noise rule: unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class Candidates:
    """The candidates of one CT (canonical layout), in the heart field's pixel frame."""

    config: CandidateConfig
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]  # CT (z, y, x)
    field: Field
    centre_yx: tuple[float, float]  # heart centre, CT pixel indices
    #: (z, ny, nx) int32 candidate id + 1 on the field (0: no candidate)
    ids: np.ndarray = field(repr=False)
    z: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # (n,) slice
    cy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) centroid row, field pixels
    cx: np.ndarray = field(default_factory=lambda: np.zeros(0))
    voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    #: (n,) each candidate's value in ``ids``
    uid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    context: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CONTEXT_NAMES)), np.float32))
    #: (z,) share of each slice's tissue that is fat (:func:`slice_fat_share`), on the slices
    #: holding candidates (0 on the others; empty when not measured)
    fat: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return int(self.z.size)

    def per_slice_max(self, values: np.ndarray) -> np.ndarray:
        """(z,) maximum of per-candidate ``values`` on each slice (0 where a slice has none)."""
        out = np.zeros(self.shape[0], dtype=np.float32)
        if len(self):
            np.maximum.at(out, self.z, np.asarray(values, dtype=np.float32))
        return out

    def paint(self, values: np.ndarray, slices: np.ndarray | None = None) -> np.ndarray:
        """(z, y, x) volume on the CT grid: each candidate's voxels get its value (e.g. its
        class 0..4 as uint8, or a float confidence), 0 elsewhere; dtype of ``values``.

        ``slices`` (bool (z,)) limits the painting to those slices.
        """
        values = np.asarray(values)
        lut = np.zeros(int(self.ids.max(initial=0)) + 1, dtype=values.dtype)
        lut[self.uid] = values
        out = np.zeros(self.shape, dtype=values.dtype)
        sub = lut[self.ids]
        if slices is not None:
            sub[~np.asarray(slices, dtype=bool)] = 0
        iy, ix, fy, fx = self.field.clipped(self.shape[1:])
        out[:, iy, ix] = sub[:, fy, fx]
        return out

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """(n,) class of each candidate from a per-artery label map on the CT grid (training)."""
        lab = extract_field(np.asarray(labels), self.field, fill=0).astype(np.int64)
        total = int(self.ids.max(initial=0))
        sel = self.ids > 0
        counts = np.bincount((self.ids[sel] - 1) * 5 + np.clip(lab[sel], 0, 4), minlength=5 * total)
        counts = counts.reshape(total, 5)[self.uid - 1] if total else np.zeros((0, 5), dtype=np.int64)
        labelled = counts[:, 1:].sum(axis=1)
        best = 1 + np.argmax(counts[:, 1:], axis=1)
        return np.where(labelled * 2 >= np.maximum(counts.sum(axis=1), 1), best, 0).astype(np.int64) * (labelled > 0)

    def nearest_pixels(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """CT-grid voxel (z, y, x) nearest to each crop pixel, each (n, P, P), and whether
        it lies inside the image. Ties (a crop pixel centred between two CT pixels) go to
        the higher index, so neighbouring crop pixels never share a voxel at equal size."""
        p = self.config.crop_px if size is None else int(size)
        yy, xx = _crop_grid(self, p)
        y = np.floor(yy + self.field.y0 + 0.5).astype(int)
        x = np.floor(xx + self.field.x0 + 0.5).astype(int)
        z = np.broadcast_to(self.z[:, None, None], y.shape)
        ok = (y >= 0) & (y < self.shape[1]) & (x >= 0) & (x < self.shape[2])
        return z, y, x, ok

    def masks(self, size: int | None = None) -> np.ndarray:
        """(n, P, P) float32: 1 where a crop pixel (nearest voxel) belongs to its own candidate
        (never a voxel outside the heart field, where no candidate is)."""
        z, y, x, ok = self.nearest_pixels(size)
        fy, fx = y - self.field.y0, x - self.field.x0
        ok = ok & (fy >= 0) & (fy < self.ids.shape[1]) & (fx >= 0) & (fx < self.ids.shape[2])
        own = np.zeros(ok.shape, dtype=bool)
        uid = np.broadcast_to(self.uid[:, None, None], ok.shape)
        own[ok] = self.ids[z[ok], fy[ok], fx[ok]] == uid[ok]
        return own.astype(np.float32)


# ----------------------------------------------------------------------------- search


def _rect_sums(ii: np.ndarray, z, y0, y1, x0, x1) -> np.ndarray:
    """Sums over [y0, y1) x [x0, x1) of slices ``z`` from the integral image ``ii`` (z, ny+1, nx+1)."""
    ny, nx = ii.shape[1] - 1, ii.shape[2] - 1
    y0, y1 = np.clip(y0, 0, ny), np.clip(y1, 0, ny)
    x0, x1 = np.clip(x0, 0, nx), np.clip(x1, 0, nx)
    return ii[z, y1, x1] - ii[z, y0, x1] - ii[z, y1, x0] + ii[z, y0, x0]


def _integral(a: np.ndarray) -> np.ndarray:
    """Integral image (z, ny+1, nx+1) float64 of ``a`` (z, ny, nx), in place in one buffer
    (cumulative sums along y, then x: the same additions in the same order as two
    ``np.cumsum`` calls, without their temporaries)."""
    ii = np.empty((a.shape[0], a.shape[1] + 1, a.shape[2] + 1), dtype=np.float64)
    ii[:, 0, :] = 0.0
    ii[:, 1:, 0] = 0.0
    body = ii[:, 1:, 1:]
    np.cumsum(a, axis=1, dtype=np.float64, out=body)
    np.cumsum(body, axis=2, out=body)
    return ii


def _box(cy, cx, half_y: float, half_x: float):
    """Half-open pixel box [y0, y1) x [x0, x1) of half-width (half_y, half_x) around (cy, cx)."""
    y0 = np.floor(cy - half_y + 0.5).astype(int)
    x0 = np.floor(cx - half_x + 0.5).astype(int)
    return y0, y0 + max(1, int(round(2 * half_y))), x0, x0 + max(1, int(round(2 * half_x)))


def _box_means(ii_hu, ii_n, z, cy, cx, half_y, half_x):
    """Mean HU over the :func:`_box` around (cy, cx); pixels off the image count as air.
    ``ii_n``: the integral image of the in-image mask, the same on every slice (1, ny+1, nx+1)."""
    y0, y1, x0, x1 = _box(cy, cx, half_y, half_x)
    full = (y1 - y0) * (x1 - x0)
    s = _rect_sums(ii_hu, z, y0, y1, x0, x1)
    inside = _rect_sums(ii_n, np.zeros_like(z), y0, y1, x0, x1)
    return (s + (full - inside) * AIR_HU) / full


def neighbour_slices(z: np.ndarray, step: int, nz: int) -> np.ndarray:
    """The slice ``step`` away from each slice ``z`` of a volume of ``nz`` slices; past the
    volume's first or last slice, the slice on the other side (mirrored). A one-slice volume
    has no neighbour: the index stays off the volume. The volume is the one searched: the
    scan, or the cardiac range the pipeline and the training caches cut from it.

    A scan ends where it was set to end, not where the anatomy does: a calcification on its
    first or last slice has no neighbour there, and "nothing" must not read as air above
    it (a coronary calcification never has air above it, so a network taught on whole
    studies would learn to drop every calcification a tight scan cuts)."""
    z = np.asarray(z)
    n = z + step
    return np.where((n < 0) | (n >= nz), z - step, n)


def _footprint_max(f: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, lid: np.ndarray, m: int) -> np.ndarray:
    """Per candidate, the highest HU of slices ``z`` at its voxels' (y, x); air off the
    volume (no slice there to show anything)."""
    out = np.full(m, AIR_HU, dtype=np.float64)
    ok = (z >= 0) & (z < f.shape[0])
    np.maximum.at(out, lid[ok], f[z[ok], y[ok], x[ok]])
    return out


#: Side (mm) of the windows whose local standard deviation gives the noise estimate
NOISE_WINDOW_MM = 8.0
#: Local-mean HU range of windows that count as homogeneous soft tissue (blood pool, myocardium)
_SOFT_TISSUE_HU = (0.0, 100.0)
#: Noise assumed where a slice has too few soft-tissue windows (HU)
_DEFAULT_NOISE_HU = 20.0


def slice_noise(f: np.ndarray, pixel_mm: Sequence[float], inside: np.ndarray | None = None,
                slices=None) -> np.ndarray:
    """(z,) image noise SD (HU) of each slice of ``f`` (z, y, x) with pixel size ``pixel_mm`` (dy, dx);
    only on ``slices`` (indices; default all), :data:`_DEFAULT_NOISE_HU` on the others.

    The median, over the pixels of the slice, of the HU standard deviation in the
    :data:`NOISE_WINDOW_MM` square around each pixel, counting only windows whose mean is
    soft tissue (0-100 HU) and (with ``inside``) that lie in the image. Blood pool and
    myocardium fill most of the heart field, so the median is the SD of homogeneous tissue:
    the pixel noise a lesion's peak is seen through, correlated (textured) noise included;
    edges and calcium lift only a minority of windows. (Differences of neighbouring pixels
    would measure only the fine-grained part of textured noise, a fraction of it.)

    Never below 5 HU; ``_DEFAULT_NOISE_HU`` for a slice with fewer than 200 such pixels.
    """
    wy = max(3, int(round(NOISE_WINDOW_MM / float(pixel_mm[0]))) | 1)
    wx = max(3, int(round(NOISE_WINDOW_MM / float(pixel_mm[1]))) | 1)
    out = np.full(f.shape[0], _DEFAULT_NOISE_HU)
    if inside is not None:
        ok_in = ndimage.minimum_filter(np.asarray(inside) > 0, size=(wy, wx), mode="constant", cval=False)
    for k in range(f.shape[0]) if slices is None else np.unique(slices):
        a = f[k].astype(np.float64)
        m = ndimage.uniform_filter(a, (wy, wx), mode="nearest")
        var = ndimage.uniform_filter(a * a, (wy, wx), mode="nearest") - m * m
        ok = (m > _SOFT_TISSUE_HU[0]) & (m < _SOFT_TISSUE_HU[1])
        if inside is not None:
            ok &= ok_in
        if np.count_nonzero(ok) >= 200:
            out[k] = float(np.sqrt(max(np.median(var[ok]), 0.0)))
    return np.maximum(out, 5.0)


#: Fat window (HU) and the scale (mm) of the local means :func:`slice_fat_share` looks at
FAT_HU = (-190.0, -30.0)
_FAT_MEAN_MM = 3.0


def slice_fat_share(f: np.ndarray, pixel_mm: Sequence[float], slices=None) -> np.ndarray:
    """(z,) share of each slice's tissue that is fat, in ``f`` (z, y, x) with pixel ``pixel_mm``
    (dy, dx); only on ``slices`` (indices; default all), 0 on the others.

    On 3 mm local means (so image noise does not reach the fat window): tissue is > -500 HU;
    fat is tissue at least 3 mm inside it (away from the partial volume of lung and air
    edges) with a mean in :data:`FAT_HU`. A patient's heart field holds epicardial,
    pericardial and chest-wall fat (synthetic patients: >= 0.04 on every slice with
    calcium; the real patient slices of Testing/Data: 0.07); a calcium-scoring phantom's
    water-equivalent insert has none (the real QRM phantom: 0.005-0.01 through its insert).
    """
    ky = max(1, int(round(_FAT_MEAN_MM / float(pixel_mm[0]))))
    kx = max(1, int(round(_FAT_MEAN_MM / float(pixel_mm[1]))))
    out = np.zeros(f.shape[0])
    for k in range(f.shape[0]) if slices is None else np.unique(slices):
        m = ndimage.uniform_filter(f[k].astype(np.float32), (ky, kx), mode="nearest")
        tissue = m > -500.0
        n = np.count_nonzero(tissue)
        if n:  # tissue at least (ky, kx) pixels inside its edges (and the image's)
            inner = ndimage.minimum_filter(tissue.view(np.uint8), size=(2 * ky + 1, 2 * kx + 1),
                                           mode="constant", cval=0).astype(bool)
            out[k] = np.count_nonzero(inner & (m >= FAT_HU[0]) & (m <= FAT_HU[1])) / n
    return out


#: Median fat share (over the slices holding candidates) below which a scan looks like a phantom
PHANTOM_FAT_SHARE = 0.02


def looks_like_phantom(c: "Candidates") -> bool:
    """True when the slices holding candidates have almost no fat (median of
    :attr:`Candidates.fat` below :data:`PHANTOM_FAT_SHARE`): a calcium-scoring phantom, not a patient."""
    if not len(c) or c.fat.size != c.shape[0]:
        return False
    return bool(np.median(c.fat[np.unique(c.z)]) < PHANTOM_FAT_SHARE)


#: Largest region (mm^2) taken for a calcification in a phantom. Calcium-scoring phantoms'
#: calcifications are cylinders of at most 5-6 mm across (QRM: 1, 3 and 5 mm; the real
#: phantom's densest 5 mm one is 42 mm^2 at 130 HU with its blur); their calibration rods
#: (10-20 mm) and bone are larger.
PHANTOM_MAX_AREA_MM2 = 50.0


def phantom_sized(context: np.ndarray) -> np.ndarray:
    """(n,) bool: candidates small enough to be a phantom's calcification (:data:`PHANTOM_MAX_AREA_MM2`)."""
    return np.exp(np.asarray(context)[:, CONTEXT_INDEX["log_area_mm2"]]) <= PHANTOM_MAX_AREA_MM2


def ends_of_larger_regions(c: "Candidates", max_area_mm2: float = PHANTOM_MAX_AREA_MM2) -> np.ndarray:
    """(n,) bool: candidates of at most ``max_area_mm2`` whose footprint on the slice above or
    below touches a candidate larger than that: the partial-volume end of a rod or a bone.

    Where a phantom's calibration rod (or bone) begins, the slice before it holds a share of
    it: its noise crosses the threshold as a cluster of specks under the rod's footprint
    (the real phantom's slice 30, under the rod of slices 31-37). A phantom's calcification
    is a cylinder standing alone in the insert, never on a rod's end."""
    large = np.exp(c.context[:, CONTEXT_INDEX["log_area_mm2"]]) > max_area_mm2
    if not large.any():  # none at all, or no candidates
        return np.zeros(len(c), dtype=bool)
    lut = np.zeros(int(c.ids.max(initial=0)) + 1, dtype=bool)
    lut[c.uid[large]] = True
    big = lut[c.ids]  # (z, ny, nx): the large regions' voxels
    beside = np.zeros_like(big)  # under or over a large region's voxel on the next slice
    beside[1:] |= big[:-1]
    beside[:-1] |= big[1:]
    # by uid: ``ids`` also holds the regions a subset left out, which are no one's
    return np.isin(c.uid, c.ids[beside]) & ~large


def phantom_artery(dx, dy) -> np.ndarray:
    """The artery label a phantom's calcium gets by convention, from its offset (mm, or any
    unit) from the insert's centre: ``dx`` towards the patient's left, ``dy`` posterior.

    A phantom has no arteries; its calcium is named by side: the patient's right RCA, left
    anterior LAD, left posterior LCX (never LM). The synthetic phantoms are labelled and
    real ones are named with this one rule.
    """
    dx, dy = np.asarray(dx, dtype=float), np.asarray(dy, dtype=float)
    return np.where(dx < 0, ARTERY_TO_LABEL["RCA"],
                    np.where(dy < 0, ARTERY_TO_LABEL["LAD"], ARTERY_TO_LABEL["LCX"])).astype(np.uint8)


def scan_positions(nz: int, dz: float, superior_increasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(z_scan in [-1, 1] inferior..superior, distance below the top slice in dm) of each slice."""
    k = np.arange(nz, dtype=np.float64)
    t = np.zeros(nz) if nz == 1 else 2.0 * k / (nz - 1) - 1.0
    if not superior_increasing:
        t = -t
    top = (nz - 1 - k) if superior_increasing else k
    return t.astype(np.float32), (top * dz / 100.0).astype(np.float32)


def find_candidates(
    hu: np.ndarray,
    spacing: Sequence[float],
    config: CandidateConfig | None = None,
    centre_yx: tuple[float, float] | None = None,
    superior_increasing: bool = True,
) -> Candidates:
    """All candidates of a CT (z, y, x) in HU, canonical layout, with their context.

    ``centre_yx`` (CT pixel indices) overrides the HU-only heart localiser (training may
    pass a centre from a heart mask; inference never does).
    """
    cfg = config or CandidateConfig()
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"CT must be a 3D volume (z, y, x), got shape {hu.shape}")
    dz, dy, dx = (float(s) for s in spacing)
    if centre_yx is None:
        centre_yx = heart_centre(hu, (dz, dy, dx))
    fld = field_for(centre_yx, (dz, dy, dx), cfg.field_mm)
    f = extract_field(hu, fld)  # (z, ny, nx) float32, air outside the image
    inside = np.zeros(f.shape[1:], dtype=np.float32)
    iy, ix, fy, fx = fld.clipped(hu.shape[1:])
    inside[fy, fx] = 1.0
    dense = f >= cfg.threshold_hu
    ids, n = ndimage.label(dense, structure=_INPLANE_8)
    if n == 0:
        return Candidates(cfg, (dz, dy, dx), tuple(hu.shape), fld, tuple(centre_yx), ids=ids.astype(np.int32))
    flat_ids = ids[dense]
    counts = np.bincount(flat_ids, minlength=n + 1)[1:]
    keep = counts * dy * dx >= cfg.min_area_mm2 - AREA_TOLERANCE_MM2
    # Renumber: kept components 1..m in label order, dropped ones 0.
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    ids = remap[ids]
    m = int(keep.sum())
    zz, yy, xx = np.nonzero(ids)
    lid = ids[zz, yy, xx] - 1
    vals = f[zz, yy, xx].astype(np.float64)
    cnt = np.bincount(lid, minlength=m).astype(np.float64)
    cz = (np.bincount(lid, weights=zz, minlength=m) / cnt).round().astype(int)
    cy = np.bincount(lid, weights=yy, minlength=m) / cnt
    cx = np.bincount(lid, weights=xx, minlength=m) / cnt
    mean = np.bincount(lid, weights=vals, minlength=m) / cnt
    peak = np.full(m, -np.inf)
    np.maximum.at(peak, lid, vals)

    ii_hu = _integral(np.where(inside[None] > 0, f, 0.0))
    ii_in = _integral(inside[None])  # the in-image mask is the same on every slice
    ii_dense = _integral(dense)
    near = _box_means(ii_hu, ii_in, cz, cy, cx, _NEAR_MM / dy, _NEAR_MM / dx)
    far = _box_means(ii_hu, ii_in, cz, cy, cx, _FAR_MM / dy, _FAR_MM / dx)
    y0, y1, x0, x1 = _box(cy, cx, _FAR_MM / dy, _FAR_MM / dx)
    far_dense = _rect_sums(ii_dense, cz, y0, y1, x0, x1) / ((y1 - y0) * (x1 - x0))

    up = +1 if superior_increasing else -1
    above = _footprint_max(f, neighbour_slices(zz, up, f.shape[0]), yy, xx, lid, m)
    below = _footprint_max(f, neighbour_slices(zz, -up, f.shape[0]), yy, xx, lid, m)
    noise = slice_noise(f, (dy, dx), inside, cz)[cz]
    fat = slice_fat_share(f, (dy, dx), cz)

    coarse = []
    g = np.arange(_COARSE_N) - (_COARSE_N - 1) / 2.0
    for cell in _COARSE_CELLS_MM:
        gy, gx = np.meshgrid(g * cell / dy, g * cell / dx, indexing="ij")
        py = cy[:, None] + gy.ravel()[None]
        px = cx[:, None] + gx.ravel()[None]
        zc = np.broadcast_to(cz[:, None], py.shape)
        coarse.append(_box_means(ii_hu, ii_in, zc, py, px, 0.5 * cell / dy, 0.5 * cell / dx) / 1000.0)

    half = 0.5 * cfg.field_mm
    cyc, cxc = centre_yx
    x_field = ((cx + fld.x0) - cxc) * dx / half
    y_field = ((cy + fld.y0) - cyc) * dy / half
    z_scan, z_top = scan_positions(hu.shape[0], dz, superior_increasing)
    ctx = np.column_stack(
        [
            x_field, y_field, z_scan[cz], z_top[cz], np.log(cnt * dy * dx), peak / 1000.0, mean / 1000.0,
            near / 1000.0, far / 1000.0, far_dense, above / 1000.0, below / 1000.0, noise / 100.0,
            (peak - near) / noise / 10.0, *coarse,
        ]
    ).astype(np.float32)
    ctx = np.clip(np.nan_to_num(ctx, nan=0.0, posinf=10.0, neginf=-10.0), -10.0, 10.0)
    return Candidates(
        cfg, (dz, dy, dx), tuple(hu.shape), fld, tuple(centre_yx), ids=ids.astype(np.int32),
        z=cz, cy=cy, cx=cx, voxels=cnt.astype(int), uid=np.arange(1, m + 1, dtype=np.int32), context=ctx,
        fat=fat.astype(np.float32),
    )


# ----------------------------------------------------------------------------- crops


def _crop_grid(c: Candidates, size: int, shift=None, scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Field-pixel coordinates (n, P, P) of the crop grids (optionally shifted (n, 2) mm, scaled (n,))."""
    dy, dx = c.spacing[1], c.spacing[2]
    g = (np.arange(size) - (size - 1) / 2.0) * c.config.pixel_mm
    s = np.ones(len(c)) if scale is None else np.asarray(scale, dtype=float)
    oy = np.zeros(len(c)) if shift is None else np.asarray(shift, dtype=float)[:, 0]
    ox = np.zeros(len(c)) if shift is None else np.asarray(shift, dtype=float)[:, 1]
    # Centre on the corner between the four pixels nearest the centroid: with 0.5 mm CT
    # pixels the crop pixels are then the CT's own pixels (no interpolation at all).
    cy, cx = np.floor(c.cy) + 0.5, np.floor(c.cx) + 0.5
    yy = cy[:, None, None] + (oy[:, None, None] + s[:, None, None] * g[None, :, None]) / dy
    xx = cx[:, None, None] + (ox[:, None, None] + s[:, None, None] * g[None, None, :]) / dx
    return np.broadcast_to(yy, (len(c), size, size)), np.broadcast_to(xx, (len(c), size, size))


def crop_hu(
    hu: np.ndarray, c: Candidates, index=None, size: int | None = None, shift=None, scale=None
) -> np.ndarray:
    """(n, P, P) float32 HU crops (bilinear) of the candidates ``index`` (default all).

    ``hu`` is the CT (canonical layout, the one the candidates were found on). ``shift``
    ((n, 2) mm) and ``scale`` ((n,)) move and zoom the crop (training augmentation).
    """
    sub = c if index is None else subset(c, index)
    p = c.config.crop_px if size is None else int(size)
    if len(sub) == 0:
        return np.zeros((0, p, p), dtype=np.float32)
    yy, xx = _crop_grid(sub, p, shift, scale)
    yy = yy + sub.field.y0
    xx = xx + sub.field.x0
    h, w = hu.shape[1:]
    y0 = np.floor(yy).astype(int)
    x0 = np.floor(xx).astype(int)
    wy = (yy - y0).astype(np.float32)
    wx = (xx - x0).astype(np.float32)
    zi = np.broadcast_to(sub.z[:, None, None], yy.shape)

    def at(y, x):
        ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        v = hu[zi, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)].astype(np.float32)
        return np.where(ok, v, np.float32(AIR_HU))

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bot = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


def crop_windows(hu: np.ndarray, c: Candidates, index=None, **kw) -> np.ndarray:
    """(n, len(windows), P, P) float32 network input of the candidates ``index``."""
    return hu_to_windows(crop_hu(hu, c, index, **kw), c.config.windows)


#: A candidate is in the heart region when at least this share of its voxels is (:func:`in_heart_region`).
REGION_SHARE = 0.5


def in_heart_region(c: Candidates, anatomy) -> np.ndarray:
    """(n,) bool: candidates with at least :data:`REGION_SHARE` of their voxels inside the
    heart region of ``anatomy`` (:class:`.anatomy.Anatomy` of the same CT, canonical layout)
    and off bone. All True when the anatomy was not found (no lungs: a phantom, a scan cut
    to the heart)."""
    if not len(c) or not anatomy.found:
        return np.ones(len(c), dtype=bool)
    zz, fy, fx = np.nonzero(c.ids)  # candidates' voxels, in the field (always inside the image)
    uid = c.ids[zz, fy, fx]
    yy, xx = fy + c.field.y0, fx + c.field.x0
    inside = anatomy.in_region(zz, yy, xx) & ~anatomy.on_bone(zz, yy, xx)
    m = int(c.ids.max(initial=0)) + 1
    share = np.bincount(uid, weights=inside, minlength=m) / np.maximum(np.bincount(uid, minlength=m), 1)
    return share[c.uid] >= REGION_SHARE


#: A candidate lies on a calcified structure that leaves the heart region when more than this
#: share of the structure (:func:`on_structure_leaving_region`) lies outside the region or on
#: bone ...
LEAVING_SHARE = 0.5
#: ... and at least this volume (mm^3) of it does: a coronary calcification the region's edge
#: cuts is small, a calcified costal cartilage or the sternum's cortex is not.
LEAVING_MM3 = 50.0


def on_structure_leaving_region(c: Candidates, hu: np.ndarray, anatomy) -> np.ndarray:
    """(n,) bool: candidates that are the part inside the heart region of a calcified
    structure lying mostly outside it or on bone: a costal cartilage, the sternum or a rib that
    runs on into the chest wall (on a heart-centred field of view the chest wall's cartilage
    touches the heart's front, and the region's front edge can pass through it).

    The structure of a candidate: the voxels at or above the candidate threshold connected to
    it in 3D (26-connected) within the heart field. It leaves the region when more than
    :data:`LEAVING_SHARE` of its voxels, and at least :data:`LEAVING_MM3`, lie outside the region
    or on bone. Coronary calcium lies in the fat round the heart, apart from bone and the chest
    wall: a coronary calcification connected to such a structure (e.g. at a calcified aortic
    root, which is inside the region) still has most of its structure inside. ``hu``: the CT
    (z, y, x) the candidates were found on. All False when the anatomy was not found."""
    out = np.zeros(len(c), dtype=bool)
    if not len(c) or not anatomy.found:
        return out
    dense = extract_field(np.asarray(hu), c.field) >= c.config.threshold_hu
    lab, n = ndimage.label(dense, structure=np.ones((3, 3, 3), dtype=bool))
    zz, fy, fx = np.nonzero(lab)
    ids = lab[zz, fy, fx]
    yy, xx = fy + c.field.y0, fx + c.field.x0
    inside = (yy >= 0) & (xx >= 0) & (yy < c.shape[1]) & (xx < c.shape[2])  # the field may pass the image's edge
    away = ~inside.copy()
    away[inside] = ~(anatomy.in_region(zz[inside], yy[inside], xx[inside]) & ~anatomy.on_bone(zz[inside], yy[inside], xx[inside]))
    total = np.bincount(ids, minlength=n + 1)
    outside = np.bincount(ids, weights=away, minlength=n + 1)
    voxel_mm3 = float(np.prod(c.spacing))
    leaves = (outside > LEAVING_SHARE * total) & (outside * voxel_mm3 >= LEAVING_MM3)
    leaves[0] = False
    cz, cy, cx = np.nonzero(c.ids)  # every candidate voxel lies in one structure (same threshold, 2D in 3D)
    structure = np.zeros(int(c.ids.max(initial=0)) + 1, dtype=np.int64)
    structure[c.ids[cz, cy, cx]] = lab[cz, cy, cx]
    return leaves[structure[c.uid]]


def subset(c: Candidates, index) -> Candidates:
    """The candidates ``index`` (int array or bool mask) of ``c`` (ids are left as they are)."""
    idx = np.arange(len(c))[index]
    return Candidates(
        c.config, c.spacing, c.shape, c.field, c.centre_yx, ids=c.ids, z=c.z[idx], cy=c.cy[idx], cx=c.cx[idx],
        voxels=c.voxels[idx], uid=c.uid[idx], context=c.context[idx], fat=c.fat,
    )


def crop_labels(labels: np.ndarray, c: Candidates, index=None, size: int | None = None) -> np.ndarray:
    """(n, P, P) uint8 labels at the crop grid (nearest pixel; 0 outside the image), for training."""
    sub = c if index is None else subset(c, index)
    p = c.config.crop_px if size is None else int(size)
    if len(sub) == 0:
        return np.zeros((0, p, p), dtype=np.uint8)
    zi, y, x, ok = sub.nearest_pixels(p)
    h, w = labels.shape[1:]
    v = np.asarray(labels)[zi, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
    return np.where(ok, v, 0).astype(np.uint8)


def random_points(c: Candidates, n: int, rng: np.random.Generator) -> Candidates:
    """``n`` pseudo-candidates at uniformly random places of the heart field (for plain DINO)."""
    z = rng.integers(0, c.shape[0], n)
    cy = rng.uniform(0, c.field.ny - 1, n)
    cx = rng.uniform(0, c.field.nx - 1, n)
    return Candidates(
        c.config, c.spacing, c.shape, c.field, c.centre_yx, ids=c.ids, z=z, cy=cy, cx=cx,
        voxels=np.zeros(n, int), uid=np.zeros(n, np.int32), context=np.zeros((n, len(CONTEXT_NAMES)), np.float32),
    )
