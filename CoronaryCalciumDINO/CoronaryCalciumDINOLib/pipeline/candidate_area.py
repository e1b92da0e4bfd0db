"""Where a reader may click a lesion: the pipeline's calcium candidates as a voxel mask.

:func:`candidate_mask` runs the stages of :func:`.inference.run_pipeline` that need no
network (orient, anatomy, candidates, the heart-region filter; no torch) and returns the
voxels of every candidate on the CT grid, in the CT's own storage order: the 2D connected
(in-plane 8-connectivity) regions of HU >= the scoring threshold of at least the minimum
lesion area in the heart field, and for a patient only those in the heart region and off
bone (for a scan that looks like a calcium-scoring phantom, every one in the heart field).
That is exactly what the pipeline hands to its detector, so a lesion the AI could have
labelled is a candidate, and nothing else in the image is.

The mask is kept packed (one bit per voxel, slice by slice): a 512 x 512 x 400 CT costs
13 MB, and :meth:`CandidateMask.slice` unpacks one slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.volume import CTVolume
from ..scoring import ScoringParams
from ..scoring.agatston import AREA_TOLERANCE_MM2
from . import candidates as cd


@dataclass
class CandidateMask:
    """Candidate voxels of one CT (z, y, x storage order), packed per slice."""

    shape: tuple[int, int, int]
    packed: np.ndarray  # uint8 (z, ceil(y * x / 8))
    threshold_hu: float
    min_area_mm2: float
    #: whether the heart region limited the candidates (False: phantom, or anatomy not found)
    heart_region_used: bool
    #: number of candidates (2D regions)
    count: int

    @classmethod
    def from_mask(cls, mask: np.ndarray, threshold_hu: float, min_area_mm2: float, heart_region_used: bool,
                  count: int) -> "CandidateMask":
        mask = np.asarray(mask, dtype=bool)
        packed = np.packbits(mask.reshape(mask.shape[0], -1), axis=1)
        return cls(tuple(mask.shape), packed, float(threshold_hu), float(min_area_mm2), bool(heart_region_used), int(count))  # type: ignore[arg-type]

    def slice(self, k: int) -> np.ndarray:
        """bool (y, x): the candidate voxels of slice ``k``."""
        _, ny, nx = self.shape
        return np.unpackbits(self.packed[int(k)], count=ny * nx).astype(bool).reshape(ny, nx)

    def slices_with_candidates(self) -> np.ndarray:
        """Indices of the slices that hold a candidate voxel."""
        return np.flatnonzero(self.packed.any(axis=1))

    def full(self) -> np.ndarray:
        """bool (z, y, x) on the whole grid (CT-sized: for tests and small volumes)."""
        _, ny, nx = self.shape
        return np.unpackbits(self.packed, axis=1, count=ny * nx).astype(bool).reshape(self.shape)

    def box(self) -> tuple[tuple[int, int, int], np.ndarray] | None:
        """(first voxel (z, y, x), bool mask of the candidates' bounding box); None when there is none."""
        zs = self.slices_with_candidates()
        if zs.size == 0:
            return None
        ys, xs = [], []
        for k in zs:
            yy, xx = np.nonzero(self.slice(k))
            ys += [yy.min(), yy.max()]
            xs += [xx.min(), xx.max()]
        z0, z1, y0, y1, x0, x1 = int(zs[0]), int(zs[-1]) + 1, min(ys), max(ys) + 1, min(xs), max(xs) + 1
        out = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
        for k in zs:
            out[k - z0] = self.slice(k)[y0:y1, x0:x1]
        return (z0, int(y0), int(x0)), out


def candidate_mask(ct: CTVolume, params: ScoringParams | None = None, config: cd.CandidateConfig | None = None) -> CandidateMask:
    """The pipeline's candidates of ``ct`` as a :class:`CandidateMask` (see the module
    docstring). ``params``: the scoring parameters of the result (threshold, minimum area);
    ``config``: the bundle's candidate settings (default: those of the shipped bundle)."""
    from .inference import _embed, candidate_config, keep_heart_region, locate, orient

    params = params or ScoringParams()
    hu = np.asarray(ct.hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"CT must be a 3D volume (z, y, x), got shape {hu.shape}")
    import warnings

    with warnings.catch_warnings():  # a non-axial CT: the pipeline warns about it already
        warnings.simplefilter("ignore", UserWarning)
        view, _notes = orient(ct, hu)
    anatomy, (z0, z1) = locate(view.hu, ct.spacing)
    cfg = candidate_config(config or cd.CandidateConfig(), params)  # the pipeline's rule
    cands = cd.find_candidates(view.hu[z0:z1], ct.spacing, cfg)
    region_used = False
    if not cd.looks_like_phantom(cands):
        region_used = bool(anatomy.found)
        cands, _outside = keep_heart_region(cands, anatomy, view.hu[z0:z1])
    painted = cands.paint(np.ones(len(cands), dtype=bool))
    # the scoring threshold and minimum area, not the bundle's (when those are higher)
    if cfg.threshold_hu < params.threshold_hu or cfg.min_area_mm2 < params.min_area_mm2:
        painted = _regions_at(painted & (view.hu[z0:z1] >= params.threshold_hu), ct.spacing, params.min_area_mm2)
    mask = view.back(_embed(painted, z0, hu.shape[0]))
    return CandidateMask.from_mask(mask, params.threshold_hu, params.min_area_mm2, region_used, len(cands))


def _regions_at(mask: np.ndarray, spacing, min_area_mm2: float) -> np.ndarray:
    """The 2D regions of ``mask`` (in-plane 8-connectivity) of at least ``min_area_mm2``."""
    from ..scoring.agatston import _INPLANE_8

    ids, n = ndimage.label(mask, structure=_INPLANE_8)
    if n == 0:
        return mask
    area = np.bincount(ids.ravel(), minlength=n + 1) * float(spacing[1]) * float(spacing[2])
    keep = area >= min_area_mm2 - AREA_TOLERANCE_MM2
    keep[0] = False
    return keep[ids]


def component_at(hu_slice: np.ndarray, threshold_hu: float, y: int, x: int) -> np.ndarray | None:
    """bool (y, x): the region of HU >= ``threshold_hu`` of one slice (in-plane
    8-connectivity, the scoring's lesion connectivity) that holds voxel (y, x); None when
    that voxel is below the threshold."""
    hu_slice = np.asarray(hu_slice)
    if not hu_slice[y, x] >= threshold_hu:
        return None
    from ..scoring.agatston import _INPLANE_8

    ids, _n = ndimage.label(hu_slice >= threshold_hu, structure=_INPLANE_8[1])  # the score's lesions
    return ids == ids[y, x]
