"""Test data used by several test modules: the bundled real phantom series, DICOM header
edits, and a small CT with hand-scorable calcium."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom

from CoronaryCalciumDINOLib.io.volume import CTVolume

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


@lru_cache(maxsize=1)
def _phantom_files() -> tuple[Path, ...]:
    files = (p for p in PHANTOM.iterdir() if p.name not in ("README.md", "LICENSE"))
    return tuple(sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])))


def phantom_files_by_z() -> list[Path]:
    """The phantom's slice files sorted by z (the series is axial: IOP = identity)."""
    return list(_phantom_files())


def edit_dicom(path: Path, **changes) -> None:
    """Set (or, with None, delete) header elements of one DICOM file in place."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=False)


def hand_scored_ct() -> tuple[CTVolume, np.ndarray]:
    """6 x 64 x 64 CT, 3 mm slices, 0.5 mm pixels, and its labels, with hand-scorable calcium.

    LAD: slices 2 and 3, a 4 x 5 voxel block of 250 HU -> per slice 5 mm^2 x weight 2 = 10;
    RCA: slice 4, a 3 x 3 block of 450 HU -> 2.25 mm^2 x weight 4 = 9. Slice factor 3/3 = 1.
    Total 29, volume 49 voxels x 0.75 mm^3 = 36.75 mm^3, 3 lesions.
    """
    ct = CTVolume(hu=np.zeros((6, 64, 64), np.float32), spacing=(3.0, 0.5, 0.5), origin=(-16.0, -16.0, 100.0))
    lab = np.zeros(ct.shape, np.uint8)
    lab[2:4, 10:14, 20:25] = 2
    lab[4, 30:33, 40:43] = 4
    ct.hu[lab == 2] = 250.0
    ct.hu[lab == 4] = 450.0
    return ct, lab
