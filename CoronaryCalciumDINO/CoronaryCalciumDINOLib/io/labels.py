"""Reading a label map for scoring: the one reader of ``score --labels`` and ``batch --labels-dir``.

A Slicer segmentation (``.seg.nrrd``) is read by :func:`.segfile.read_seg_labels`: its
segments are matched to arteries by name (LM, LAD, LCX, RCA) and a file cropped to its
extent is placed back on the CT grid. A DICOM Segmentation (a DICOM file, e.g. ``*.seg.dcm``)
is read by :func:`.dicom_seg.read_dicom_seg_labels` (highdicom; segments matched to arteries
by their codes or labels). Any other volume file is read by
:func:`.volume.read_label_file`: its voxel values are the artery codes (0 background, 1 LM,
2 LAD, 3 LCX, 4 RCA) on the CT's grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..filenames import SEG_SUFFIX
from .volume import CTVolume, is_volume_file, read_label_file


def read_labels(path: str | os.PathLike, ct: CTVolume) -> np.ndarray:
    """Artery labels (z, y, x, 0..4) of the label map ``path`` on the grid of ``ct``."""
    path = Path(path)
    if path.name.lower().endswith(SEG_SUFFIX) and path.is_file():
        from .segfile import read_seg_labels

        return read_seg_labels(path, ct)
    if path.is_file() and not is_volume_file(path):
        from .dicom_seg import is_dicom_file, read_dicom_seg_labels

        if is_dicom_file(path):
            return read_dicom_seg_labels(path, ct)
    return read_label_file(path, ct)
