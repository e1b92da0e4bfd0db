"""Does a label map look like per-artery calcium labels?

Values outside 0..4 are refused by the scoring itself. What this module catches is a map
that is valid but probably not per-artery: one holding only the values 0 and 1 (a binary
mask, e.g. a heart or calcium mask), whose every marked voxel would be scored as LM.
"""

from __future__ import annotations

import numpy as np

from ..constants import ARTERIES


def check_label_map(labels: np.ndarray, spacing, name: str = "label map") -> list[str]:
    """Warnings (one line each) for a label map that is probably not per-artery."""
    values = np.unique(np.asarray(labels))
    present = [int(v) for v in values if v != 0]
    if present != [1]:
        return []
    dz, dy, dx = (float(s) for s in spacing)
    volume_ml = np.count_nonzero(labels) * dz * dy * dx / 1000.0
    names = ", ".join(f"{i} {a}" for i, a in enumerate(ARTERIES, start=1))
    return [
        f"{name} holds only the values 0 and 1 ({volume_ml:.1f} ml marked), so all of it is scored as "
        f"{ARTERIES[0]}; if it is a binary mask (e.g. a heart or calcium mask) rather than per-artery labels "
        f"({names}), the per-artery scores are wrong"
    ]
