"""CT series stored as lossless JPEG read with the exact HU: JPEG Lossless (Process 14,
selection value 1: 1.2.840.10008.1.2.4.70, as many archives and PACS store CT) and JPEG-LS
Lossless (1.2.840.10008.1.2.4.80).

The series (Testing/Data/jpeg-lossless-ct and jpeg-ls-ct, written by
scripts/make_jpeg_lossless_fixture.py with GDCM's encoder) hold 12-bit unsigned stored values
with RescaleIntercept -1024; their hu.npy is the drawn HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from CoronaryCalciumDINOLib.io import load_ct

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"
SERIES = {"jpeg-lossless-ct": "1.2.840.10008.1.2.4.70", "jpeg-ls-ct": "1.2.840.10008.1.2.4.80"}


@pytest.mark.parametrize("folder", SERIES)
def test_lossless_jpeg_series_reads_with_the_exact_hu(folder):
    files = sorted((DATA / folder).glob("*.dcm"))
    assert len(files) == 4
    for f in files:
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == SERIES[folder]
    ct = load_ct(str(DATA / folder))
    want = np.load(DATA / folder / "hu.npy")
    assert ct.hu.shape == want.shape and ct.spacing == pytest.approx((3.0, 0.5, 0.5))
    assert np.array_equal(np.asarray(ct.hu), want)  # slice order, rescale and every pixel
    assert ct.kvp == 120
    assert np.asarray(ct.hu).max() > 700 and np.asarray(ct.hu).min() == -1000  # bone ring and air kept
