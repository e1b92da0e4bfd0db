"""DICOM series reading: real phantom and real JPEG 2000 slices, and refused bad input.

Expected geometry and HU come from the DICOM headers and pixel data read independently
here with pydicom, and from SimpleITK's own DICOM reader.
"""

from __future__ import annotations

import json
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
from CoronaryCalciumDINOLib.io import load_ct, write_volume
from CoronaryCalciumDINOLib.io.dicom import list_series, read_dicom_series
from shared_data import edit_dicom, phantom_files_by_z, write_enhanced_series, write_small_series

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


# --------------------------------------------------------------------------- real DICOM as it comes


def _built_hu() -> np.ndarray:
    hu = np.full((4, 16, 16), -1000, np.int16)
    hu[1:3, 4:8, 6:10] = 400
    hu[3, 10:12, 2:5] = 180
    return hu


def test_series_without_series_uid_loads_with_a_warning(tmp_path):
    """De-identified series often lack SeriesInstanceUID (and SOPClassUID): grouped by
    folder and geometry under a stable synthetic key, with a warning."""
    root = tmp_path / "deid"
    files = write_small_series(root / "scan" / "1", _built_hu(), series_uid=None, sop_class=False, kvp=100,
                               pixel_spacing=(0.6, 0.5))
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert "SeriesInstanceUID" not in ds and "SOPClassUID" not in ds
    ct = read_dicom_series(root)
    assert ct.shape == (4, 16, 16)
    np.testing.assert_array_equal(ct.hu, _built_hu().astype(np.float32))
    assert ct.spacing == pytest.approx((3.0, 0.6, 0.5))
    assert ct.origin == pytest.approx((-5.0, -6.0, 40.0))
    assert ct.kvp == 100
    key = ct.meta["series_uid"]
    assert key.startswith("no-uid:scan/1:")
    notes = [w for w in ct.warnings if "no SeriesInstanceUID" in w]
    assert len(notes) == 1 and key in notes[0] and "folder" in notes[0] and "4 files" in notes[0]
    # list_series shows the key, --series accepts it, and it does not change between reads
    infos = list_series(root)
    assert [s.uid for s in infos] == [key] and infos[0].slices == 4 and infos[0].modality == "CT"
    assert list_series(root)[0].uid == key
    assert read_dicom_series(root, series_uid=key).shape == (4, 16, 16)
    # one file of the series names it too (keys are relative to the folder read)
    one = read_dicom_series(files[2])
    assert one.shape == (4, 16, 16) and one.meta["series_uid"].startswith("no-uid:.:")


def test_series_without_uid_grouped_by_folder_and_geometry(tmp_path):
    root = tmp_path / "two"
    write_small_series(root / "a", series_uid=None)
    write_small_series(root / "b", series_uid=None)  # the same geometry, another folder
    keys = sorted(s.uid for s in list_series(root))
    assert len(keys) == 2 and keys[0].startswith("no-uid:a:") and keys[1].startswith("no-uid:b:")
    with pytest.raises(InputError) as exc:
        read_dicom_series(root)
    msg = str(exc.value)
    assert "2 series" in msg and keys[0] in msg and keys[1] in msg and "\n" not in msg
    assert read_dicom_series(root, series_uid=keys[1]).shape == (4, 16, 16)
    # one folder, two reconstructions without UID: told apart by pixel spacing / series number
    same = tmp_path / "same"
    write_small_series(same, series_uid=None, name="A{n:03d}")
    write_small_series(same, series_uid=None, pixel_spacing=(0.5, 0.5), name="B{n:03d}")
    write_small_series(same, series_uid=None, series_number=7, name="C{n:03d}")
    infos = list_series(same)
    assert len(infos) == 3 and all(s.slices == 4 for s in infos)
    # with no identifying attribute at all, one folder is one series
    bare = tmp_path / "bare"
    write_small_series(bare, series_uid=None, series_number=None, study_uid=None)
    assert read_dicom_series(bare).meta["series_uid"].startswith("no-uid:.:")


def test_kvp_auto_reads_kvp_of_series_without_uid(tmp_path, capsys):
    folder = tmp_path / "deid"
    write_small_series(folder, _built_hu(), series_uid=None, sop_class=False, kvp=100)
    ct = read_dicom_series(folder)
    labels = tmp_path / "labels.nrrd"
    lab = np.zeros(ct.shape, np.uint8)
    lab[1:3, 4:8, 6:10] = 2
    write_volume(lab, ct, labels)
    reports = {}
    for kvp in ("auto", None):
        out = tmp_path / f"r-{kvp}.json"
        argv = ["score", str(folder), "--labels", str(labels), "--json", str(out), "--quiet"]
        assert cli_main(argv + (["--kvp", kvp] if kvp else [])) == 0, capsys.readouterr().err
        reports[kvp] = json.loads(out.read_text())
    assert reports["auto"]["kvp"] == 100 and reports["auto"]["threshold_hu"] > 130
    assert reports[None]["threshold_hu"] == 130
    assert any("no SeriesInstanceUID" in w for w in reports["auto"]["warnings"])


