"""A straightforward per-slice, per-lesion implementation of the score definition.

It exists only to cross-check :func:`.agatston.score` (tests) and to measure its speed-up
(benchmarks). It loops over slices, arteries and lesions in Python and labels each slice
with 2D 8-connectivity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..constants import ARTERIES
from .agatston import AREA_TOLERANCE_MM2, ScoringParams, slice_factor


def reference_score(hu, labels, spacing, params: ScoringParams | None = None) -> dict[str, float]:
    """Per-artery Agatston, volume and lesion count computed lesion by lesion."""
    params = params or ScoringParams()
    dz, dy, dx = (float(s) for s in spacing)
    factor = slice_factor(dz, params.slice_correction)
    out = {a: {"agatston": 0.0, "volume_mm3": 0.0, "lesions": 0} for a in ARTERIES}
    eight = np.ones((3, 3), dtype=bool)
    for z in range(hu.shape[0]):
        for lab, artery in enumerate(ARTERIES, start=1):
            mask = (labels[z] == lab) & (hu[z] >= params.threshold_hu)
            comp, n = ndimage.label(mask, structure=eight)
            for k in range(1, n + 1):
                vox = comp == k
                count = int(vox.sum())
                area = count * dy * dx
                if area < params.min_area_mm2 - AREA_TOLERANCE_MM2:
                    continue
                peak = float(hu[z][vox].max())
                e = params.band_edges_hu
                weight = 4 if peak >= e[3] else 3 if peak >= e[2] else 2 if peak >= e[1] else 1
                out[artery]["agatston"] += area * weight * factor
                out[artery]["volume_mm3"] += count * dz * dy * dx
                out[artery]["lesions"] += 1
    return out
