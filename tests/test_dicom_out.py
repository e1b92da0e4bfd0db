"""DICOM results (SEG + SR, issue 19): written for the real phantom series and a synthetic
study written as DICOM, checked by the DICOM validator ``dciodvfy`` (dicom3tools), read back
by independent readers (pydicom for the structure, highdicom's per-source-instance pixels
for the voxels), rescored, and refused for what they cannot be made of.

Expected values come from the label maps the tests build and from ``scoring.score`` on them,
never from the writer's own output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

hd = pytest.importorskip("highdicom")

from CoronaryCalciumDINOLib.cli import main as cli_main  # noqa: E402
from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_TO_LABEL, DISCLAIMER  # noqa: E402
from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from CoronaryCalciumDINOLib.io import load_ct, write_volume  # noqa: E402
from CoronaryCalciumDINOLib.io.dicom_seg import (  # noqa: E402
    ARTERY_CODES,
    ct_index_affine,
    labels_on_source,
    place_on_grid,
    read_dicom_seg_labels,
)
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.report import build_report  # noqa: E402
from CoronaryCalciumDINOLib.report.dicom import write_dicom_results  # noqa: E402
from CoronaryCalciumDINOLib.requirements import DICOM_OUT_INSTALL_HINT  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams, score  # noqa: E402

from shared_data import PHANTOM, save_dicom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DCIODVFY = shutil.which("dciodvfy")


# --------------------------------------------------------------------------- data


def quadrant_labels(ct: CTVolume, slices: slice) -> np.ndarray:
    """Every voxel >= 130 HU of ``slices``, assigned to an artery by image quadrant."""
    _, y, x = ct.shape
    quadrant = np.zeros((y, x), dtype=np.uint8)
    quadrant[: y // 2, : x // 2] = ARTERY_TO_LABEL["LM"]
    quadrant[: y // 2, x // 2:] = ARTERY_TO_LABEL["LAD"]
    quadrant[y // 2:, : x // 2] = ARTERY_TO_LABEL["LCX"]
    quadrant[y // 2:, x // 2:] = ARTERY_TO_LABEL["RCA"]
    labels = np.zeros(ct.shape, np.uint8)
    labels[slices] = np.where(ct.hu[slices] >= 130, quadrant[None], 0)
    return labels


def write_ct_series(folder: Path, ct: CTVolume, *, patient: str = "Synthetic^Study", seed: str = "s") -> list[Path]:
    """``ct`` as a single-frame CT series with the patient, study and equipment attributes a
    scanner writes (int16 with rescale); files named in reverse slice order, as many PACS do."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = (generate_uid(entropy_srcs=[seed, k]) for k in ("study", "series", "frame"))
    d = np.asarray(ct.direction, float)
    dz, dy, dx = ct.spacing
    files = []
    for k in range(ct.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate, ds.SeriesDate, ds.StudyTime, ds.SeriesTime = "20240102", "20240102", "101500", "101600"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "A123", "CT", "Synthetic"
        ds.ReferringPhysicianName = ""
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, "SYN-1", "19600101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 3, ct.shape[0] - k
        ds.PositionReferenceIndicator = ""
        ds.KVP, ds.SliceThickness = 120, dz
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ct.origin) + d[:, 2] * dz * k]
        ds.ImageOrientationPatient = [float(v) for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = ct.shape[1], ct.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.rint(ct.hu[k]).astype("<i2").tobytes()
        path = folder / f"IM{ct.shape[0] - k:04d}.dcm"
        save_dicom(ds, path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def phantom():
    ct = load_ct(PHANTOM)
    return PHANTOM, ct, quadrant_labels(ct, slice(15, 33))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic patient (calcium in all four arteries) written as a DICOM series."""
    from CoronaryCalciumDINOLib.synth import generate_study

    study = generate_study(8, plaques=True, matrix=256)
    folder = tmp_path_factory.mktemp("synthetic") / "synth-8"
    write_ct_series(folder, study.ct)
    ct = load_ct(folder)
    np.testing.assert_array_equal(ct.hu, np.rint(study.ct.hu))  # the series is the study
    assert ct.same_grid(study.ct)
    labels = study.labels.astype(np.uint8)
    assert [a for a in ARTERIES if np.any(labels == ARTERY_TO_LABEL[a])] == list(ARTERIES)
    return folder, ct, labels


@pytest.fixture(scope="module", params=["phantom", "synthetic"])
def scored(request, tmp_path_factory):
    """``ccdino score DICOM --labels L --dicom-out out --json r.json`` of one dataset."""
    folder, ct, labels = request.getfixturevalue(request.param)
    work = tmp_path_factory.mktemp(f"scored-{request.param}")
    write_volume(labels, ct, work / "labels.nrrd")
    code = cli_main(["score", str(folder), "--labels", str(work / "labels.nrrd"), "--dicom-out", str(work / "dicom"),
                     "--json", str(work / "r.json"), "--quiet"])
    assert code == 0
    stem = folder.name
    return {"folder": folder, "ct": ct, "labels": labels, "work": work,
            "seg": work / "dicom" / f"{stem}.seg.dcm", "sr": work / "dicom" / f"{stem}.sr.dcm",
            "report": json.loads((work / "r.json").read_text())}


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of the DICOM validator on one file."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def content_items(ds):
    """Every SR content item of ``ds`` (depth first)."""
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from content_items(item)


def concept(item) -> tuple[str, str]:
    c = item.ConceptNameCodeSequence[0]
    return str(c.CodingSchemeDesignator), str(c.CodeValue)


# --------------------------------------------------------------------------- the CT keeps its files


def test_dicom_ct_keeps_its_files_in_slice_order(phantom):
    _, ct, _ = phantom
    files = ct.meta["files"]
    assert len(files) == ct.shape[0] == 47
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    np.testing.assert_allclose(np.diff(z), ct.spacing[0], atol=1e-3)
    assert z[0] == pytest.approx(ct.origin[2])
    assert ct.meta["frame_of_reference_uid"] == str(pydicom.dcmread(files[0], stop_before_pixels=True).FrameOfReferenceUID)


# --------------------------------------------------------------------------- validator


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_seg_and_sr_pass_the_dicom_validator(scored):
    for path in (scored["seg"], scored["sr"]):
        errors, warnings = dciodvfy(path)
        print(f"dciodvfy {path.name}: {len(errors)} errors, {len(warnings)} warnings", *warnings, sep="\n  ")
        assert not errors, f"{path.name}: {errors}"


# --------------------------------------------------------------------------- independent read-back


def test_seg_structure_and_voxels_read_back_exactly(scored):
    ct, labels = scored["ct"], scored["labels"]
    seg = pydicom.dcmread(scored["seg"])
    first = pydicom.dcmread(ct.meta["files"][0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    for key in ("FrameOfReferenceUID", "StudyInstanceUID", "PatientID"):
        assert seg[key].value == first[key].value, key
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct.meta["files"]]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(uids) and referenced

    present = [a for a in ARTERIES if np.any(labels == ARTERY_TO_LABEL[a])]
    segments = list(seg.SegmentSequence)
    assert [str(s.SegmentLabel) for s in segments] == present
    for s in segments:
        artery = str(s.SegmentLabel)
        region = s.AnatomicRegionSequence[0]
        assert (region.CodingSchemeDesignator, region.CodeValue) == ARTERY_CODES[artery][:2]
        assert (s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
                s.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("49755003", "29483008")

    # voxels: highdicom's frames per source instance, not the project's reader
    back = np.zeros(ct.shape, np.uint8)
    parsed = hd.seg.Segmentation.from_dataset(seg)
    numbers = [int(s.SegmentNumber) for s in segments]
    pixels = parsed.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, ignore_spatial_locations=True)
    for i, artery in enumerate(present):
        back[pixels[..., i] > 0] = ARTERY_TO_LABEL[artery]
    np.testing.assert_array_equal(back, labels)
    # and the project's reader (get_volume, placed on the CT grid) agrees
    np.testing.assert_array_equal(read_dicom_seg_labels(scored["seg"], ct), labels)


def test_sr_holds_the_report(scored):
    report = scored["report"]
    sr = pydicom.dcmread(scored["sr"])
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == pydicom.dcmread(scored["ct"].meta["files"][0], stop_before_pixels=True).StudyInstanceUID
    groups = [i for i in content_items(sr) if concept(i) == ("DCM", "125007")]
    assert len(groups) == 5
    by_site = {}
    for g in groups:
        items = list(content_items(g))
        site = next(i.ConceptCodeSequence[0].CodeValue for i in items if concept(i) == ("SCT", "363698007"))
        nums = {concept(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
        texts = {concept(i): str(i.TextValue) for i in items if i.ValueType == "TEXT"}
        by_site[site] = (nums, texts, g)
    for artery in ARTERIES:
        nums, texts, group = by_site[ARTERY_CODES[artery][1]]
        expected = report["arteries"][artery]
        assert nums[("DCM", "112058")] == pytest.approx(expected["agatston"], rel=1e-12, abs=1e-9)
        assert nums[("DCM", "122660")] == pytest.approx(expected["volume_mm3"], rel=1e-12, abs=1e-9)
        assert nums[("SCT", "246206008")] == expected["lesions"]
        assert ("DCM", "122661") not in nums  # no calibration factor: no mass
        has_segment = expected["lesions"] > 0
        assert any(i.ValueType == "IMAGE" and concept(i) == ("DCM", "121191") for i in content_items(group)) \
            == has_segment  # (DCM 121191 "Referenced Segment") to the artery's SEG segment
    nums, texts, _ = by_site["41801008"]  # all coronary arteries
    assert nums[("DCM", "112058")] == pytest.approx(report["total"]["agatston"], rel=1e-12, abs=1e-9)
    assert nums[("DCM", "122657")] == report["threshold_hu"] == 130.0
    assert nums[("DCM", "113733")] == report["kvp"] == 120.0
    assert texts[("99CCDINO", "RISKCAT")] == report["risk_category"]
    assert texts[("99CCDINO", "CACDRS")] == report["cac_drs"]
    comments = [str(i.TextValue) for i in content_items(sr) if concept(i) == ("DCM", "121106")]
    assert report["disclaimer"] in comments
    names = {str(i.TextValue) for i in content_items(sr) if concept(i) == ("DCM", "111001")}
    params = {str(i.TextValue) for i in content_items(sr) if concept(i) == ("DCM", "111002")}
    assert names == {"CoronaryCalciumDINO scoring"}  # a given label map: the scoring software
    assert "threshold 130 HU" in params and "kVp 120" in params


def test_sr_holds_the_review_flags_and_passes_the_validator(phantom, tmp_path):
    """The report's review flags (when the study needs a human look) go to PACS too: one
    text item each, in the report's order."""
    from CoronaryCalciumDINOLib.io.dicom_seg import complete_headers, read_source_headers
    from CoronaryCalciumDINOLib.report.dicom import build_sr

    folder, ct, labels = phantom
    report = build_report(score(ct.hu, labels, ct.spacing, ScoringParams()), str(folder))
    report["review_flags"] = [{"flag": "noise", "message": "heavy image noise (about 41 HU SD)"},
                              {"flag": "metal", "message": "metal in the heart region (3.1 mm^3 above 2500 HU)"}]
    files = ct.meta["files"]
    sr = build_sr(report, complete_headers(read_source_headers(files), files))
    texts = [str(i.TextValue) for i in content_items(sr) if concept(i) == ("99CCDINO", "REVIEW")]
    assert texts == [f["message"] for f in report["review_flags"]]
    if DCIODVFY:
        sr.save_as(str(tmp_path / "flags.sr.dcm"), enforce_file_format=True)
        errors, _ = dciodvfy(tmp_path / "flags.sr.dcm")
        assert errors == []


def test_rescoring_our_seg_gives_the_original_scores(scored, tmp_path):
    code = cli_main(["score", str(scored["folder"]), "--labels", str(scored["seg"]), "--json", str(tmp_path / "b.json"),
                     "--quiet"])
    assert code == 0
    again, first = json.loads((tmp_path / "b.json").read_text()), scored["report"]
    for key in ("arteries", "total", "lesions", "risk_category", "cac_drs"):
        assert again[key] == first[key], key


# --------------------------------------------------------------------------- the model's identity


def test_model_identity_reaches_seg_and_sr(phantom, tmp_path):
    _, ct, labels = phantom
    model = {"name": "ccdino-default", "version": "0.5.0", "sha256": "ab" * 32, "trained_on": "synthetic"}
    report = build_report(score(ct.hu, labels, ct.spacing, ScoringParams()), str(PHANTOM), kvp=ct.kvp, model=model)
    assert report["disclaimer"] == DISCLAIMER
    out = write_dicom_results(labels, ct, report, tmp_path / "a.seg.dcm", tmp_path / "a.sr.dcm")
    seg = pydicom.dcmread(out.seg)
    for s in seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert (s.SegmentAlgorithmName, s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion) == ("ccdino-default",
                                                                                                     "0.5.0")
    sr = pydicom.dcmread(out.sr)
    texts = {(concept(i), str(i.TextValue)) for i in content_items(sr) if i.ValueType == "TEXT"}
    assert (("DCM", "111001"), "ccdino-default") in texts and (("DCM", "111003"), "0.5.0") in texts
    assert (("DCM", "111002"), f"model sha256 {'ab' * 32}") in texts
    assert (("DCM", "121106"), DISCLAIMER) in texts


# --------------------------------------------------------------------------- no calcium


def test_no_calcium_gives_an_sr_without_seg(phantom, tmp_path, capsys):
    _, ct, _ = phantom
    write_volume(np.zeros(ct.shape, np.uint8), ct, tmp_path / "none.nrrd")
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f"{PHANTOM.name}.seg.dcm"
    stale.write_bytes(b"old")
    code = cli_main(["score", str(PHANTOM), "--labels", str(tmp_path / "none.nrrd"), "--dicom-out",
                     str(tmp_path / "out"), "--quiet", "--overwrite"])
    assert code == 0
    assert "no DICOM SEG written" in capsys.readouterr().err
    assert not stale.exists()  # an old SEG never stands beside an SR it does not match
    sr = pydicom.dcmread(tmp_path / "out" / f"{PHANTOM.name}.sr.dcm")
    scores = [float(i.MeasuredValueSequence[0].NumericValue) for i in content_items(sr)
              if i.ValueType == "NUM" and concept(i) == ("DCM", "112058")]
    assert scores == [0.0] * 5
    if DCIODVFY:
        errors, _ = dciodvfy(tmp_path / "out" / f"{PHANTOM.name}.sr.dcm")
        assert not errors


# --------------------------------------------------------------------------- refusals


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ccdino: error:"), err
    assert "Traceback" not in err
    return err


def test_non_dicom_input_is_refused(phantom, tmp_path, capsys):
    _, ct, labels = phantom
    write_volume(ct.hu, ct, tmp_path / "ct.nrrd")
    write_volume(labels, ct, tmp_path / "labels.nrrd")
    code = cli_main(["score", str(tmp_path / "ct.nrrd"), "--labels", str(tmp_path / "labels.nrrd"), "--dicom-out",
                     str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "--dicom-out needs a DICOM CT" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    code = cli_main(["score", str(PHANTOM), "--labels", str(tmp_path / "labels.nrrd"), "--dicom-seg", "a.dcm"])
    assert code == 2 and "--dicom-sr" in _one_error_line(capsys)


def test_existing_results_are_kept_without_overwrite(scored, capsys):
    before = scored["sr"].read_bytes()
    code = cli_main(["score", str(scored["folder"]), "--labels", str(scored["work"] / "labels.nrrd"), "--dicom-out",
                     str(scored["seg"].parent), "--quiet"])
    assert code == 2 and "use --overwrite" in _one_error_line(capsys)
    assert scored["sr"].read_bytes() == before


def test_missing_highdicom_is_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys\nsys.modules['highdicom'] = None\n"
        f"sys.path.insert(0, {str(ROOT / 'CoronaryCalciumDINO')!r})\n"
        "from CoronaryCalciumDINOLib.cli import main\n"
        f"sys.exit(main(['score', {str(PHANTOM)!r}, '--labels', 'x.nrrd', '--dicom-out', 'out', '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ccdino: error: DICOM SEG / SR needs highdicom, which is not "
                                                f"installed: {DICOM_OUT_INSTALL_HINT}"]
    assert not (tmp_path / "out").exists()


def test_de_identified_series_gets_empty_patient_attributes_or_one_line(tmp_path, capsys):
    """A series without patient / study attributes (Type 2 in SEG and SR) gets them empty; one
    without a frame of reference (Type 1: the SEG must share it) is refused in one line."""
    from shared_data import edit_dicom, write_small_series

    files = write_small_series(tmp_path / "deid")
    ct = load_ct(tmp_path / "deid")
    write_volume((ct.hu >= 130).astype(np.uint8) * ARTERY_TO_LABEL["LCX"], ct, tmp_path / "labels.nrrd")
    argv = ["score", str(tmp_path / "deid"), "--labels", str(tmp_path / "labels.nrrd"), "--dicom-out",
            str(tmp_path / "out"), "--quiet"]
    assert "PatientID" not in pydicom.dcmread(files[0]) and "FrameOfReferenceUID" not in pydicom.dcmread(files[0])
    assert cli_main(argv) == 2
    assert "IM-0001.dcm has no FrameOfReferenceUID" in _one_error_line(capsys)
    assert not (tmp_path / "out" / "deid.seg.dcm").exists()
    for f in files:
        edit_dicom(f, FrameOfReferenceUID="1.2.826.0.1.3680043.8.498.77")
    assert cli_main(argv) == 0
    seg = pydicom.dcmread(tmp_path / "out" / "deid.seg.dcm")
    assert seg.PatientID == "" and seg.FrameOfReferenceUID == "1.2.826.0.1.3680043.8.498.77"
    np.testing.assert_array_equal(read_dicom_seg_labels(tmp_path / "out" / "deid.seg.dcm", ct),
                                  (ct.hu >= 130).astype(np.uint8) * ARTERY_TO_LABEL["LCX"])
    if DCIODVFY:
        for name in ("deid.seg.dcm", "deid.sr.dcm"):
            assert not dciodvfy(tmp_path / "out" / name)[0]


# --------------------------------------------------------------------------- SEGs from elsewhere


def _edited(src: Path, dest: Path, edit) -> Path:
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def test_seg_from_another_workstation_is_matched_by_codes_or_labels(phantom, tmp_path):
    _, ct, labels = phantom
    report = build_report(score(ct.hu, labels, ct.spacing, ScoringParams()), str(PHANTOM))
    ours = write_dicom_results(labels, ct, report, tmp_path / "a.seg.dcm", tmp_path / "a.sr.dcm").seg

    def by_label(ds):  # no anatomic codes; labels in words; the artery as the property type
        for s in ds.SegmentSequence:
            del s.AnatomicRegionSequence
            s.SegmentLabel = {"LM": "Left main calcium", "LAD": "lad", "LCX": "Circumflex", "RCA": "RCA plaque"}[
                str(s.SegmentLabel)]

    def by_type(ds):
        for s in ds.SegmentSequence:
            artery = ARTERIES[int(s.SegmentNumber) - 1]
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue = ARTERY_CODES[artery][1]
            del s.AnatomicRegionSequence
            s.SegmentLabel = f"Segment_{int(s.SegmentNumber)}"

    for edit in (by_label, by_type):
        path = _edited(ours, tmp_path / f"{edit.__name__}.dcm", edit)
        np.testing.assert_array_equal(read_dicom_seg_labels(path, ct), labels)

    def unknown(ds):
        del ds.SegmentSequence[1].AnatomicRegionSequence
        ds.SegmentSequence[1].SegmentLabel = "Aortic valve"

    with pytest.raises(InputError, match=r"segment 2 \('Aortic valve'\) names no artery"):
        read_dicom_seg_labels(_edited(ours, tmp_path / "unknown.dcm", unknown), ct)


def test_seg_of_another_scan_or_grid_is_refused_in_one_line(phantom, synthetic, scored, tmp_path, capsys):
    _, ct, _ = phantom
    seg = scored["seg"]
    other = synthetic[0] if scored["folder"] == PHANTOM else PHANTOM
    code = cli_main(["score", str(other), "--labels", str(seg), "--quiet"])
    assert code == 2 and "another frame of reference" in _one_error_line(capsys)

    target = scored["ct"]
    half = CTVolume(hu=target.hu, spacing=target.spacing,
                    origin=tuple(np.asarray(target.origin) + [target.spacing[2] / 2, 0, 0]), direction=target.direction)
    write_volume(target.hu, half, tmp_path / "shifted.nrrd")  # a volume file has no frame of reference: geometry
    code = cli_main(["score", str(tmp_path / "shifted.nrrd"), "--labels", str(seg), "--quiet"])
    assert code == 2 and "shifted off the CT's voxel grid" in _one_error_line(capsys)
    cropped = CTVolume(hu=target.hu[:10], spacing=target.spacing, origin=target.origin, direction=target.direction)
    write_volume(cropped.hu, cropped, tmp_path / "cropped.nrrd")
    labelled = np.flatnonzero(scored["labels"].any(axis=(1, 2)))
    code = cli_main(["score", str(tmp_path / "cropped.nrrd"), "--labels", str(seg), "--quiet"])
    assert labelled.max() >= 10 and code == 2 and "extends beyond the CT volume" in _one_error_line(capsys)
    coarse = CTVolume(hu=target.hu[:, ::2, ::2], spacing=(target.spacing[0], target.spacing[1] * 2,
                                                          target.spacing[2] * 2), origin=target.origin,
                      direction=target.direction)
    write_volume(coarse.hu, coarse, tmp_path / "coarse.nrrd")
    code = cli_main(["score", str(tmp_path / "coarse.nrrd"), "--labels", str(seg), "--quiet"])
    assert code == 2 and "not on the CT's voxel grid" in _one_error_line(capsys)


# --------------------------------------------------------------------------- grids


def test_place_on_grid_follows_reversed_and_swapped_axes():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 5, (4, 5, 6)).astype(np.uint8)
    ct = CTVolume(hu=np.zeros((7, 8, 9), np.float32), spacing=(3.0, 0.5, 0.6), origin=(10.0, -20.0, 5.0))
    target = ct_index_affine(ct)
    # arr placed at CT voxels [2:6, 1:6, 3:9] with its slice axis reversed
    src = target @ np.array([[-1, 0, 0, 5], [0, 1, 0, 1], [0, 0, 1, 3], [0, 0, 0, 1]], float)
    out = place_on_grid(arr, src, target, ct.shape, "test")
    expected = np.zeros(ct.shape, np.uint8)
    expected[2:6, 1:6, 3:9] = arr[::-1]
    np.testing.assert_array_equal(out, expected)
    # rows and columns swapped
    swap = target @ np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    out = place_on_grid(arr[:, :5, :5], swap, target, ct.shape, "test")
    np.testing.assert_array_equal(out[:4, :5, :5], arr[:, :5, :5].transpose(0, 2, 1))


def test_a_ct_stored_upside_down_gives_the_same_seg(phantom):
    """A viewer may hold the series with its slice axis reversed (Slicer's volume of a
    feet-first series): the SEG frames still land on the right source instances."""
    _, ct, labels = phantom
    headers, placed = labels_on_source(labels, ct, ct.meta["files"])
    d = np.asarray(ct.direction, float).copy()
    d[:, 2] *= -1
    top = np.asarray(ct.origin) + np.asarray(ct.direction)[:, 2] * ct.spacing[0] * (ct.shape[0] - 1)
    flipped = CTVolume(hu=ct.hu[::-1], spacing=ct.spacing, origin=tuple(top), direction=d)
    headers2, placed2 = labels_on_source(labels[::-1], flipped, ct.meta["files"])
    assert [h.SOPInstanceUID for h in headers2] == [h.SOPInstanceUID for h in headers]
    np.testing.assert_array_equal(placed2, placed)
    np.testing.assert_array_equal(placed, labels)


# --------------------------------------------------------------------------- batch


def test_batch_writes_seg_and_sr_per_study_and_resumes(phantom, synthetic, tmp_path, capsys):
    root, labels_dir, out = tmp_path / "in", tmp_path / "labels", tmp_path / "out"
    root.mkdir()
    labels_dir.mkdir()
    for folder, ct, labels in (phantom, synthetic):
        shutil.copytree(folder, root / folder.name)
        write_volume(labels, ct, labels_dir / f"{folder.name}.nrrd")
    argv = ["batch", str(root), "--out", str(out), "--labels-dir", str(labels_dir), "--dicom-out", str(out), "--quiet"]
    import CoronaryCalciumDINOLib.report.dicom as report_dicom

    real, held = report_dicom.write_study_dicom, []

    def write_study_dicom(*args, **kwargs):  # the run still holds the folder: no second batch meanwhile
        held.append(sorted(p.name for p in out.glob(".ccdino-batch-*.running")))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report_dicom, "write_study_dicom", write_study_dicom)
        assert cli_main(argv) == 0
    assert len(held) == 2 and all(len(markers) == 1 for markers in held), held
    assert not list(out.glob(".ccdino-batch-*"))  # released at the end
    for folder, ct, labels in (phantom, synthetic):
        report = json.loads((out / f"{folder.name}.json").read_text())
        back = read_dicom_seg_labels(out / f"{folder.name}.seg.dcm", load_ct(root / folder.name))
        np.testing.assert_array_equal(back, labels)
        assert (out / f"{folder.name}.sr.dcm").is_file() and report["total"]["lesions"] > 0
    stamp = (out / f"{phantom[0].name}.sr.dcm").stat().st_mtime_ns
    assert cli_main(argv) == 0  # resumed: nothing written again
    assert (out / f"{phantom[0].name}.sr.dcm").stat().st_mtime_ns == stamp
    capsys.readouterr()

    write_volume(phantom[1].hu[:4], CTVolume(hu=phantom[1].hu[:4], spacing=phantom[1].spacing), root / "vol.nrrd")
    assert cli_main(argv) == 2
    assert "vol" in _one_error_line(capsys)


# --------------------------------------------------------------------------- Slicer (slicer-core)


def test_slicer_export_writes_the_current_segments(phantom, tmp_path):
    pytest.importorskip("slicer")
    from CoronaryCalciumDINOLib.scene import logic as scene_logic
    from CoronaryCalciumDINOLib.scene.dicom_export import INSTANCE_UIDS_ATTRIBUTE, export_dicom
    from CoronaryCalciumDINOLib.scene.segmentation import segment_id_by_name, write_segment_mask
    from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node

    _, ct, labels = phantom
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, name="phantom CT")

    class Known:
        def __init__(self):
            self.labels = labels
            self.score = score(ct.hu, labels, ct.spacing, ScoringParams())

        def report_extra(self):
            return {"model": {"name": "known-labels", "version": "1"}}

    outcome = scene_logic.write_result(core.scene, volume, ct, Known())
    with pytest.raises(InputError, match="not loaded from DICOM"):
        export_dicom(outcome.segmentation_node, volume, tmp_path)

    files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in ct.meta["files"]}
    volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(files))
    written = export_dicom(outcome.segmentation_node, volume, tmp_path, files.get)
    assert (written.seg.name, written.sr.name) == ("phantom_CT.seg.dcm", "phantom_CT.sr.dcm")
    np.testing.assert_array_equal(read_dicom_seg_labels(written.seg, ct), labels)

    # an edit not rescored yet: the export rescores, so that SEG and SR agree
    seg_node = outcome.segmentation_node
    write_segment_mask(seg_node, segment_id_by_name(seg_node, "LM"), np.zeros(ct.shape, bool), volume)
    with pytest.raises(InputError, match="use --overwrite"):
        export_dicom(seg_node, volume, tmp_path, files.get)
    written = export_dicom(seg_node, volume, tmp_path, files.get, overwrite=True)
    edited = np.where(labels == ARTERY_TO_LABEL["LM"], 0, labels)
    np.testing.assert_array_equal(read_dicom_seg_labels(written.seg, ct), edited)
    expected = score(ct.hu, edited, ct.spacing, ScoringParams())
    sr = pydicom.dcmread(written.sr)
    totals = [float(i.MeasuredValueSequence[0].NumericValue) for i in content_items(sr)
              if i.ValueType == "NUM" and concept(i) == ("DCM", "112058")]
    assert totals[0] == 0.0 and totals[-1] == pytest.approx(expected.total.agatston, rel=1e-12)
    if DCIODVFY:
        for path in (written.seg, written.sr):
            assert not dciodvfy(path)[0]