@pytest.mark.parametrize("tag, value", [("ImagePositionPatient", None), ("ImageOrientationPatient", None),
                                        ("PixelSpacing", None), ("Rows", None)])
def test_missing_attribute_is_named_not_called_truncated(tmp_path, tag, value):
    files = write_small_series(tmp_path / "s", series_uid=None, sop_class=False)
    edit_dicom(files[2], **{tag: value})
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    msg = str(exc.value)
    assert files[2].name in msg and tag in msg and "truncated" not in msg and "\n" not in msg
    if tag == "ImagePositionPatient":
        assert f"DICOM file {files[2].name} lacks ImagePositionPatient" in msg


def test_missing_sop_class_and_series_uid_in_phantom_slices_still_load(tmp_path, phantom_files):
    files = _subset(phantom_files, tmp_path / "p", n=3)
    for f in files:
        edit_dicom(f, SOPClassUID=None, SeriesInstanceUID=None)
    ct = read_dicom_series(tmp_path / "p")
    assert ct.shape == (3, 512, 512) and any("no SeriesInstanceUID" in w for w in ct.warnings)


def test_really_truncated_files_are_called_truncated(tmp_path):
    files = write_small_series(tmp_path / "hdr")
    data = files[1].read_bytes()
    cut = data.index(b"\x28\x00\x30\x00DS") + 12  # inside the value of PixelSpacing
    files[1].write_bytes(data[:cut])
    with pytest.raises(InputError, match=rf"{files[1].name}.*truncated"):
        read_dicom_series(tmp_path / "hdr")
    files = write_small_series(tmp_path / "pix")
    files[3].write_bytes(files[3].read_bytes()[:-100])  # inside the pixel data
    with pytest.raises(InputError, match=rf"{files[3].name}.*PixelData.*truncated"):
        read_dicom_series(tmp_path / "pix")


def _set_vr(path: Path, element: bytes, vr: bytes = b"ZZ") -> None:
    """Overwrite the value representation of an explicit-VR element (tag bytes + VR)."""
    data = path.read_bytes()
    i = data.index(element)
    path.write_bytes(data[: i + 4] + vr + data[i + 6 :])


#: (tag bytes + VR as written, name in the message): file meta elements, which pydicom
#: reads at once (group length, transfer syntax), lazily, or misreads what follows
#: (FileMetaInformationVersion: OB has a 4-byte length); and a data set element in use.
_BAD_VR = [
    (b"\x02\x00\x02\x00UI", "file meta element MediaStorageSOPClassUID"),
    (b"\x02\x00\x10\x00UI", "file meta element TransferSyntaxUID"),
    (b"\x02\x00\x00\x00UL", "file meta element FileMetaInformationGroupLength"),
    (b"\x02\x00\x01\x00OB", "file meta element FileMetaInformationVersion"),
    (b"\x02\x00\x12\x00UI", "file meta element ImplementationClassUID"),
    (b"\x28\x00\x30\x00DS", "PixelSpacing"),
]


