"""CT and label input/output."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .volume import CTVolume, is_volume_file, read_label_file, read_volume_file, write_volume  # noqa: F401


def load_ct(path, series_uid: str | None = None) -> CTVolume:
    """Load a CT from a DICOM folder or a NIfTI / NRRD / MHA file (HU, with geometry)."""
    p = Path(path)
    if p.is_dir():
        from .dicom import read_dicom_series  # pydicom takes ~0.7 s to import: only for DICOM

        return read_dicom_series(p, series_uid=series_uid)
    if p.is_file():
        if is_volume_file(p):
            return read_volume_file(p)
        from .dicom import read_dicom_series

        return read_dicom_series(p, series_uid=series_uid)
    raise InputError(f"input not found: {p}")
