"""DICOM series reading: real phantom and real JPEG 2000 slices, and refused bad input.

Expected geometry and HU come from the DICOM headers and pixel data read independently
here with pydicom, and from SimpleITK's own DICOM reader.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from CoronaryCalciumDINOLib.cli import main as cli_main
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io import load_ct
from CoronaryCalciumDINOLib.io.dicom import list_series, read_dicom_series
from shared_data import edit_dicom, phantom_files_by_z

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"
PHANTOM = DATA / "qrm-phantom-canon"
JP2 = DATA / "real-cardiac-ct-slices"


@pytest.fixture(scope="module")
def phantom_files():
    return phantom_files_by_z()


@pytest.fixture(scope="module")
def phantom_ct():
    return load_ct(PHANTOM)


def _subset(files: list[Path], dest: Path, n: int = 5, start: int = 20) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files[start : start + n]):
        target = dest / f"slice{i:03d}"
        shutil.copy(f, target)
        out.append(target)
    return out



# --------------------------------------------------------------------------- real data


def test_phantom_geometry_matches_headers(phantom_ct, phantom_files):
    ct = phantom_ct
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in phantom_files]
    z = np.array([float(h.ImagePositionPatient[2]) for h in headers])
    assert ct.shape == (47, 512, 512)
    assert ct.shape == (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    dz = float(np.median(np.diff(z)))
    assert dz == pytest.approx(3.0, abs=1e-3)
    assert ct.spacing == pytest.approx((dz, float(headers[0].PixelSpacing[0]), float(headers[0].PixelSpacing[1])))
    assert ct.spacing == pytest.approx((3.0, 0.488, 0.488), abs=1e-4)
    assert ct.origin == pytest.approx(tuple(float(v) for v in headers[0].ImagePositionPatient))
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    assert np.allclose(ct.direction[:, 0], iop[:3]) and np.allclose(ct.direction[:, 1], iop[3:])
    assert np.allclose(ct.direction[:, 2], np.cross(iop[:3], iop[3:]))
    # slice k lies at origin + k * dz along the normal, increasing monotonically
    positions = (ct.ijk_to_lps() @ np.array([[0, 0, k, 1] for k in range(47)]).T)[2]
    assert np.all(np.diff(positions) > 0)
    assert np.allclose(positions, z, atol=1e-3)
    assert ct.kvp == 120
    assert ct.meta["series_uid"] == headers[0].SeriesInstanceUID
    assert ct.meta["slice_thickness"] == pytest.approx(3.0)
    assert ct.warnings == []


def test_phantom_hu_equals_rescaled_pixels(phantom_ct, phantom_files):
    ct = phantom_ct
    for k in (0, 23, 46):
        ds = pydicom.dcmread(phantom_files[k])
        expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert ct.hu.dtype == np.float32
        np.testing.assert_array_equal(ct.hu[k], expected.astype(np.float32))
    # an air pocket of the phantom (by inspection) is about -1000 HU; the calcium inserts and
    # bone-equivalent material are far above the 130 HU threshold
    air = ct.hu[23, 256:266, 440:455]
    assert -1050 < float(air.mean()) < -950
    assert float(ct.hu.max()) > 600


def test_shuffled_renamed_copy_gives_identical_volume(tmp_path, phantom_ct, phantom_files):
    rng = random.Random(7)
    files = list(phantom_files)
    rng.shuffle(files)
    dest = tmp_path / "shuffled"
    (dest / "sub").mkdir(parents=True)
    for i, f in enumerate(files):
        name = f"img{rng.randrange(10**6):06d}_{i}" + (".dcm" if i % 3 == 0 else "")
        shutil.copy(f, (dest / "sub" if i % 2 else dest) / name)
    (dest / "README").write_text("exported series\n")
    (dest / "LICENSE").write_text("MIT License\n")
    FileSet().write(dest)  # an (empty) DICOMDIR
    assert (dest / "DICOMDIR").is_file()
    ct = load_ct(dest)
    np.testing.assert_array_equal(ct.hu, phantom_ct.hu)
    assert ct.spacing == phantom_ct.spacing and ct.origin == phantom_ct.origin
    assert np.array_equal(ct.direction, phantom_ct.direction)


def test_jpeg2000_slices_match_simpleitk():
    import SimpleITK as sitk

    ct = load_ct(JP2)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(JP2))
    reader.SetFileNames(names)
    img = reader.Execute()
    ref = sitk.GetArrayFromImage(img).astype(np.float32)
    assert ct.shape == ref.shape == (2, 512, 512)
    np.testing.assert_array_equal(ct.hu, ref)
    sx, sy, sz = img.GetSpacing()
    assert ct.spacing == pytest.approx((sz, sy, sx), abs=1e-4)
    assert ct.origin == pytest.approx(img.GetOrigin(), abs=1e-4)
    assert np.allclose(ct.direction, np.reshape(img.GetDirection(), (3, 3)), atol=1e-6)
    # plausibility against the values measured on these slices (see their README):
    # body (HU > -950) percentiles 25/50/75 of about -862 / -94 / 37 HU
    body = ct.hu[ct.hu > -950]
    p25, p50, p75 = np.percentile(body, [25, 50, 75])
    assert abs(p25 + 862) < 30 and abs(p50 + 94) < 30 and abs(p75 - 37) < 30
    assert ct.kvp == 120
    assert any("3 mm" in w for w in ct.warnings)  # 1.5 mm slices: Agatston is defined on 3 mm


def test_pixel_spacing_order_matches_simpleitk(tmp_path, phantom_files):
    """PixelSpacing is (row spacing, column spacing) = (dy, dx): check with unequal values."""
    import SimpleITK as sitk

    files = _subset(phantom_files, tmp_path / "s", n=3)
    for f in files:
        edit_dicom(f, PixelSpacing=[0.5, 0.4])
    ct = read_dicom_series(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    sx, sy, sz = reader.Execute().GetSpacing()
    assert (sx, sy) == pytest.approx((0.4, 0.5))
    assert ct.spacing == pytest.approx((sz, sy, sx))


# --------------------------------------------------------------------------- bad input


def _two_series(phantom_files, folder: Path) -> str:
    _subset(phantom_files, folder, n=4, start=10)
    other = folder / "other"
    files = _subset(phantom_files, other, n=3, start=30)
    uid = generate_uid()
    for f in files:
        edit_dicom(f, SeriesInstanceUID=uid, SOPInstanceUID=generate_uid(), SeriesDescription="Second recon")
    return uid


def test_two_series_refused_then_selectable(tmp_path, phantom_files):
    folder = tmp_path / "two"
    uid2 = _two_series(phantom_files, folder)
    uid1 = pydicom.dcmread(phantom_files[0], stop_before_pixels=True).SeriesInstanceUID
    with pytest.raises(InputError) as exc:
        read_dicom_series(folder)
    msg = str(exc.value)
    assert uid1 in msg and uid2 in msg and "--series" in msg and "\n" not in msg
    assert "Second recon" in msg and "3 slices" in msg and "4 slices" in msg
    infos = {s.uid: s for s in list_series(folder)}
    assert infos[uid1].slices == 4 and infos[uid2].slices == 3
    assert infos[uid2].description == "Second recon" and infos[uid1].modality == "CT"
    assert infos[uid1].slice_thickness == pytest.approx(3.0)
    assert read_dicom_series(folder, series_uid=uid2).shape == (3, 512, 512)
    assert read_dicom_series(folder, series_uid=uid1).shape == (4, 512, 512)
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(folder, series_uid="1.2.3.4")


def test_localizer_series_is_set_aside(tmp_path, phantom_files):
    folder = tmp_path / "scout"
    _subset(phantom_files, folder, n=4, start=10)
    files = _subset(phantom_files, folder / "scout", n=2, start=30)
    uid = generate_uid()
    for f in files:
        edit_dicom(f, SeriesInstanceUID=uid, SOPInstanceUID=generate_uid(), ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    ct = read_dicom_series(folder)
    assert ct.shape == (4, 512, 512) and ct.meta["series_uid"] != uid
    assert any(uid in w and "localizer" in w for w in ct.warnings)


def test_non_ct_modality_refused(tmp_path, phantom_files):
    for f in _subset(phantom_files, tmp_path / "mr", n=3):
        edit_dicom(f, Modality="MR")
    with pytest.raises(InputError, match="modality MR"):
        read_dicom_series(tmp_path / "mr")


def test_missing_pixel_data_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "nopix", n=3)
    edit_dicom(files[1], PixelData=None)
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom_series(tmp_path / "nopix")


def test_single_slice_refused(tmp_path, phantom_files):
    _subset(phantom_files, tmp_path / "one", n=1)
    with pytest.raises(InputError, match="single slice"):
        read_dicom_series(tmp_path / "one")


def test_truncated_file_refused_naming_it(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "trunc", n=4)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])  # keeps the DICM preamble and header
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "trunc")
    assert files[2].name in str(exc.value)


def test_damaged_header_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "hdr", n=3)
    data = files[0].read_bytes()
    files[0].write_bytes(data[:300])  # DICM magic, then the file ends inside the header
    with pytest.raises(InputError, match=files[0].name):
        read_dicom_series(tmp_path / "hdr")


def test_gantry_tilt_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "tilt", n=4)
    tilt = np.tan(np.radians(15))
    for f in files:
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + tilt * z, z]
        ds.save_as(f)
    with pytest.raises(InputError, match="tilt"):
        read_dicom_series(tmp_path / "tilt")


def test_missing_middle_slice_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "gap", n=6)
    files[3].unlink()
    with pytest.raises(InputError, match=r"gap of 6\.00 mm"):
        read_dicom_series(tmp_path / "gap")


def test_duplicate_position_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "dup", n=4)
    edit_dicom(files[3], ImagePositionPatient=pydicom.dcmread(files[1]).ImagePositionPatient, SOPInstanceUID=generate_uid())
    with pytest.raises(InputError, match="same position"):
        read_dicom_series(tmp_path / "dup")


def test_mixed_sizes_and_orientations_refused(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "size", n=3)
    edit_dicom(files[1], Rows=256)
    with pytest.raises(InputError, match="mixes image sizes"):
        read_dicom_series(tmp_path / "size")
    files = _subset(phantom_files, tmp_path / "orient", n=3)
    edit_dicom(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(InputError, match="mixes slice orientations"):
        read_dicom_series(tmp_path / "orient")


def test_folder_without_dicom_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("nothing here")
    with pytest.raises(InputError, match="no readable DICOM"):
        read_dicom_series(tmp_path / "empty")


def test_warnings_for_valid_but_unusual_series(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "kvp", n=3)
    for f in files:
        edit_dicom(f, KVP=100)
    ct = read_dicom_series(tmp_path / "kvp")
    assert ct.kvp == 100 and any("100 kVp" in w for w in ct.warnings)
    files = _subset(phantom_files, tmp_path / "nokvp", n=3)
    for f in files:
        edit_dicom(f, KVP=None)
    ct = read_dicom_series(tmp_path / "nokvp")
    assert ct.kvp is None and any("KVP" in w for w in ct.warnings)


def test_cli_reports_bad_dicom_in_one_line(tmp_path, phantom_files, capsys):
    _two_series(phantom_files, tmp_path / "two")
    files = _subset(phantom_files, tmp_path / "gap", n=6)
    files[3].unlink()
    labels = tmp_path / "labels.nrrd"
    for folder, expected in ((tmp_path / "two", "series"), (tmp_path / "gap", "gap")):
        code = cli_main(["score", str(folder), "--labels", str(labels)])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert len(err.splitlines()) == 1 and err.startswith("ccdino: error:") and expected in err
        assert "Traceback" not in err
