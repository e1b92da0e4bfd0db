"""COCA reader: a tiny fake COCA tree in the dataset's own layout and XML format."""

from __future__ import annotations

import json
import plistlib
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.data.coca import (
    CocaROI,
    artery_of,
    convert_gated,
    convert_gated_patient,
    known_bad_reason,
    read_calcium_xml,
    read_nongated_scores,
    rois_to_labels,
)
from CoronaryCalciumDINOLib.data.studies import load_study
from CoronaryCalciumDINOLib.errors import InputError

pydicom = pytest.importorskip("pydicom")

NZ, N = 5, 64
DXY, DZ = 0.7, 3.0
OX, OY = -22.4, -30.0
TOP_Z = -50.0  # instance 1 is the most superior slice; instance n at TOP_Z - 3 (n - 1)


def slice_z(k: int) -> float:
    """z of array slice k (the reader sorts slices by increasing z: k = 0 is instance 5)."""
    return TOP_Z - DZ * (NZ - 1) + DZ * k


def rect(x0, x1, y0, y1):
    """Polygon (x = column, y = row) of a rectangle with half-integer corners."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# Each ROI: (ImageIndex, name, area, polygon px, slice whose z goes in Point_mm, z offset mm)
ROIS = [
    # slice 2: LAD (wide, flat rectangle: rows 20..23, cols 10..29)
    (2, "Left Anterior Descending Artery", 8.0, rect(9.5, 29.5, 19.5, 23.5), 2, 0.0),
    # slice 2: LCX (tall rectangle: rows 40..49, cols 40..44)
    (2, "Left Circumflex Artery", 4.0, rect(39.5, 44.5, 39.5, 49.5), 2, 0.0),
    # slice 2: two overlapping RCA ROIs (rows 50..54 x cols 5..9, rows 53..57 x cols 8..12)
    (2, "Right Coronary Artery", 3.0, rect(4.5, 9.5, 49.5, 54.5), 2, 0.0),
    (2, "  right coronary   ARTERY ", 3.0, rect(7.5, 12.5, 52.5, 57.5), 2, 0.0),
    # slice 0 (ImageIndex 0): LM, rows 10 x cols 30..31, z off by 0.9 mm (< half spacing)
    (0, "Left Coronary Artery", 1.0, rect(29.5, 31.5, 9.5, 10.5), 0, 0.9),
    # slice 3: Area 0 -> skipped although it covers dense pixels
    (3, "Left Anterior Descending Artery", 0.0, rect(49.5, 52.5, 49.5, 52.5), 3, 0.0),
    # slice 3: a small LCX (rows 10..11 x cols 10..11) listed before a larger LAD (rows 8..13 x
    # cols 8..15) that contains it: the smaller ROI keeps the shared pixels, whatever the order
    (3, "Left Circumflex Artery", 1.0, rect(9.5, 11.5, 9.5, 11.5), 3, 0.0),
    (3, "Left Anterior Descending Artery", 5.0, rect(7.5, 15.5, 7.5, 13.5), 3, 0.0),
    # slice 4: LAD rows 30..31 x cols 30..35; HU 129 in cols 30..32, 130 in cols 33..35
    (4, "Left Anterior Descending Artery", 2.0, rect(29.5, 35.5, 29.5, 31.5), 4, 0.0),
    # slice 1: unknown name -> skipped and reported
    (1, "Aorta", 2.0, rect(19.5, 22.5, 19.5, 22.5), 1, 0.0),
    # slice 1: ImageIndex says 3 but z is slice 1 -> slice 1 used, warning (rows 5..6 x cols 50..52)
    (3, "Left Circumflex Artery", 1.0, rect(49.5, 52.5, 4.5, 6.5), 1, 0.0),
    # z far from every slice -> skipped
    (2, "Right Coronary Artery", 1.0, rect(29.5, 31.5, 29.5, 31.5), 2, 40.0),
]


def expected_labels() -> np.ndarray:
    lab = np.zeros((NZ, N, N), np.uint8)
    lab[2, 20:24, 10:30] = 2
    lab[2, 40:50, 40:45] = 3
    lab[2, 50:55, 5:10] = 4
    lab[2, 53:58, 8:13] = 4
    lab[0, 10, 30:32] = 1
    lab[3, 8:14, 8:16] = 2
    lab[3, 10:12, 10:12] = 3  # the smaller ROI wins the shared pixels
    lab[4, 30:32, 33:36] = 2  # only HU >= 130
    lab[1, 5:7, 50:53] = 3
    return lab


def hu_volume() -> np.ndarray:
    """HU (array order, z increasing): 40 HU everywhere, dense where the lesions are."""
    hu = np.full((NZ, N, N), 40, np.int16)
    hu[expected_labels() > 0] = 400
    hu[3, 50:53, 50:53] = 600  # under the Area-0 ROI
    hu[4, 30:32, 30:33] = 129
    hu[1, 20:23, 20:23] = 500  # under the unknown-name ROI
    hu[2, 30:32, 30:32] = 500  # under the ROI whose z matches no slice
    return hu


def write_series(folder: Path, hu: np.ndarray, uid_seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=[f"series{uid_seed}"])
    study_uid = generate_uid(entropy_srcs=[f"study{uid_seed}"])
    for n in range(1, NZ + 1):
        k = NZ - n  # instance 1 = top slice = last array slice
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"{uid_seed}-{n}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.PatientID = f"coca{uid_seed}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = n
        ds.KVP = 120
        ds.SliceThickness = DZ
        ds.PixelSpacing = [DXY, DXY]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [OX, OY, slice_z(k)]
        ds.Rows, ds.Columns = N, N
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM-0001-{n:04d}.dcm", enforce_file_format=True)


def write_xml(path: Path, rois) -> None:
    images: dict[int, list] = {}
    for idx, name, area, poly, k, dzoff in rois:
        z = slice_z(k) + dzoff
        images.setdefault(idx, []).append(
            {
                "Name": name,
                "Area": area,
                "Center": f"({OX:.3f}, {OY:.3f}, {z:.3f})",
                "Min": 130.0,
                "Max": 400.0,
                "Mean": 250.0,
                "NumberOfPoints": len(poly),
                "Point_mm": [f"({OX + x * DXY:.4f}, {OY + y * DXY:.4f}, {z:.4f})" for x, y in poly],
                "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in poly],
            }
        )
    plist = {"Images": [{"ImageIndex": i, "NumberOfROIs": len(r), "ROIs": r} for i, r in sorted(images.items())]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        plistlib.dump(plist, fh)


@pytest.fixture(scope="module")
def coca_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coca")
    gated = root / "Gated_release_final"
    hu = hu_volume()
    write_series(gated / "patient" / "7" / "Series_1", hu, 7)
    write_xml(gated / "calcium_xml" / "7.xml", ROIS)
    write_series(gated / "patient" / "238" / "Series_1", hu, 238)  # a known bad case
    write_xml(gated / "calcium_xml" / "238.xml", ROIS[:1])
    (gated / "patient" / "15" / "empty").mkdir(parents=True)  # no images
    write_xml(gated / "calcium_xml" / "15.xml", ROIS[:1])
    write_series(gated / "patient" / "21" / "S", hu, 21)  # no XML
    ng = root / "deidentified_nongated"
    (ng / "0" / "0").mkdir(parents=True)
    (ng / "scores.csv").write_text(",LCA,LAD,LCX,RCA,total\n0A,10.5,0,3,0,13.5\n12A,0,0,0,0,0\n", encoding="utf-8")
    return root


def test_name_mapping_and_known_bad():
    assert artery_of("Left Circumflex Artery") == "LCX"  # not LM
    assert artery_of("left CIRCUMFLEX  artery ") == "LCX"
    assert artery_of("Left Coronary Artery") == "LM"
    assert artery_of("Left Anterior Descending Artery") == "LAD"
    assert artery_of("Right Coronary Artery") == "RCA"
    assert artery_of("Aorta") is None
    assert "mislabelled" in known_bad_reason("238") and "no images" in known_bad_reason("012")
    assert "invalid DICOM" in known_bad_reason("159") and known_bad_reason("7") is None


def test_read_xml(coca_root):
    rois, warnings = read_calcium_xml(coca_root / "Gated_release_final" / "calcium_xml" / "7.xml")
    assert len(rois) == len(ROIS) and warnings == []
    lad = next(r for r in rois if r.name.startswith("Left Anterior") and r.area == 8.0)
    assert lad.image_index == 2
    np.testing.assert_allclose(lad.points_px, rect(9.5, 29.5, 19.5, 23.5))
    np.testing.assert_allclose(lad.points_mm[:, 2], slice_z(2))
    np.testing.assert_allclose(lad.points_mm[0, :2], [OX + 9.5 * DXY, OY + 19.5 * DXY], atol=1e-4)
    with pytest.raises(InputError):
        read_calcium_xml(coca_root / "missing.xml")


def test_convert_patient_labels_exact(coca_root, tmp_path):
    r = convert_gated_patient(coca_root, "7", tmp_path)
    assert r.status == "converted", r.reason
    st = load_study(tmp_path / "coca-7")
    assert st.meta["source"] == "coca" and st.meta["patient"] == "7"
    np.testing.assert_array_equal(st.ct.hu, hu_volume().astype(np.float32))
    exp = expected_labels()
    for k in range(NZ):
        np.testing.assert_array_equal(st.labels[k], exp[k], err_msg=f"slice {k}")
    text = " | ".join(r.warnings)
    assert "area 0 <= 0" in text
    assert "unknown ROI name 'Aorta'" in text
    assert "ImageIndex names slice 3 but z matches slice 1" in text
    assert "matches no slice" in text
    assert "4 pixel(s) claimed by two arteries" in text
    assert st.meta["coca"]["rois_used"] == 9 and st.meta["coca"]["rois_skipped"] == 3
    assert st.meta["coca"]["image_index_mismatches"] == 1
    # slice 0's LM lesion is 2 px x 0.49 mm^2 = 0.98 mm^2 < 1 mm^2: labelled, but not a kept lesion
    assert sorted(st.meta["slices_with_calcium"]) == [1, 2, 3, 4]
    # an existing study is kept
    assert convert_gated_patient(coca_root, "7", tmp_path).status == "exists"


def test_px_mm_disagreement_is_reported():
    # Point_mm built with x and y exchanged: the in-plane cross-check must notice.
    poly = np.array(rect(9.5, 29.5, 19.5, 23.5))
    mm = np.column_stack([OX + poly[:, 1] * DXY, OY + poly[:, 0] * DXY, np.full(4, slice_z(2))])
    roi = CocaROI(2, "Left Anterior Descending Artery", 8.0, mm, poly)
    origin = (OX, OY, slice_z(0))
    res = rois_to_labels([roi], hu_volume().astype(np.float32), origin, np.eye(3), (DZ, DXY, DXY), {2: 2})
    assert res.used == 1 and any("Point_px and Point_mm disagree" in w for w in res.warnings)
    good = CocaROI(2, "Left Anterior Descending Artery", 8.0,
                   np.column_stack([OX + poly[:, 0] * DXY, OY + poly[:, 1] * DXY, np.full(4, slice_z(2))]), poly)
    res = rois_to_labels([good], hu_volume().astype(np.float32), origin, np.eye(3), (DZ, DXY, DXY), {2: 2})
    assert res.warnings == [] and int((res.labels == 2).sum()) == 80


def test_convert_without_hu_rule(coca_root, tmp_path):
    r = convert_gated_patient(coca_root, "7", tmp_path, min_hu=None)
    assert r.status == "converted"
    lab = load_study(tmp_path / "coca-7").labels
    np.testing.assert_array_equal(lab[4, 30:32, 30:36], np.full((2, 6), 2))


def test_known_bad_and_bad_patients(coca_root, tmp_path):
    log = tmp_path / "log.jsonl"
    res = {r.patient: r for r in convert_gated(coca_root, tmp_path / "out", log_path=log)}
    assert [*res] == ["7", "15", "21", "238"]  # numeric order
    assert res["238"].status == "skipped" and "mislabelled" in res["238"].reason
    assert res["15"].status == "skipped" and res["15"].reason == "no DICOM images"
    assert res["21"].status == "skipped" and res["21"].reason == "no calcium XML"
    assert res["7"].status == "converted"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["patient"] for x in lines] == ["7", "15", "21", "238"]
    assert {"patient", "status", "reason", "warnings"} <= set(lines[0])
    r = convert_gated_patient(coca_root, "238", tmp_path / "out", include_known_bad=True)
    assert r.status == "converted" and any("mislabelled" in w for w in r.warnings)
    r = convert_gated_patient(coca_root, "21", tmp_path / "out", missing_xml_as_empty=True)
    assert r.status == "converted" and int(load_study(tmp_path / "out" / "coca-21").labels.sum()) == 0


def test_nongated_scores(coca_root, tmp_path):
    s = read_nongated_scores(coca_root)
    assert s["0A"] == {"patient": "0", "LM": 10.5, "LAD": 0.0, "LCX": 3.0, "RCA": 0.0, "total": 13.5}
    assert s["12A"]["patient"] == "12"
    p = tmp_path / "scores.csv"
    p.write_text("Filename, Total , lad\n007A,5,\n", encoding="utf-8")
    assert read_nongated_scores(p) == {"007A": {"patient": "7", "total": 5.0, "LAD": None}}
    p.write_text("pid,foo\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="no recognised score column"):
        read_nongated_scores(p)
    x = tmp_path / "scores.xlsx"
    x.write_bytes(b"PK")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="openpyxl"):
            read_nongated_scores(x)


def test_cli(coca_root, tmp_path):
    from CoronaryCalciumDINOLib.cli import main

    out = tmp_path / "studies"
    assert main(["coca", str(coca_root), "--out", str(out), "--limit", "2", "--nongated-scores"]) == 0
    lines = [json.loads(x) for x in (out / "coca_conversion.jsonl").read_text().splitlines()]
    assert [(x["patient"], x["status"]) for x in lines] == [("7", "converted"), ("15", "skipped")]
    assert (out / "coca-7" / "study.json").is_file()
    ng = json.loads((out / "coca_nongated_scores.json").read_text())
    assert ng["scores"]["0A"]["LM"] == 10.5
    assert main(["coca", str(tmp_path), "--out", str(out)]) == 2  # not a COCA folder


def _write_xlsx(path: Path, rows) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(list(row))
    wb.save(path)
    return path


# COCA's scores.xlsx layout (made-up values): an id column named "filename " (with a trailing
# space), per-artery columns where LCA is the left main, then the total; ids like "1A".
XLSX_ROWS = [
    ("filename ", "LCA", "LAD", "LCX", "RCA", "total"),
    ("1A", 0, 0, 0, 0, 0),
    ("2A", 12, 30.5, 0, 7.25, 49.75),
    ("3A", 0, 101, 3, None, 104),
    (4, 1.5, 0, 0, 0, 1.5),  # an id that Excel stored as a number
    (None, None, None, None, None, None),  # an empty row
]


def test_nongated_scores_from_xlsx(tmp_path):
    x = _write_xlsx(tmp_path / "scores.xlsx", XLSX_ROWS)
    s = read_nongated_scores(x)
    assert set(s) == {"1A", "2A", "3A", "4"}
    assert s["1A"] == {"patient": "1", "LM": 0.0, "LAD": 0.0, "LCX": 0.0, "RCA": 0.0, "total": 0.0}
    assert s["2A"] == {"patient": "2", "LM": 12.0, "LAD": 30.5, "LCX": 0.0, "RCA": 7.25, "total": 49.75}
    assert s["3A"]["RCA"] is None and s["3A"]["LAD"] == 101.0
    assert s["4"]["patient"] == "4" and s["4"]["LM"] == 1.5
    # found in a COCA root (deidentified_nongated/scores.xlsx) when there is no CSV
    root = tmp_path / "root"
    (root / "deidentified_nongated" / "1").mkdir(parents=True)
    x.rename(root / "deidentified_nongated" / "scores.xlsx")
    assert read_nongated_scores(root) == s
    # a non-number in a score cell names the line and the column
    bad = _write_xlsx(tmp_path / "bad.xlsx", [XLSX_ROWS[0], ("5A", 0, "n/a", 0, 0, 0)])
    with pytest.raises(InputError, match=r"line 2: LAD is not a number"):
        read_nongated_scores(bad)


def test_damaged_xlsx_is_one_line_error(tmp_path):
    pytest.importorskip("openpyxl")
    x = tmp_path / "scores.xlsx"
    x.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(InputError, match="scores.xlsx") as exc:
        read_nongated_scores(x)
    assert "\n" not in str(exc.value)


def test_cli_nongated_scores_from_xlsx(tmp_path):
    from CoronaryCalciumDINOLib.cli import main

    root = tmp_path / "coca"
    (root / "Gated_release_final" / "patient").mkdir(parents=True)
    (root / "deidentified_nongated").mkdir()
    _write_xlsx(root / "deidentified_nongated" / "scores.xlsx", XLSX_ROWS)
    out = tmp_path / "out"
    assert main(["coca", str(root), "--out", str(out), "--nongated-scores"]) == 0
    ng = json.loads((out / "coca_nongated_scores.json").read_text())
    assert ng["scores"]["2A"]["LM"] == 12.0 and ng["scores"]["2A"]["total"] == 49.75


def test_cli_nongated_scores_without_a_gated_folder(tmp_path, capsys):
    """A COCA copy holding only the non-gated folder (e.g. the public sample): its scores
    are read with --nongated-scores; without it the command says what to use."""
    from CoronaryCalciumDINOLib.cli import main

    root = tmp_path / "coca"
    (root / "deidentified_nongated").mkdir(parents=True)
    _write_xlsx(root / "deidentified_nongated" / "scores.xlsx", XLSX_ROWS)
    out = tmp_path / "out"
    assert main(["coca", str(root), "--out", str(out), "--nongated-scores"]) == 0
    assert json.loads((out / "coca_nongated_scores.json").read_text())["scores"]["3A"]["LAD"] == 101.0
    assert "gated" not in capsys.readouterr().out.split("non-gated")[0].lower()
    assert main(["coca", str(root), "--out", str(tmp_path / "out2")]) == 2
    assert "use --nongated-scores" in capsys.readouterr().err


def test_convert_patient_without_series_uid(tmp_path):
    """De-identified COCA-like scans may lack SeriesInstanceUID: the series is found by
    folder and geometry, and the conversion says so."""
    from shared_data import edit_dicom

    root = tmp_path / "coca"
    folder = root / "Gated_release_final" / "patient" / "9" / "S"
    write_series(folder, hu_volume(), 9)
    for f in folder.iterdir():
        edit_dicom(f, SeriesInstanceUID=None)
    write_xml(root / "Gated_release_final" / "calcium_xml" / "9.xml", ROIS)
    r = convert_gated_patient(root, "9", tmp_path / "out")
    assert r.status == "converted", r.reason
    st = load_study(tmp_path / "out" / "coca-9")
    assert st.meta["series_uid"].startswith("no-uid:S:")
    np.testing.assert_array_equal(st.labels, expected_labels())
    assert any("no SeriesInstanceUID" in w for w in r.warnings)