@pytest.mark.parametrize("element, name", _BAD_VR, ids=[n.split()[-1] for _, n in _BAD_VR])
def test_corrupt_value_representation_is_one_clean_error(tmp_path, capsys, element, name):
    files = write_small_series(tmp_path / "s", series_uid=None)
    _set_vr(files[1], element)
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    msg = str(exc.value)
    assert files[1].name in msg and name in msg and "'ZZ'" in msg
    assert "truncated" not in msg and "\n" not in msg
    # the same through the command line (AI path: the CT is read before any model): exit 2, one line
    code = cli_main(["score", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("ccdino: error:") and files[1].name in err
    assert "Traceback" not in err and "NotImplementedError" not in err


def test_a_copied_file_of_the_same_instance_is_read_once(tmp_path):
    """A folder holding a copy of one slice's file (the same SOPInstanceUID at the same
    position, e.g. exported twice) reads as the series, with a warning naming the copy; a
    different instance at the same position is still refused (several phases)."""
    from CoronaryCalciumDINOLib.io import load_ct

    src = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "jpeg-lossless-ct"
    folder = tmp_path / "series"
    folder.mkdir()
    for f in src.glob("*.dcm"):
        shutil.copy(f, folder / f.name)
    want = np.load(src / "hu.npy")
    shutil.copy(folder / "IM-0003.dcm", folder / "copy-of-3.dcm")
    ct = load_ct(str(folder))
    assert np.array_equal(np.asarray(ct.hu), want)
    assert any("copy-of-3.dcm = IM-0003.dcm" in w and "read once" in w for w in ct.warnings)
    ds = pydicom.dcmread(folder / "copy-of-3.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "copy-of-3.dcm")
    with pytest.raises(InputError, match="two slices at the same position"):
        load_ct(str(folder))


def test_a_dicomdir_reads_the_series_on_its_media(tmp_path):
    """Given the DICOMDIR of a CD-like folder (a media index, no image), the series it
    indexes is read from the folder, with a note; the same HU as the series itself."""
    from CoronaryCalciumDINOLib.io import load_ct

    src = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "jpeg-lossless-ct"
    fs = FileSet()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        fs.add(ds)
    fs.write(tmp_path / "media")
    ct = load_ct(str(tmp_path / "media" / "DICOMDIR"))
    assert np.array_equal(np.asarray(ct.hu), np.load(src / "hu.npy"))
    assert any("is a DICOMDIR" in w for w in ct.warnings)
    from CoronaryCalciumDINOLib.data.studies import study_name

    assert study_name(tmp_path / "media" / "DICOMDIR") == "media"  # outputs named after the media's folder


# --------------------------------------------------------------------------- enhanced (multi-frame) CT


def _enhanced_hu() -> np.ndarray:
    hu = np.full((5, 12, 14), -1000, np.int16)
    hu[1:3, 3:7, 5:9] = 400
    hu[3, 8:10, 2:5] = 180
    hu[4, 0, 0] = 60
    return hu


def test_enhanced_ct_reads_like_its_single_frames(tmp_path):
    """An Enhanced CT Image (one file, frames stored top down, position and rescale per
    frame, the rest shared) gives the volume its slices give as single-frame files: same HU,
    geometry, tube voltage and kernel; the frames are placed by their positions."""
    hu = _enhanced_hu()
    intercepts = [-1024.0, -1000.0, -1024.0, -1100.0, -1024.0]  # a rescale per frame
    path = write_enhanced_series(tmp_path / "enh" / "ct.dcm", hu, frame_order=[3, 0, 4, 2, 1], intercepts=intercepts)
    ct = read_dicom_series(tmp_path / "enh")
    np.testing.assert_array_equal(ct.hu, hu.astype(np.float32))
    assert ct.spacing == pytest.approx((3.0, 0.7, 0.6))
    assert ct.origin == pytest.approx((-5.0, -6.0, 40.0))
    np.testing.assert_allclose(ct.direction, np.eye(3))
    assert ct.kvp == 100 and ct.meta["kernel"] == "Br36" and ct.meta["slice_thickness"] == 3.0
    # slice k is frame frames[k] of the file: what a DICOM SEG of the result references
    assert ct.meta["frames"] == [2, 5, 4, 1, 3] and ct.meta["files"] == [str(path)] * 5 and ct.meta["n_files"] == 1
    assert any("RescaleSlope/RescaleIntercept differ between slices" in w for w in ct.warnings)
    infos = list_series(tmp_path / "enh")
    assert len(infos) == 1 and infos[0].slices == 5 and infos[0].slice_thickness == 3.0
    # the same slices as single-frame files read to the same volume
    write_small_series(tmp_path / "single", hu, kvp=100, pixel_spacing=(0.7, 0.6))
    classic = read_dicom_series(tmp_path / "single")
    np.testing.assert_array_equal(classic.hu, ct.hu)
    assert classic.origin == pytest.approx(ct.origin) and classic.spacing == pytest.approx(ct.spacing)


def test_enhanced_ct_scores_from_the_command_line(tmp_path, capsys):
    """``ccdino score --kvp auto`` on an enhanced CT with a label map scores what the same
    slices as single-frame files score (its tube voltage read from CT X-Ray Details)."""
    hu = _enhanced_hu()
    write_enhanced_series(tmp_path / "enh" / "ct.dcm", hu, kvp=100)
    write_small_series(tmp_path / "single", hu, kvp=100, pixel_spacing=(0.7, 0.6))
    labels = np.zeros(hu.shape, np.uint8)
    labels[1:3, 3:7, 5:9] = 2
    write_volume(labels, load_ct(tmp_path / "enh"), tmp_path / "labels.nrrd")
    scores = {}
    for name in ("enh", "single"):
        assert cli_main(["score", str(tmp_path / name), "--labels", str(tmp_path / "labels.nrrd"),
                         "--out", str(tmp_path / f"out-{name}"), "--kvp", "auto"]) == 0
        report = json.loads(next((tmp_path / f"out-{name}").glob("*.json")).read_text())
        scores[name] = (report["arteries"], report["total"], report["lesions"], report["threshold_hu"])
        assert report["kvp"] == 100
    assert scores["enh"] == scores["single"]
    arteries, total = scores["enh"][:2]
    assert arteries["LAD"]["agatston"] > 0 and total["agatston"] == arteries["LAD"]["agatston"]


def test_compressed_enhanced_ct_reads_the_same(tmp_path):
    """An enhanced CT stored RLE Lossless (its frames encoded one by one) reads to the HU of
    the uncompressed one."""
    from pydicom.uid import RLELossless

    hu = _enhanced_hu()
    plain = write_enhanced_series(tmp_path / "plain" / "ct.dcm", hu)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    (tmp_path / "rle").mkdir()
    ds.save_as(tmp_path / "rle" / "ct.dcm")
    assert pydicom.dcmread(tmp_path / "rle" / "ct.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "rle").hu, read_dicom_series(tmp_path / "plain").hu)


def test_enhanced_ct_frames_never_share_the_files_values(tmp_path):
    """Top-level ImagePositionPatient / RescaleIntercept beside per-frame ones (a producer
    writing both): each frame keeps its own; the file's values are not overwritten by the
    last frame's."""
    hu = _enhanced_hu()
    intercepts = [-1024.0, -1000.0, -1024.0, -1100.0, -1024.0]
    path = write_enhanced_series(tmp_path / "enh" / "ct.dcm", hu, intercepts=intercepts)
    edit_dicom(path, ImagePositionPatient=[-5.0, -6.0, 0.0], RescaleIntercept=-999, RescaleSlope=1)
    ct = read_dicom_series(tmp_path / "enh")
    np.testing.assert_array_equal(ct.hu, hu.astype(np.float32))
    assert ct.origin == pytest.approx((-5.0, -6.0, 40.0))
    assert float(pydicom.dcmread(path, stop_before_pixels=True).RescaleIntercept) == -999


def test_enhanced_ct_with_two_frames_at_one_position_is_refused(tmp_path):
    """Two frames at one position (two phases in one file) are not copies of one another:
    refused like two single-frame slices at one position, never silently dropped."""
    hu = _enhanced_hu()
    path = write_enhanced_series(tmp_path / "enh" / "ct.dcm", hu, frame_order=[0, 1, 2, 3, 4])
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence[0].ImagePositionPatient = [-5.0, -6.0, 43.0]
    ds.save_as(path)
    with pytest.raises(InputError, match="two slices at the same position .*ct.dcm frame 2, ct.dcm frame 5"):
        read_dicom_series(tmp_path / "enh")
    # a copy of the whole file is read once, with a warning
    write_enhanced_series(tmp_path / "twice" / "ct.dcm", hu)
    shutil.copy(tmp_path / "twice" / "ct.dcm", tmp_path / "twice" / "ct-copy.dcm")
    ct = read_dicom_series(tmp_path / "twice")
    assert ct.shape == hu.shape and any("repeat an instance already read" in w for w in ct.warnings)


def _frame_edit(path: Path, frame: int, keyword: str | None = None, **changes) -> None:
    ds = pydicom.dcmread(path)
    if keyword is None:
        for key, value in changes.items():
            setattr(ds, key, value)
    else:
        group = ds.PerFrameFunctionalGroupsSequence[frame]
        for element in list(group):
            item = element.value[0]
            if keyword in item:
                delattr(item, keyword)
    ds.save_as(path)


@pytest.mark.parametrize("edit, message", [
    (dict(frame=2, keyword="ImagePositionPatient"), "ct.dcm frame 3 lacks ImagePositionPatient"),
    (dict(frame=0, NumberOfFrames=0), "NumberOfFrames 0 in ct.dcm; an image has at least one frame"),
    (dict(frame=0, NumberOfFrames=4), "NumberOfFrames 4 but 5 items in PerFrameFunctionalGroupsSequence"),
])
def test_enhanced_ct_with_broken_frames_refused_naming_the_frame(tmp_path, edit, message):
    path = write_enhanced_series(tmp_path / "enh" / "ct.dcm", _enhanced_hu())
    _frame_edit(path, **edit)
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path / "enh")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_frames_without_functional_groups_refused(tmp_path):
    """NumberOfFrames above 1 in a single-frame CT (no per-frame functional groups) cannot
    be placed: one line naming the attribute."""
    files = write_small_series(tmp_path / "s")
    edit_dicom(files[1], NumberOfFrames=2)
    with pytest.raises(InputError, match="NumberOfFrames 2 in IM-0002.dcm without per-frame functional groups"):
        read_dicom_series(tmp_path / "s")
