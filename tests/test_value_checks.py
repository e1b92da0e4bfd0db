"""Every value that enters a score is finite and plausible (limits: ``limits.py``).

One regression test per case of the reliability run: implausible DICOM header values, a
series checked beyond its first file, incomplete or non-finite volumes, label values out of
range, non-finite options, reports without NaN/inf.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom import config as dcm_config

from CoronaryCalciumDINOLib import limits
from CoronaryCalciumDINOLib.cli import main as cli_main
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io import load_ct, read_label_file
from CoronaryCalciumDINOLib.io.dicom import read_dicom_series
from CoronaryCalciumDINOLib.io.volume import CTVolume, read_volume_file, write_volume
from CoronaryCalciumDINOLib.report import build_report, write_json
from CoronaryCalciumDINOLib.scoring import ScoringParams, params_for_kvp, score
from shared_data import edit_dicom, phantom_files_by_z



@pytest.fixture(scope="module")
def four_slices(tmp_path_factory):
    """Slices 20-23 of the phantom (the calcium insert), as s0..s3."""
    dcm_config.settings.writing_validation_mode = dcm_config.IGNORE
    dest = tmp_path_factory.mktemp("phantom4")
    for i, f in enumerate(phantom_files_by_z()[20:24]):
        shutil.copy(f, dest / f"s{i}")
    return dest


@pytest.fixture()
def series(four_slices, tmp_path):
    dest = tmp_path / "series"
    shutil.copytree(four_slices, dest)
    return dest


def _refused(folder: Path, *words: str) -> str:
    with pytest.raises(InputError) as info:
        read_dicom_series(folder)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------------ DICOM header values


@pytest.mark.parametrize("slope", ["nan", "inf", "-inf", "0", "1e-30", "-1", "1e308"])
def test_implausible_rescale_slope_refused_naming_file_and_value(series, slope):
    edit_dicom(series / "s2", RescaleSlope=slope)
    _refused(series, "s2", "RescaleSlope")


@pytest.mark.parametrize("intercept", ["nan", "inf", "-inf", "1e308", "1e6"])
def test_implausible_rescale_intercept_refused(series, intercept):
    edit_dicom(series / "s1", RescaleIntercept=intercept)
    _refused(series, "s1", "RescaleIntercept")


def test_rescale_differing_between_slices_warns(series):
    edit_dicom(series / "s1", RescaleIntercept="-1")
    ct = read_dicom_series(series)
    assert any("differ between slices" in w for w in ct.warnings)


def test_rescale_without_air_warns(series):
    for f in series.iterdir():
        edit_dicom(f, RescaleIntercept="1600")  # air (-2048 stored here) would read as -448 HU
    ct = read_dicom_series(series)
    assert any("no voxel is at or below" in w for w in ct.warnings)


def test_multi_valued_rows_refused(series):
    edit_dicom(series / "s0", Rows=[512, 512])
    _refused(series, "s0", "Rows")


@pytest.mark.parametrize("tag, value", [("PixelSpacing", "0.488"), ("ImagePositionPatient", "0"),
                                        ("ImageOrientationPatient", "1")])
def test_vector_tag_with_one_value_refused(series, tag, value):
    edit_dicom(series / "s0", **{tag: value})
    _refused(series, "s0", tag)


@pytest.mark.parametrize("spacing", ["1e-6\\1e-6", "1e308\\1e308", "nan\\nan", "0\\0"])
def test_implausible_pixel_spacing_refused(series, spacing):
    for f in series.iterdir():
        edit_dicom(f, PixelSpacing=spacing)
    _refused(series, "PixelSpacing")


def test_implausible_slice_spacing_refused(series):
    """Slices 0.01 mm apart (at 1e-6 mm a resampling to mm allocated without bound)."""
    for i, f in enumerate(sorted(series.iterdir())):
        edit_dicom(f, ImagePositionPatient=[0, 0, i * 0.01])
    _refused(series, "slice spacing")


def test_non_finite_position_refused(series):
    edit_dicom(series / "s3", ImagePositionPatient=["nan", 0, 0])
    _refused(series, "s3", "ImagePositionPatient")


def test_short_dicom_file_is_not_skipped(series):
    """A slice truncated below 132 bytes (zero preamble) is an error, not a skipped file:
    an end slice would otherwise vanish without a gap to notice."""
    (series / "s3").write_bytes((series / "s3").read_bytes()[:100])
    _refused(series, "s3", "truncated")


def test_empty_file_is_reported(series):
    (series / "s3").write_bytes(b"")
    ct = read_dicom_series(series)
    assert ct.shape[0] == 3
    assert any("empty file s3" in w for w in ct.warnings)


def test_missing_rows_is_not_skipped(series):
    edit_dicom(series / "s3", Rows=None)
    _refused(series, "s3", "Rows")


@pytest.mark.parametrize("modality", ["MR", "PT", "OT"])
def test_modality_checked_in_every_file(series, modality):
    edit_dicom(series / "s2", Modality=modality)  # not the first file
    _refused(series, modality, "s2")


def test_sheared_image_refused(series):
    """Columns 511 with 512 x 512 pixel data: pydicom only warns and drops the excess."""
    for f in series.iterdir():
        edit_dicom(f, Columns=511)
    _refused(series, "pixel data", "511")


def test_flipped_pixel_representation_refused(series):
    for f in series.iterdir():
        edit_dicom(f, PixelRepresentation=0)
    _refused(series, "outside any CT scale")


def test_values_beyond_bits_stored_refused(series):
    edit_dicom(series / "s1", BitsStored=8)  # pydicom would mask the stored values to 8 bits
    _refused(series, "s1", "BitsStored")


@pytest.mark.parametrize("kvp", ["nan", "inf", "0", "1e6"])
def test_implausible_kvp_tag_is_ignored_with_a_warning(series, kvp, tmp_path):
    for f in series.iterdir():
        edit_dicom(f, KVP=kvp)
    ct = read_dicom_series(series)
    assert ct.kvp is None
    assert any("KVP tag" in w for w in ct.warnings)
    labels = write_volume(np.zeros(ct.shape, np.uint8), ct, tmp_path / "l.nrrd")
    assert cli_main(["score", str(series), "--labels", str(labels), "--json", str(tmp_path / "r.json"),
                     "--quiet"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("KVP tag" in w for w in report["warnings"])


def test_implausible_slice_thickness_is_ignored_with_a_warning(series):
    for f in series.iterdir():
        edit_dicom(f, SliceThickness="nan")
    ct = read_dicom_series(series)
    assert ct.meta["slice_thickness"] is None
    assert any("SliceThickness" in w for w in ct.warnings)


def test_undamaged_series_has_no_new_warnings(series):
    assert read_dicom_series(series).warnings == []


# ------------------------------------------------------------------ volumes and labels


@pytest.fixture(scope="module")
def phantom_ct(four_slices):
    """The four phantom slices as a volume (real HU and geometry, small enough to write fast)."""
    return load_ct(four_slices)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_voxel_refused(tmp_path, phantom_ct, bad, suffix):
    """One NaN voxel changed the score (SimpleITK reads NaN in NIfTI as 0)."""
    hu = phantom_ct.hu.copy()
    hu[2, 200, 200] = bad
    path = write_volume(hu, phantom_ct, tmp_path / f"ct{suffix}")
    with pytest.raises(InputError, match="not finite"):
        read_volume_file(path)


@pytest.mark.parametrize("spacing", [(1e6, 0.5, 0.5), (3.0, 1e-6, 0.5), (3.0, 0.5, 1e6)])
def test_implausible_volume_spacing_refused(tmp_path, spacing):
    ct = CTVolume(hu=np.full((4, 16, 16), -1000, np.float32), spacing=spacing)
    path = write_volume(ct.hu.astype(np.int16), ct, tmp_path / "ct.nrrd")
    with pytest.raises(InputError, match="implausible"):
        read_volume_file(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_refused(tmp_path, phantom_ct, suffix):
    """SimpleITK reads a truncated NIfTI and fills the rest with zeros (30 % of the
    phantom scored 0.0 instead of its score): the reader must refuse it."""
    path = write_volume(phantom_ct.hu.astype(np.int16), phantom_ct, tmp_path / f"ct{suffix}")
    assert read_volume_file(path).shape == phantom_ct.shape
    if suffix == ".nii":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.3)])
    else:
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: int(len(raw) * 0.3)]))  # a complete gzip of a cut file
    with pytest.raises(InputError, match="truncated"):
        read_volume_file(path)


def test_cut_gzip_stream_refused(tmp_path, phantom_ct):
    path = write_volume(phantom_ct.hu.astype(np.int16), phantom_ct, tmp_path / "ct.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="incomplete|truncated"):
        read_volume_file(path)


def test_label_value_beyond_int16_is_not_wrapped(tmp_path, phantom_ct):
    """65538 stored as int32 would wrap to 2 (LAD) in an int16 cast."""
    lab = np.zeros(phantom_ct.shape, np.int32)
    lab[2, 100:110, 100:110] = 65538
    path = write_volume(lab, phantom_ct, tmp_path / "lab.nrrd")
    with pytest.raises(InputError, match="outside 0..4"):
        read_label_file(path, phantom_ct)


def test_non_finite_label_refused(tmp_path, phantom_ct):
    lab = np.zeros(phantom_ct.shape, np.float32)
    lab[0, 0, 0] = np.nan
    path = write_volume(lab, phantom_ct, tmp_path / "lab.nrrd")
    with pytest.raises(InputError, match="non-finite"):
        read_label_file(path, phantom_ct)


# ------------------------------------------------------------------ options and reports


@pytest.mark.parametrize("option", [["--min-area", "nan"], ["--min-area", "inf"], ["--min-area", "1e9"],
                                    ["--calibration-factor", "inf"], ["--calibration-factor", "nan"],
                                    ["--calibration-factor", "1e6"], ["--kvp", "nan"], ["--kvp", "inf"],
                                    ["--kvp", "1e308"]])
def test_non_finite_or_implausible_options_are_one_line(series, tmp_path, capsys, option):
    labels = write_volume(np.zeros((4, 512, 512), np.uint8), read_dicom_series(series), tmp_path / "l.nrrd")
    rc = cli_main(["score", str(series), "--labels", str(labels), "--json", str(tmp_path / "r.json"), *option])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("ccdino: error:") and "\n" not in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("kwargs", [{"threshold_hu": float("nan")}, {"min_area_mm2": float("nan")},
                                    {"calibration_factor": float("inf")}, {"kvp": float("nan")},
                                    {"band_edges_hu": (130.0, 200.0, 300.0, float("inf"))}])
def test_scoring_params_refuse_non_finite(kwargs):
    with pytest.raises(InputError):
        ScoringParams(**kwargs)


def test_params_for_nan_kvp_refused():
    with pytest.raises(InputError, match="finite"):
        params_for_kvp(float("nan"))


def test_report_never_holds_nan_or_inf(tmp_path):
    hu = np.full((2, 8, 8), -1000, np.float32)
    hu[0, 2:5, 2:5] = 400
    lab = np.zeros(hu.shape, np.uint8)
    lab[0, 2:5, 2:5] = 2
    result = score(hu, lab, (3.0, 0.5, 0.5))
    report = build_report(result, "x", kvp=120.0)
    assert json.loads(json.dumps(report, allow_nan=False))
    with pytest.raises(InputError, match="non-finite.*kvp"):
        build_report(result, "x", kvp=float("nan"))
    report["total"]["agatston"] = math.inf
    with pytest.raises(InputError, match="total.agatston"):
        write_json(report, tmp_path / "r.json")
    assert not list(tmp_path.iterdir())


def test_limits_are_ordered_and_finite():
    for lo, hi in (limits.PIXEL_SPACING_MM, limits.SLICE_SPACING_MM, limits.RESCALE_SLOPE, limits.HU_RANGE,
                   limits.KVP_RANGE, limits.MIN_AREA_MM2, limits.CALIBRATION_FACTOR, limits.THRESHOLD_HU):
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
