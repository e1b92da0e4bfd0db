"""A CT series stored as JPEG Lossless (Process 14, selection value 1: transfer syntax
1.2.840.10008.1.2.4.70, as many archives and PACS store CT) reads with the exact HU.

The series (Testing/Data/jpeg-lossless-ct, written by scripts/make_jpeg_lossless_fixture.py
with GDCM's encoder) holds 12-bit unsigned stored values with RescaleIntercept -1024; its
hu.npy is the drawn HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from CoronaryCalciumDINOLib.io import load_ct

SERIES = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "jpeg-lossless-ct"


def test_the_fixture_is_jpeg_lossless():
    files = sorted(SERIES.glob("*.dcm"))
    assert len(files) == 4
    for f in files:
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"


def test_jpeg_lossless_series_reads_with_the_exact_hu():
    ct = load_ct(str(SERIES))
    want = np.load(SERIES / "hu.npy")
    assert ct.hu.shape == want.shape and ct.spacing == pytest.approx((3.0, 0.5, 0.5))
    assert np.array_equal(np.asarray(ct.hu), want)  # slice order, rescale and every pixel
    assert ct.kvp == 120
    assert np.asarray(ct.hu).max() > 700 and np.asarray(ct.hu).min() == -1000  # bone ring and air kept
