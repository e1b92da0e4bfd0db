"""Review flags (report/flags.py): each flag on a constructed input that raises it and on one
that does not; the flags reach the JSON report and the console of ``ccdino score``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from CoronaryCalciumDINOLib.cli import main
from CoronaryCalciumDINOLib.io import CTVolume, load_ct, write_volume
from CoronaryCalciumDINOLib.report import flags as fl
from CoronaryCalciumDINOLib.report.tables import format_summary
from CoronaryCalciumDINOLib.scoring import ScoringParams, score
from CoronaryCalciumDINOLib.synth.generator import generate_study
from shared_data import edit_dicom, write_small_series
from test_contrast import raise_blood_pool

IMAGE_IDS = ("contrast", "slice_spacing", "noise", "kernel", "metal")


def ids(flags):
    return [f["flag"] for f in flags]


@pytest.fixture(scope="module")
def quiet_study():
    """A small synthetic non-contrast study with 15 HU noise and coronary plaques."""
    return generate_study(3, matrix=128, plaques=True, noise_sd=15.0)


def report_of(ct, labels) -> dict:
    from CoronaryCalciumDINOLib.report import build_report

    return build_report(score(ct.hu, labels, ct.spacing, ScoringParams()), "x")


def copy_ct(ct, hu=None, **meta) -> CTVolume:
    return CTVolume(hu=np.array(ct.hu if hu is None else hu, dtype=np.float32), spacing=ct.spacing, origin=ct.origin,
                    direction=ct.direction, meta={**ct.meta, **meta})


# ----------------------------------------------------------------------------- the image


def test_a_quiet_non_contrast_study_raises_no_image_flag(quiet_study):
    ct = copy_ct(quiet_study.ct)
    flags = fl.review_flags(ct, report_of(ct, quiet_study.labels))
    assert not set(ids(flags)) & set(IMAGE_IDS), flags
    assert 8.0 < fl.image_noise_hu(ct) < 25.0


def test_heavy_noise_is_flagged(quiet_study):
    noisy_study = generate_study(3, matrix=128, plaques=True, noise_sd=60.0)
    noisy = noisy_study.ct
    noise = fl.image_noise_hu(noisy)
    assert noise > 45.0  # the generator's 60 HU, as the soft-tissue windows see it
    # within a heart region given (the pipeline's): its own slices
    region = np.zeros(noisy.shape, bool)
    region[noisy_study.heart.any(axis=(1, 2))] = noisy_study.heart.any(axis=0)
    assert fl.image_noise_hu(noisy, region) > 45.0
    assert fl.image_noise_hu(copy_ct(quiet_study.ct), region) < 25.0
    found = fl.noise_flag(noisy)
    assert found is not None and found["flag"] == "noise" and f"about {noise:.0f} HU" in found["message"]
    assert fl.noise_flag(copy_ct(quiet_study.ct)) is None


def test_metal_in_the_heart_is_flagged_and_bone_or_metal_far_away_is_not(quiet_study):
    st = quiet_study
    z, y, x = (int(np.median(v)) for v in np.nonzero(st.heart))
    dense_bone = np.array(st.ct.hu, dtype=np.float32)
    dense_bone[z: z + 2, y: y + 3, x: x + 3] = 1900.0  # cortical bone is below the metal level
    assert fl.metal_flag(copy_ct(st.ct, dense_bone)) is None

    metal = np.array(st.ct.hu, dtype=np.float32)
    metal[z: z + 2, y: y + 3, x: x + 3] = 3071.0  # a lead tip at the top of the 12-bit scale
    found = fl.metal_flag(copy_ct(st.ct, metal))
    assert found is not None and found["flag"] == "metal" and f"slice {z}, {z + 1}" in found["message"]
    # the same with the pipeline's heart region given; and none where the region is not
    region = np.zeros(st.ct.shape, bool)
    region[:, y - 5: y + 8, x - 5: x + 8] = True
    assert fl.metal_flag(copy_ct(st.ct, metal), region) is not None
    away = np.zeros(st.ct.shape, bool)
    away[:, :5, :5] = True
    assert fl.metal_flag(copy_ct(st.ct, metal), away) is None

    far = np.array(st.ct.hu, dtype=np.float32)
    far[z: z + 2, 0:3, 0:3] = 3071.0  # the image corner: outside the 160 mm heart field
    assert not fl.heart_field(st.ct)[0, 0]
    assert fl.metal_flag(copy_ct(st.ct, far)) is None


def test_a_contrast_enhanced_scan_is_flagged(quiet_study):
    enhanced = copy_ct(quiet_study.ct, raise_blood_pool(quiet_study.ct.hu, quiet_study.heart))
    flags = fl.review_flags(enhanced, report_of(enhanced, quiet_study.labels))
    assert "contrast" in ids(flags)
    message = flags[ids(flags).index("contrast")]["message"]
    assert message.startswith("contrast-enhanced scan?") and "\n" not in message
    assert fl.contrast_flag(copy_ct(quiet_study.ct)) is None


def test_uneven_or_gapped_dicom_slices_are_flagged(tmp_path):
    hu = np.full((6, 16, 16), 40, np.int16)
    files = write_small_series(tmp_path / "even", hu, dz=3.0)
    assert fl.slice_spacing_flag(load_ct(tmp_path / "even")) is None

    files = write_small_series(tmp_path / "uneven", hu, dz=3.0)
    edit_dicom(files[3], ImagePositionPatient=[-5.0, -6.0, 40.0 + 3.0 * 3 + 0.25])  # gaps 3.25 and 2.75 mm
    ct = load_ct(tmp_path / "uneven")
    assert ct.meta["slice_gaps_mm"] == pytest.approx((2.75, 3.25))
    found = fl.slice_spacing_flag(ct)
    assert found is not None and "unevenly spaced (gaps of 2.75-3.25 mm" in found["message"]

    files = write_small_series(tmp_path / "gapped", hu, dz=5.0)
    for f in files:
        edit_dicom(f, SliceThickness=3.0)
    found = fl.slice_spacing_flag(load_ct(tmp_path / "gapped"))
    assert found is not None and "3 mm thick but 5 mm apart" in found["message"]


@pytest.mark.parametrize("name, sharp", [
    ("B35f", False), ("B30f", False), ("Br40d", False), ("Qr36", False), ("Sa36", False), ("I44f", False),
    ("STANDARD", False), ("SOFT", False), ("FC12", False), ("B", False), ("", False), (None, False),
    ("B46f", True), ("Br54d", True), ("I70f", True), ("Hr64", True), ("LUNG", True), ("BONEPLUS", True),
    ("Br40d\\3", False), ("B70f\\3", True),
])
def test_sharp_kernels_are_told_from_soft_tissue_ones(name, sharp):
    assert fl.sharp_kernel(name) is sharp


def test_a_sharp_reconstruction_kernel_of_a_dicom_series_is_flagged(tmp_path):
    hu = np.full((4, 16, 16), 40, np.int16)
    for kernel, flagged in (("B46f", True), ("B35f", False), (None, False)):
        folder = tmp_path / str(kernel)
        files = write_small_series(folder, hu, dz=3.0)
        if kernel is not None:
            for f in files:
                edit_dicom(f, ConvolutionKernel=kernel)
        ct = load_ct(folder)
        assert ct.meta["kernel"] == (kernel or "")
        found = fl.kernel_flag(ct)
        assert (found is not None) is flagged
        if flagged:
            assert found["flag"] == "kernel" and "sharp reconstruction kernel (B46f)" in found["message"]
            assert "kernel" in ids(fl.review_flags(ct, report_of(ct, np.zeros(hu.shape, np.uint8))))


def test_calcium_on_the_first_or_last_slice_is_flagged():
    hu = np.full((5, 20, 20), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    hu[2, 4:8, 4:8] = 300.0
    labels[2, 4:8, 4:8] = 2
    ct = CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5))
    assert fl.coverage_flag(report_of(ct, labels), 5) is None
    hu[4, 10:14, 10:14] = 300.0
    labels[4, 10:14, 10:14] = 4
    found = fl.coverage_flag(report_of(ct, labels), 5)
    assert found is not None and "on the last slice of the scan (RCA" in found["message"]


# ----------------------------------------------------------------------------- model confidence


def _report(total, lesions):
    return {"total": {"agatston": total}, "lesions": lesions}


def _lesion(agatston, calcium, slice_=3):
    return {"artery": "LAD", "slice": slice_, "agatston": agatston, "confidence": {"calcium": calcium, "artery": 0.9}}


def test_unsure_lesions_that_decide_the_risk_category_are_flagged():
    # 105 Agatston (101-400); the unsure 10-Agatston lesion alone decides the category
    report = _report(105.0, [_lesion(95.0, 0.97), _lesion(10.0, 0.62, 7)])
    found = fl.confidence_flag(report)
    assert found is not None and found["flag"] == "model_confidence"
    assert "category would be 11-100, not 101-400" in found["message"] and "slice 7" in found["message"]
    # the same uncertainty far from a boundary, or sure lesions: nothing
    assert fl.confidence_flag(_report(250.0, [_lesion(240.0, 0.97), _lesion(10.0, 0.62)])) is None
    assert fl.confidence_flag(_report(105.0, [_lesion(95.0, 0.97), _lesion(10.0, 0.9)])) is None
    # a score made without the model (no confidences): nothing
    assert fl.confidence_flag(_report(105.0, [{"artery": "LAD", "slice": 1, "agatston": 105.0}])) is None
    # zero: an unsure single lesion is all the calcium
    assert "would be 0, not 1-10" in fl.confidence_flag(_report(4.0, [_lesion(4.0, 0.55)]))["message"]


def _named(source, total=120.0):
    return {"total": {"agatston": total}, "lesions": [], "model": {"name": "m", "artery_names_from": source}}


def test_artery_names_that_are_the_models_own_are_flagged():
    for source, why in (("segmenter: no aorta found", "the ascending aorta was not found"),
                        ("segmenter: the aorta disagrees", "were at odds with the segmenter's"),
                        ("segmenter: asked for", "requested with --naming segmenter")):
        found = fl.artery_names_flag(_named(source))
        assert found is not None and found["flag"] == "artery_names"
        assert why in found["message"] and "the segmenter's own, not assigned from the position" in found["message"]
    assert fl.artery_names_flag(_named("aorta")) is None
    assert fl.artery_names_flag(_named("segmenter: no aorta found", total=0.0)) is None  # nothing to name
    assert fl.artery_names_flag({"total": {"agatston": 50.0}, "lesions": []}) is None  # scored from a label map
    assert fl.artery_names_flag(_named("")) is None


def test_names_from_the_aorta_left_unchecked_are_flagged():
    """Named from the aorta, but the segmenter sure of the side of too little of the calcium
    away from the root for the check (real dev scan 4 in fields set towards the back): the
    reader is told the names are unchecked; a check made and passed raises nothing."""
    from CoronaryCalciumDINOLib.pipeline.naming import NamingCheck

    report = _named("aorta")
    report["model"]["artery_names_check"] = NamingCheck(255, False, 5, False, 0, 0).as_dict()
    found = fl.artery_names_flag(report)
    assert found is not None and found["flag"] == "artery_names"
    assert "come from the position of the ascending aorta, unchecked" in found["message"]
    assert "of only 2 % of the calcium away from the aortic root (the check needs 50 %)" in found["message"]
    report["model"]["artery_names_check"] = NamingCheck(255, False, 200, True, 200, 10).as_dict()
    assert fl.artery_names_flag(report) is None
    report["model"]["artery_names_check"] = NamingCheck(255, False, 5, False, 0, 0).as_dict()
    report["total"]["agatston"] = 0.0
    assert fl.artery_names_flag(report) is None  # nothing to name
    assert fl.artery_names_flag(_named("aorta")) is None  # no check figures: nothing said



def test_the_names_flag_says_how_far_the_sides_disagreed_without_rounding_onto_the_bounds():
    from CoronaryCalciumDINOLib.pipeline.naming import NamingCheck

    report = _named("segmenter: the aorta disagrees")
    report["model"]["artery_names_check"] = NamingCheck(18, True, 9, True, 18, 18).as_dict()
    assert "of 100 % of the calcium, all of it near the aortic root, more than 20 %" \
        in fl.artery_names_flag(report)["message"]
    report["model"]["artery_names_check"] = NamingCheck(5000, False, 5000, True, 5000, 1002).as_dict()  # 20.04 %
    assert "of 20.0 % of the calcium away from the aortic root whose side the segmenter is sure of, more than 20 %" \
        in fl.artery_names_flag(report)["message"]
    report = _named("aorta")
    report["model"]["artery_names_check"] = NamingCheck(5000, False, 2498, False, 0, 0).as_dict()  # 49.96 %
    assert "of only 50.0 % of the calcium away from the aortic root (the check needs 50 %)" \
        in fl.artery_names_flag(report)["message"]
    report["model"]["artery_names_check"] = NamingCheck(1000, False, 400, False, 0, 0).as_dict()
    assert "of only 40 % of the calcium" in fl.artery_names_flag(report)["message"]


def test_rescored_flags_keep_the_image_flags_and_drop_confidence_after_edits():
    previous = {"review_flags": [
        {"flag": "model_confidence", "message": "m"}, {"flag": "noise", "message": "n"},
        {"flag": "coverage", "message": "old"},
    ]}
    middle = {"lesions": [{"artery": "LAD", "slice": 2, "agatston": 3.0}]}
    assert ids(fl.rescored_flags(previous, middle, 5, edited=False)) == ["model_confidence", "noise"]
    assert ids(fl.rescored_flags(previous, middle, 5, edited=True)) == ["noise"]
    named = {"review_flags": [{"flag": "noise", "message": "n"}, {"flag": "artery_names", "message": "a"}]}
    assert ids(fl.rescored_flags(named, middle, 5, edited=False)) == ["artery_names", "noise"]
    assert ids(fl.rescored_flags(named, middle, 5, edited=True)) == ["noise"]
    edge = {"lesions": [{"artery": "LAD", "slice": 0, "agatston": 3.0}]}
    assert ids(fl.rescored_flags(previous, edge, 5, edited=True)) == ["coverage", "noise"]


# ----------------------------------------------------------------------------- command line


def test_score_reports_the_flags_in_json_and_console(tmp_path, capsys, quiet_study):
    st = quiet_study
    z, y, x = (int(np.median(v)) for v in np.nonzero(st.heart))
    metal = np.rint(np.array(st.ct.hu, dtype=np.float32))
    metal[z: z + 2, y: y + 3, x: x + 3] = 3071.0
    ct_path = write_volume(metal.astype(np.int16), st.ct, tmp_path / "metal.nrrd")
    lab_path = write_volume(st.labels.astype(np.uint8), st.ct, tmp_path / "labels.nrrd")
    assert main(["score", str(ct_path), "--labels", str(lab_path), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert "metal" in ids(report["review_flags"])
    out = capsys.readouterr().out
    metal_line = [f["message"] for f in report["review_flags"] if f["flag"] == "metal"][0]
    assert f"Review: {metal_line}" in out.splitlines()

    clean = write_volume(np.rint(st.ct.hu).astype(np.int16), st.ct, tmp_path / "clean.nrrd")
    assert main(["score", str(clean), "--labels", str(lab_path), "--json", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    assert not set(ids(report["review_flags"])) & set(IMAGE_IDS)
    assert "Review: " not in format_summary({**report, "review_flags": []})


def test_noise_on_real_scans_matches_a_hand_measurement():
    """The real 1.5 mm patient slices: blood SD 41.6 / 39.5 HU measured by hand in the left
    ventricle (their README): flagged. The real 3 mm phantom series: not."""
    from test_contrast import PHANTOM, REAL

    real = load_ct(REAL)
    assert 35.0 < fl.image_noise_hu(real) < 46.0
    assert fl.noise_flag(real) is not None
    phantom = load_ct(PHANTOM)
    assert 15.0 < fl.image_noise_hu(phantom) < 28.0
    assert fl.noise_flag(phantom) is None


def test_batch_reports_carry_the_flags(tmp_path, quiet_study):
    pytest.importorskip("matplotlib", reason="the batch writes each study's PNG report (not under Slicer 5.8's packages)")
    st = quiet_study
    z, y, x = (int(np.median(v)) for v in np.nonzero(st.heart))
    metal = np.rint(np.array(st.ct.hu, dtype=np.float32))
    metal[z: z + 2, y: y + 3, x: x + 3] = 3071.0
    (tmp_path / "in").mkdir()
    (tmp_path / "labels").mkdir()
    write_volume(metal.astype(np.int16), st.ct, tmp_path / "in" / "metal.nrrd")
    write_volume(np.rint(st.ct.hu).astype(np.int16), st.ct, tmp_path / "in" / "clean.nrrd")
    for name in ("metal", "clean"):
        write_volume(st.labels.astype(np.uint8), st.ct, tmp_path / "labels" / f"{name}.nrrd")
    assert main(["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--labels-dir",
                 str(tmp_path / "labels"), "--quiet"]) == 0
    flagged = json.loads((tmp_path / "out" / "metal.json").read_text())["review_flags"]
    clean = json.loads((tmp_path / "out" / "clean.json").read_text())["review_flags"]
    assert "metal" in ids(flagged) and "metal" not in ids(clean)