# --------------------------------------------------------------------------- the AI's result


@pytest.mark.slow  # ~20 s on 2 shared cores: the whole pipeline on the CPU
def test_ai_result_goes_out_as_seg_and_sr(synthetic, tmp_path):
    """``ccdino score`` without --labels: the SEG holds the model's labels (as its label map
    file), the SR names the model bundle and its checksum."""
    pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.models.bundle import save_random_bundle

    folder, ct, _ = synthetic
    bundle = save_random_bundle(tmp_path / "bundle", threshold=0.01)
    code = cli_main(["score", str(folder), "--bundle", str(bundle), "--device", "cpu", "--out", str(tmp_path / "out"),
                     "--dicom-out", str(tmp_path / "dicom"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "out" / f"{folder.name}.json").read_text())
    labels = load_ct(tmp_path / "out" / f"{folder.name}.labels.nrrd").hu.astype(np.uint8)
    assert report["total"]["lesions"] > 0  # the random model with a low threshold marks calcium
    seg = tmp_path / "dicom" / f"{folder.name}.seg.dcm"
    np.testing.assert_array_equal(read_dicom_seg_labels(seg, ct), labels)
    assert {str(s.SegmentAlgorithmType) for s in pydicom.dcmread(seg).SegmentSequence} == {"AUTOMATIC"}
    sr = pydicom.dcmread(tmp_path / "dicom" / f"{folder.name}.sr.dcm")
    texts = {(concept(i), str(i.TextValue)) for i in content_items(sr) if i.ValueType == "TEXT"}
    assert (("DCM", "111001"), report["model"]["name"]) in texts
    assert (("DCM", "111002"), f"model sha256 {report['model']['sha256']}") in texts
    assert (("DCM", "121106"), report["disclaimer"]) in texts


# --------------------------------------------------------------------------- an enhanced (multi-frame) CT


@pytest.fixture(scope="module")
def enhanced_phantom(phantom, tmp_path_factory):
    """The real phantom series converted by highdicom into one Legacy Converted Enhanced CT
    Image (multi-frame), as an archive may store it."""
    import warnings

    datasets = [pydicom.dcmread(f) for f in phantom[1].meta["files"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's notes on attributes the source lacks
        enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
            datasets, series_instance_uid=hd.UID(), series_number=77, sop_instance_uid=hd.UID(), instance_number=1)
    folder = tmp_path_factory.mktemp("enhanced") / "qrm-enhanced"
    folder.mkdir()
    enhanced.save_as(folder / "ct.dcm")
    return folder


def test_enhanced_ct_reads_as_its_single_frame_series(phantom, enhanced_phantom):
    _, ct, _ = phantom
    enh = load_ct(enhanced_phantom)
    np.testing.assert_array_equal(enh.hu, ct.hu)
    assert enh.spacing == pytest.approx(ct.spacing) and enh.origin == pytest.approx(ct.origin)
    np.testing.assert_allclose(enh.direction, ct.direction)
    assert enh.kvp == ct.kvp and len(enh.meta["frames"]) == ct.shape[0] and enh.meta["n_files"] == 1


def test_enhanced_ct_seg_references_its_frames(phantom, enhanced_phantom, tmp_path, capsys):
    """SEG + SR of an enhanced CT: the SEG references the one source instance, each of its
    frames the source frame at the same position; it passes the validator, reads back as
    the labels and rescores to the same report."""
    _, ct, labels = phantom
    enh = load_ct(enhanced_phantom)
    write_volume(labels, enh, tmp_path / "labels.nrrd")
    out = tmp_path / "out"
    assert cli_main(["score", str(enhanced_phantom), "--labels", str(tmp_path / "labels.nrrd"), "--dicom-out", str(out),
                     "--json", str(tmp_path / "a.json"), "--quiet"]) == 0
    seg_path, sr_path = out / "qrm-enhanced.seg.dcm", out / "qrm-enhanced.sr.dcm"
    source = pydicom.dcmread(enhanced_phantom / "ct.dcm", stop_before_pixels=True)
    frame_z = [float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for g in source.PerFrameFunctionalGroupsSequence]
    seg = pydicom.dcmread(seg_path)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced] == [str(source.SOPInstanceUID)]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    for group in seg.PerFrameFunctionalGroupsSequence:
        src = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert str(src.ReferencedSOPInstanceUID) == str(source.SOPInstanceUID)
        frame = int(src.ReferencedFrameNumber)
        assert float(group.PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(frame_z[frame - 1])
    np.testing.assert_array_equal(read_dicom_seg_labels(seg_path, enh), labels)
    if DCIODVFY:
        for path in (seg_path, sr_path):
            errors, _ = dciodvfy(path)
            assert not errors, f"{path.name}: {errors}"
    assert cli_main(["score", str(enhanced_phantom), "--labels", str(seg_path), "--json", str(tmp_path / "b.json"),
                     "--quiet"]) == 0
    first, again = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    for key in ("arteries", "total", "lesions"):
        assert again[key] == first[key], key
    assert first["total"]["agatston"] > 0
