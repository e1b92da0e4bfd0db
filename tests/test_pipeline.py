"""Inference pipeline on tiny bundles: outputs, geometry, gating, HU restriction, progress,
cancel, attention; the ``score`` command's AI outputs; the default bundle on the phantom."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.errors import Cancelled, InputError  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.models.bundle import save_random_bundle  # noqa: E402
from CoronaryCalciumDINOLib.pipeline import PipelineResult, load_bundle, run_pipeline  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_NAMES  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams, score  # noqa: E402

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


class _FakeSegmenter(torch.nn.Module):
    """What the pipeline asks of a segmenter: ``probabilities`` (here the softmax of the logits,
    as a bundle's segmenter without ``calcium_blind`` gives them)."""

    def probabilities(self, x, context):
        return torch.softmax(self(x, context).float(), 1)


class ConstantSegmenter(_FakeSegmenter):
    """Predicts one class everywhere (to test the plumbing, not a model)."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls

    def forward(self, x, context):
        out = torch.zeros(x.shape[0], 5, *x.shape[2:], device=x.device)
        out[:, self.cls] = 30.0  # logits: softmax is one-hot
        return out


class CalciumWindowSegmenter(_FakeSegmenter):
    """Class 3 where the calcium window (HU > 130) of the crop is positive, else background."""

    def forward(self, x, context):
        out = torch.zeros(x.shape[0], 5, *x.shape[2:], device=x.device)
        dense = (x[:, 2] > 0).float()
        out[:, 0] = 30.0 * (1.0 - dense)  # logits: softmax is one-hot
        out[:, 3] = 30.0 * dense
        return out


class PeakDetector(torch.nn.Module):
    """P(calcium) rising with the candidate's peak HU (context column), for gating tests."""

    def __init__(self, centre_hu: float):
        super().__init__()
        self.centre = centre_hu / 1000.0

    def forward(self, features, context):
        return (context[:, CONTEXT_NAMES.index("peak_hu_k")] - self.centre) * 200.0


def _ct(nz=8, n=160, seed=0) -> CTVolume:
    """A 0.5 mm-pixel toy CT: soft-tissue disc with a rim of fat (a patient, not a phantom) in
    air, 3x3-pixel dense spots of rising HU."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((nz, n, n), -1000.0, np.float32)
    r2 = (yy - n / 2) ** 2 + (xx - n / 2) ** 2
    hu[:, r2 < (0.45 * n) ** 2] = -100.0
    hu[:, r2 < (0.38 * n) ** 2] = 40.0
    hu += rng.normal(0, 5, hu.shape).astype(np.float32)
    for z in range(nz):
        y, x = 40 + 9 * z % 60, 50 + 7 * z % 50
        hu[z, y : y + 3, x : x + 3] = 150.0 + 60.0 * z
        hu[z, 100:102, 100:103] = 135.0  # small spot just above 130 HU (1.5 mm^2)
    return CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return save_random_bundle(tmp_path_factory.mktemp("pipe") / "b", threshold=0.01)


def test_outputs_types_shapes(bundle_dir):
    ct = _ct()
    res = run_pipeline(ct, load_bundle(bundle_dir), device="cpu")
    assert isinstance(res, PipelineResult)
    assert res.labels.dtype == np.uint8 and res.labels.shape == ct.shape
    assert res.slice_probabilities.dtype == np.float32 and res.slice_probabilities.shape == (ct.shape[0],)
    assert np.all((res.slice_probabilities >= 0) & (res.slice_probabilities <= 1))
    assert res.selected.dtype == bool
    assert res.attention is None
    assert set(res.model_info) == {"name", "version", "sha256", "trained_on"}
    assert res.labels.max() <= 4
    assert res.counts["candidates"] == 2 * ct.shape[0]  # the spot and the small spot on each slice
    # the returned score is the score of the returned labels
    ref = score(ct.hu, res.labels, ct.spacing)
    assert res.score.total.agatston == pytest.approx(ref.total.agatston)
    extra = res.report_extra()
    assert [s["index"] for s in extra["slices"]] == list(range(ct.shape[0]))
    assert all(s["candidates"] == 2 for s in extra["slices"])
    assert extra["model"]["name"] == "random-untrained"
    assert len(extra["lesion_confidence"]) == len(res.score.lesions)


class MixedSegmenter(_FakeSegmenter):
    """The same class probabilities everywhere: background 0.2, LAD 0.2, RCA 0.6."""

    def forward(self, x, context):
        p = torch.tensor([0.2, 1e-6, 0.2, 1e-6, 0.6], device=x.device)
        return torch.log(p).view(1, 5, 1, 1).expand(x.shape[0], 5, *x.shape[2:]).clone()


def _peak_bundle(bundle_dir, segmenter):
    """The toy bundle with a detector passing the slices of the spots (>= 390 HU) and
    ``segmenter``."""
    b = load_bundle(bundle_dir)
    b.detector = PeakDetector(centre_hu=360.0)
    b.segmenter = segmenter
    b.manifest["detector"]["threshold"] = 0.5
    return b


def test_stage_name_gets_the_segmenters_side_probability_of_each_calcium_voxel(bundle_dir, monkeypatch):
    """P(RCA | calcium) = 0.6 / 0.8 on every labelled voxel reaches stage *name* (which counts
    only the sides the segmenter is sure of: naming.sure_sides), on the same grid as the
    labels; with ``all_slices`` also for the gated pipeline's labels."""
    from CoronaryCalciumDINOLib.pipeline import inference

    seen = []
    real = inference.name_and_check

    def spy(labels, anatomy, spacing, p_right=None):
        seen.append((labels.copy(), p_right))
        return real(labels, anatomy, spacing, p_right)

    monkeypatch.setattr(inference, "name_and_check", spy)
    b = _peak_bundle(bundle_dir, MixedSegmenter())
    res = run_pipeline(_ct(), b, device="cpu")
    assert res.labels.any() and (res.labels[res.labels > 0] == 4).all() and len(seen) == 1
    both = run_pipeline(_ct(), b, device="cpu", all_slices=True)
    assert both.gated_labels is not None and len(seen) == 3  # the labels and the gated labels
    for labels, p_right in seen:
        calcium = labels > 0
        assert calcium.any() and p_right.shape == labels.shape
        assert np.allclose(p_right[calcium], 0.75, atol=1e-4)


def test_the_report_says_where_the_artery_names_came_from_and_flags_the_models_own(bundle_dir):
    """No lungs in the toy CT, so no aorta: the names are the segmenter's, the report's model
    says why and the review flags tell the reader; nothing labelled names nothing."""
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.report.flags import review_flags

    ct = _ct()
    b = _peak_bundle(bundle_dir, ConstantSegmenter(2))
    res = run_pipeline(ct, b, device="cpu")
    assert res.labels.any() and res.anatomy is not None and res.anatomy.aorta_axis is None
    assert res.names_from == "segmenter: no aorta found"
    extra = res.report_extra()
    assert extra["model"]["artery_names_from"] == "segmenter: no aorta found"
    assert extra["model"]["arteries_named_from_aorta"] is False
    flags = review_flags(ct, build_report(res.score, "x", **extra))
    names = [f for f in flags if f["flag"] == "artery_names"]
    assert len(names) == 1 and "the ascending aorta was not found" in names[0]["message"]
    asked = run_pipeline(ct, b, device="cpu", naming="segmenter")
    assert asked.report_extra()["model"]["artery_names_from"] == "segmenter: asked for"
    b.detector = PeakDetector(centre_hu=5000.0)  # no slice passes: nothing labelled, nothing named
    none = run_pipeline(ct, b, device="cpu")
    assert not none.labels.any() and none.names_from == ""
    assert "artery_names_from" not in none.report_extra()["model"]
    assert not [f for f in review_flags(ct, build_report(none.score, "x", **none.report_extra()))
                if f["flag"] == "artery_names"]


def test_the_report_carries_the_check_on_the_aortas_names_and_the_flag_says_how_far_it_failed(bundle_dir, monkeypatch):
    """Where stage *name* checked the aorta's names, the report's model says what the check
    counted and found, and the review flag how far the sides disagreed."""
    import dataclasses

    from CoronaryCalciumDINOLib.pipeline.naming import NamingCheck
    from CoronaryCalciumDINOLib.report import build_report
    from CoronaryCalciumDINOLib.report.flags import review_flags

    ct = _ct()
    b = _peak_bundle(bundle_dir, ConstantSegmenter(2))
    res = run_pipeline(ct, b, device="cpu")
    assert res.names_check is None and "artery_names_check" not in res.report_extra()["model"]  # no aorta
    failed = dataclasses.replace(res, names_from="segmenter: the aorta disagrees",
                                 names_check=NamingCheck(checked=200, zone_only=False, sure=150, made=True, counted=150,
                                                         disagree=60))
    check = failed.report_extra()["model"]["artery_names_check"]
    assert check["voxels_checked"] == 200 and check["segmenter_sure_share"] == 0.75 and check["check_made"] is True
    assert check["sides_disagree_share"] == 0.4
    report = build_report(failed.score, "x", **failed.report_extra())
    (flag,) = [f for f in review_flags(ct, report) if f["flag"] == "artery_names"]
    assert "of 40 % of the calcium away from the aortic root whose side the segmenter is sure of, more than 20 %" \
        in flag["message"]
    # stage name's check reaches the result (the toy CT has no aorta: a stand-in for the check)
    from CoronaryCalciumDINOLib.pipeline import inference

    made = NamingCheck(checked=10, zone_only=True, sure=10, made=True, counted=10, disagree=0)
    monkeypatch.setattr(inference, "name_and_check", lambda labels, *a: (labels, "aorta", made))
    named = run_pipeline(ct, b, device="cpu")
    assert named.names_check is made and named.names_from == "aorta"
    assert named.report_extra()["model"]["artery_names_check"]["zone_only"] is True


def test_names_source_tells_each_reason():
    from CoronaryCalciumDINOLib.pipeline.inference import names_source

    assert names_source("aorta", "aorta", False, True) == "aorta"
    assert names_source("segmenter: the aorta disagrees", "aorta", False, True) == "segmenter: the aorta disagrees"
    assert names_source("segmenter: no aorta found", "aorta", False, True) == "segmenter: no aorta found"
    assert names_source("segmenter: no aorta found", "segmenter", False, True) == "segmenter: asked for"
    assert names_source("segmenter: no aorta found", "aorta", True, True) == ""  # a phantom: named by side
    assert names_source("segmenter", "aorta", False, False) == ""  # no calcium


def test_gating_slices_and_candidates(bundle_dir):
    ct = _ct()
    b = _peak_bundle(bundle_dir, ConstantSegmenter(2))  # spots of slices 4.. (>= 390 HU) pass
    res = run_pipeline(ct, b, device="cpu")
    peaks = 150.0 + 60.0 * np.arange(ct.shape[0])
    np.testing.assert_array_equal(res.selected, peaks >= 360.0)
    # labels: exactly the big spot of each selected slice (the 135 HU spot fails the detector)
    expected = np.zeros(ct.shape, np.uint8)
    for z in np.flatnonzero(res.selected):
        expected[z][(ct.hu[z] >= 150.0)] = 2
    np.testing.assert_array_equal(res.labels, expected)
    assert res.counts["segmented"] == int(res.selected.sum())
    # a higher scoring threshold keeps fewer voxels, exactly those >= it
    res500 = run_pipeline(ct, b, device="cpu", params=ScoringParams(threshold_hu=500.0, band_edges_hu=(500, 600, 700, 800)))
    np.testing.assert_array_equal(res500.labels, np.where(ct.hu >= 500, expected, 0))
    # the "UNET on every slice" mode segments every candidate, and gives the gated labels too
    res_all = run_pipeline(ct, b, device="cpu", all_slices=True)
    np.testing.assert_array_equal(res_all.labels, np.where(ct.hu >= 130, 2, 0))
    np.testing.assert_array_equal(res_all.gated_labels, res.labels)
    np.testing.assert_array_equal(res_all.selected, res.selected)


def test_noise_rule_keeps_small_faint_regions_unlabelled(bundle_dir):
    """The bundle's noise rule: flagged regions that are both small and faint stay unlabelled,
    with a warning that counts them; without a rule everything flagged is segmented."""
    ct = _ct()
    b = load_bundle(bundle_dir)
    b.detector = PeakDetector(centre_hu=0.0)  # every candidate passes the detector
    b.segmenter = CalciumWindowSegmenter()
    b.manifest["detector"]["threshold"] = 0.5
    plain = run_pipeline(ct, b, device="cpu")
    np.testing.assert_array_equal(plain.labels, np.where(ct.hu >= 130, 3, 0))
    assert plain.counts["below_noise"] == 0 and not plain.warnings
    # noise SD is 5 HU (the estimate's floor): the 135 HU spot is 19 SD above soft tissue and
    # 1.5 mm^2, the rising spots are 2.25 mm^2
    b.manifest["noise_rule"] = {"min_contrast_sd": 25.0, "min_area_mm2": 2.0, "soft_tissue_hu": 40.0}
    res = run_pipeline(ct, b, device="cpu")
    expected = np.where(ct.hu >= 150, 3, 0)
    np.testing.assert_array_equal(res.labels, expected)
    assert res.counts["below_noise"] == ct.shape[0]
    assert len(res.warnings) == 1 and res.warnings[0].startswith(f"{ct.shape[0]} small faint regions taken for image noise")
    # a faint region large enough counts, and so does a small one bright enough
    b.manifest["noise_rule"] = {"min_contrast_sd": 25.0, "min_area_mm2": 1.5, "soft_tissue_hu": 40.0}
    np.testing.assert_array_equal(run_pipeline(ct, b, device="cpu").labels, plain.labels)
    b.manifest["noise_rule"] = {"min_contrast_sd": 15.0, "min_area_mm2": 2.0, "soft_tissue_hu": 40.0}
    np.testing.assert_array_equal(run_pipeline(ct, b, device="cpu").labels, plain.labels)
    # the "UNET on every slice" baseline obeys the same rule
    b.manifest["noise_rule"] = {"min_contrast_sd": 25.0, "min_area_mm2": 2.0, "soft_tissue_hu": 40.0}
    np.testing.assert_array_equal(run_pipeline(ct, b, device="cpu", all_slices=True).labels, expected)


def _outcome(name: str) -> int:
    from CoronaryCalciumDINOLib.pipeline.inference import OUTCOME_CODE

    return OUTCOME_CODE[name]


def test_each_candidate_says_what_became_of_it(bundle_dir):
    """candidate_outcomes: every candidate's voxels carry the stage that turned it down, or
    "labelled"; nothing else in the image is marked."""
    ct = _ct()
    peaks = 150.0 + 60.0 * np.arange(ct.shape[0])
    spots = ct.hu >= 150.0  # the rising spots; the 135 HU spot of each slice besides them
    small = (ct.hu >= 130.0) & ~spots
    # the detector passes the spots >= 390 HU; the segmenter labels nothing it is given
    res = run_pipeline(ct, _peak_bundle(bundle_dir, ConstantSegmenter(0)), device="cpu")
    out = res.candidate_outcomes
    assert out.dtype == np.uint8 and out.shape == ct.shape and not res.labels.any()
    np.testing.assert_array_equal(out > 0, ct.hu >= 130.0)
    given = spots & (peaks >= 390.0)[:, None, None]
    np.testing.assert_array_equal(out == _outcome("segmenter"), given)
    np.testing.assert_array_equal(out == _outcome("detector"), (spots & ~given) | small)
    # a segmenter that labels the calcium: the candidates given to it are labelled instead
    res = run_pipeline(ct, _peak_bundle(bundle_dir, CalciumWindowSegmenter()), device="cpu")
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("labelled"), given)
    assert ((res.labels > 0) <= (res.candidate_outcomes == _outcome("labelled"))).all()
    # every candidate flagged, the noise rule taking the small faint spots (1.5 mm^2, 19 SD)
    b = load_bundle(bundle_dir)
    b.detector = PeakDetector(centre_hu=0.0)
    b.segmenter = CalciumWindowSegmenter()
    b.manifest["detector"]["threshold"] = 0.5
    b.manifest["noise_rule"] = {"min_contrast_sd": 25.0, "min_area_mm2": 2.0, "soft_tissue_hu": 40.0}
    res = run_pipeline(ct, b, device="cpu")
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("noise"), small)
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("labelled"), spots)
    # "UNET alone" (all_slices), a detector flagging nothing: the detector turns nothing down,
    # the noise rule the small faint spots, the rest is segmented
    b.detector = PeakDetector(centre_hu=5000.0)
    res = run_pipeline(ct, b, device="cpu", all_slices=True)
    assert res.counts["below_noise"] == 0 and not (res.candidate_outcomes == _outcome("detector")).any()
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("noise"), small)
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("labelled"), spots)
    # a scoring threshold above a candidate's voxels: what the segmenter gave it does not count
    b.detector = PeakDetector(centre_hu=0.0)
    b.manifest["noise_rule"] = {"min_contrast_sd": 0.0, "min_area_mm2": 0.0, "soft_tissue_hu": 40.0}
    res = run_pipeline(ct, b, device="cpu", params=ScoringParams(threshold_hu=140.0, band_edges_hu=(140, 200, 300, 400)))
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("segmenter"), small)
    np.testing.assert_array_equal(res.candidate_outcomes == _outcome("labelled"), spots)


def test_the_candidates_the_heart_region_turns_down_are_marked_and_the_rest_is_what_the_detector_saw(bundle_dir):
    """On a synthetic chest CT (anatomy found, the slices a cardiac scan would hold looked
    at): the candidates outside the heart region (bone) carry "region"; the others are exactly
    the candidates a reader may click (:func:`..candidate_area.candidate_mask`, the same
    stages run on their own); nothing is marked on the slices not looked at."""
    from CoronaryCalciumDINOLib.pipeline.candidate_area import candidate_mask
    from CoronaryCalciumDINOLib.synth import generate_study

    ct = generate_study(7, matrix=256, non_gated=True, n_slices=60).ct
    b = load_bundle(bundle_dir)
    res = run_pipeline(ct, b, device="cpu")
    out = res.candidate_outcomes
    assert res.counts["anatomy_found"] and res.counts["outside_heart"] > 0
    z0, z1 = res.counts["slices_looked_at"]
    assert out.shape == ct.shape and 0 < z0 < z1 < ct.shape[0]
    assert not out[:z0].any() and not out[z1:].any()
    assert (out[z0:z1] > 0).any(axis=(1, 2)).sum() > (z1 - z0) // 2
    searched = candidate_mask(ct, ScoringParams(), b.candidate_config).full()
    np.testing.assert_array_equal((out > 0) & (out != _outcome("region")), searched)
    turned = out == _outcome("region")
    assert turned.any() and not (turned & searched).any()
    assert (np.asarray(ct.hu)[out > 0] >= 130.0).all()


def test_segmenter_geometry_round_trip_and_flips(bundle_dir):
    """Crops -> segmenter -> CT grid puts labels back on the same voxels, in any storage order."""
    ct = _ct()
    b = load_bundle(bundle_dir)
    b.detector = PeakDetector(centre_hu=0.0)  # everything passes
    b.segmenter = CalciumWindowSegmenter()
    b.manifest["detector"]["threshold"] = 0.5
    res = run_pipeline(ct, b, device="cpu")
    np.testing.assert_array_equal(res.labels, np.where(ct.hu >= 130, 3, 0))
    assert all(c["calcium"] == pytest.approx(1.0) and c["artery"] == pytest.approx(1.0) for c in res.lesion_confidence)
    # the same CT stored with rows and slices reversed (direction flipped along)
    flipped = CTVolume(hu=np.ascontiguousarray(ct.hu[::-1, ::-1]), spacing=ct.spacing,
                       direction=np.diag([1.0, -1.0, -1.0]))
    res_f = run_pipeline(flipped, b, device="cpu")
    np.testing.assert_array_equal(res_f.labels, res.labels[::-1, ::-1])
    np.testing.assert_array_equal(res_f.slice_probabilities, res.slice_probabilities[::-1])
    np.testing.assert_array_equal(res_f.candidate_outcomes, res.candidate_outcomes[::-1, ::-1])
    np.testing.assert_array_equal(res_f.candidate_outcomes == _outcome("labelled"), flipped.hu >= 130)


def test_progress_and_cancel(bundle_dir):
    ct = _ct()
    b = load_bundle(bundle_dir)
    seen = []
    run_pipeline(ct, b, device="cpu", progress=lambda f, m: seen.append((f, m)))
    fr = [f for f, _ in seen]
    assert fr[-1] == 1.0 and fr[0] == 0.0
    assert all(b2 >= a for a, b2 in zip(fr, fr[1:]))
    with pytest.raises(Cancelled):
        run_pipeline(ct, b, device="cpu", cancel=lambda: True)
    calls = {"n": 0}

    def later():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run_pipeline(ct, b, device="cpu", cancel=later, batch_size=2)


def test_attention_maps(bundle_dir):
    ct = _ct()
    b = load_bundle(bundle_dir)
    b.detector = PeakDetector(centre_hu=360.0)
    b.manifest["detector"]["threshold"] = 0.5
    res = run_pipeline(ct, b, device="cpu", attention=True)
    heads = b.backbone.blocks[-1].attn.num_heads
    assert res.attention.shape == (heads + 1, *ct.shape) and res.attention.dtype == np.float32
    assert 0 < res.selected.sum() < len(res.selected)
    assert not res.attention[:, ~res.selected].any()
    assert res.attention[:, res.selected].max() > 0
    np.testing.assert_allclose(res.attention[0], res.attention[1:].mean(0), rtol=1e-5, atol=1e-7)
    assert res.attention.min() >= 0


def test_bad_device_and_input(bundle_dir):
    ct = _ct()
    b = load_bundle(bundle_dir)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            run_pipeline(ct, b, device="cuda")
    with pytest.raises(InputError, match="unknown device"):
        run_pipeline(ct, b, device="tpu")
    with pytest.raises(InputError, match="3D"):
        run_pipeline(CTVolume(hu=np.zeros((4, 4), np.float32), spacing=(1, 1, 1)), b, device="cpu")


def test_score_command_writes_ai_outputs(bundle_dir, tmp_path):
    from CoronaryCalciumDINOLib.cli import main
    from CoronaryCalciumDINOLib.io.volume import read_label_file, read_volume_file, write_volume

    ct = _ct()
    ct_path = write_volume(ct.hu, ct, tmp_path / "toy.nrrd")
    out = tmp_path / "out"
    rc = main(["score", str(ct_path), "--bundle", str(bundle_dir), "--device", "cpu", "--out", str(out),
               "--attention", str(tmp_path / "att.nrrd"), "--quiet"])
    assert rc == 0
    report = json.loads((out / "toy.json").read_text())
    assert len(report["slices"]) == ct.shape[0] and report["model"]["name"] == "random-untrained"
    assert all(set(s) == {"index", "probability", "selected", "candidates"} for s in report["slices"])
    assert "lesion_confidence" not in report
    for lesion in report["lesions"]:
        assert 0.5 <= lesion["confidence"]["calcium"] <= 1.0 and 0.0 <= lesion["confidence"]["artery"] <= 1.0
    labels = read_label_file(out / "toy.labels.nrrd", read_volume_file(ct_path))
    assert labels.shape == ct.shape and not np.any(labels[ct.hu < 130])
    assert (out / "toy.seg.nrrd").is_file()
    heads = load_bundle(bundle_dir).backbone.blocks[-1].attn.num_heads
    assert (tmp_path / "att.nrrd").is_file()
    for h in range(1, heads + 1):
        assert (tmp_path / f"att.head{h}.nrrd").is_file()


def test_score_command_writes_nothing_when_the_report_fails(bundle_dir, tmp_path, monkeypatch, capsys):
    """The AI report is built (and its values checked) before any output is written: a run
    that fails there leaves no labels, segmentation or attention file to block the rerun."""
    from CoronaryCalciumDINOLib.cli import ai, main
    from CoronaryCalciumDINOLib.io.volume import write_volume

    def failing_report(*args, **kwargs):
        raise InputError("report holds a non-finite value")

    monkeypatch.setattr(ai, "build_report", failing_report)
    ct = _ct()
    ct_path = write_volume(ct.hu, ct, tmp_path / "toy.nrrd")
    out = tmp_path / "out"
    rc = main(["score", str(ct_path), "--bundle", str(bundle_dir), "--device", "cpu", "--out", str(out),
               "--attention", str(tmp_path / "att.nrrd"), "--quiet"])
    assert rc == 2 and "non-finite" in capsys.readouterr().err
    assert not list(out.iterdir()) and not (tmp_path / "att.nrrd").exists()


@pytest.fixture(scope="module")
def phantom_result():
    from CoronaryCalciumDINOLib.io import load_ct

    ct = load_ct(PHANTOM)
    return ct, run_pipeline(ct, load_bundle(None), device="cpu")


#: Centre (row, column) and inner radius (pixels) of the real phantom's calcification insert
#: (its water-equivalent cylinder), read off the scan; the spine and ribs lie outside it.
INSERT_CENTRE, INSERT_RADIUS_PX = (215, 257), 105


def test_default_bundle_on_phantom_labels_no_bone(phantom_result):
    """The shipped bundle on the real phantom scan labels nothing outside the calcification
    insert: the spine, ribs, sternum, table and calibration rod are never calcium."""
    ct, res = phantom_result
    assert res.labels.shape == ct.shape
    assert not np.any(res.labels[~res.selected])
    assert not np.any(res.labels[ct.hu < 130])
    dense = ct.hu >= 130
    assert dense.sum() > 100_000  # plenty of bone-like voxels the model had to reject
    yy, xx = np.mgrid[: ct.shape[1], : ct.shape[2]]
    insert = (yy - INSERT_CENTRE[0]) ** 2 + (xx - INSERT_CENTRE[1]) ** 2 < INSERT_RADIUS_PX**2
    assert not np.any(res.labels[:, ~insert]), "labels outside the calcification insert (bone?)"
    assert not np.any(res.labels[31:38]), "labels on the calibration rod (slices 31-37)"
    assert res.score.total.agatston == pytest.approx(score(ct.hu, res.labels, ct.spacing).total.agatston)


#: The insert's one 1 mm cylinder that shows above 130 HU (row, column, slice): in line with
#: the 5 and 3 mm cylinders of its row (columns 180, 205, 230: 12 mm apart), one slice long,
#: peak 227 HU where the slices' noise peaks at 136-152 HU around it; the other two 1 mm
#: cylinders do not show. The hand labels (test_phantom_scoring) hold the 5 and 3 mm ones.
ONE_MM_CYLINDER = (220, 230, 22)


def test_default_bundle_finds_the_phantom_insert(phantom_result):
    """The real phantom is taken for a phantom; the slices holding a lesion of the
    hand-labelled insert (21-23) are selected; every hand-labelled lesion of >= 10 mm^2 (the
    3 and 5 mm cylinders) is labelled; every labelled voxel is hand-labelled calcium or the
    visible 1 mm cylinder (no noise speck: 0.5.1 labelled six on slice 30, the partial volume
    of the calibration rod's end); the total is within 10 % of the hand-labelled one."""
    from test_phantom_scoring import insert_labels

    ct, res = phantom_result
    assert res.counts["phantom"] == 1 and any("calcium-scoring phantom" in w for w in res.warnings)
    ref = score(ct.hu, insert_labels(ct.shape), ct.spacing, keep_lesion_voxels=True)
    slices = sorted({les.slice for les in ref.lesions})
    assert slices == [21, 22, 23]
    assert res.selected[slices].all(), np.flatnonzero(res.selected)
    lab = res.labels.ravel()
    big = [(les, vox) for les, vox in zip(ref.lesions, ref.lesion_voxels) if les.area_mm2 >= 10]
    assert len(big) == 10
    for les, vox in big:
        assert (lab[vox] > 0).all(), (les.slice, les.area_mm2)
    calcium = insert_labels(ct.shape) > 0
    r, c, z = ONE_MM_CYLINDER
    yy, xx = np.mgrid[: ct.shape[1], : ct.shape[2]]
    calcium[z] |= (yy - r) ** 2 + (xx - c) ** 2 <= 5**2  # 2.4 mm: the cylinder and its blur
    outside = (res.labels > 0) & ~calcium
    assert not outside.any(), sorted(set(np.nonzero(outside)[0].tolist()))
    assert res.score.total.agatston == pytest.approx(ref.total.agatston, rel=0.1)


def test_evaluation_gated_equals_pipeline_run(bundle_dir):
    """evaluate_study derives the gated result from one all-slice run: it must equal a
    separate detector-gated run of the pipeline."""
    from CoronaryCalciumDINOLib.data.studies import Study
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import evaluate_study, summarise

    ct = _ct()
    b = load_bundle(bundle_dir)
    b.segmenter = CalciumWindowSegmenter()
    b.detector = PeakDetector(centre_hu=360.0)
    b.manifest["detector"]["threshold"] = 0.5
    ref_labels = np.where(ct.hu >= 150, 1, 0).astype(np.uint8)  # the spots, as LM
    outcome = evaluate_study(Study(id="toy", ct=ct, labels=ref_labels), b, device="cpu")
    gated = run_pipeline(ct, b, device="cpu")
    assert outcome.pipeline["total"] == pytest.approx(gated.score.total.agatston)
    assert outcome.pipeline["LCX"] == pytest.approx(gated.score.arteries["LCX"].agatston)
    assert outcome.pipeline["LCX"] > 0
    np.testing.assert_array_equal(outcome.selected, gated.selected)
    # every slice has a >= 150 HU spot, so every slice is a reference positive
    assert outcome.positive.all()
    assert outcome.reference["LM"] == pytest.approx(score(ct.hu, ref_labels, ct.spacing).total.agatston)
    # segmenter on all slices labels the same voxels on more slices: never a lower score
    assert outcome.unet_all["total"] >= outcome.pipeline["total"]
    assert outcome.unet_all["total"] > outcome.pipeline["total"]  # it also labels the small spots
    s = summarise([outcome, outcome], b.manifest["detector"]["threshold"])
    assert s["n_studies"] == 2
    assert s["slices"]["at_threshold"]["sensitivity"] == pytest.approx(gated.selected.mean())


def test_evaluate_command_two_bundles(bundle_dir, tmp_path):
    """`ccdino evaluate` on two tiny cached held-out studies, same bundle twice."""
    from CoronaryCalciumDINOLib.cli import main
    from CoronaryCalciumDINOLib.synth import write_studies

    cache = tmp_path / "cache"
    write_studies([900000, 900001], cache, matrix=64, n_slices=6)  # reused by the command
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--bundle", str(bundle_dir), "--bundle-b", str(bundle_dir), "--synthetic-seeds",
               "900000:900002", "--cache", str(cache), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    m = json.loads(out.read_text())
    a, b = m["synthetic"]["A"], m["synthetic"]["B"]
    assert a["n_studies"] == 2 and a["slices"]["n"] == 12
    for mode in ("pipeline", "unet_all_slices"):
        assert set(a[mode]["agatston_agreement"]) == {"LM", "LAD", "LCX", "RCA", "total"}
        assert "accuracy" in a[mode]["risk"] and "kappa_linear" in a[mode]["risk"]
    assert a["slices"] == b["slices"]  # the same bundle twice
    comp = m["synthetic"]["comparison"]
    assert comp["fn_rate_reduction"] in (0.0, None) and comp["fp_rate_reduction"] in (0.0, None)
    assert main(["evaluate", "--bundle", str(bundle_dir), "--synthetic-seeds", "900000:900002",
                 "--cache", str(cache), "--out", str(out)]) == 2  # refuses to overwrite


def test_default_bundle_leaves_real_noise_speckle_alone():
    """The two real non-contrast patient slices (1.5 mm, noisy): dozens of >= 130 HU regions
    of >= 1 mm^2 in the heart field, most of them noise speckle; none is labelled."""
    from CoronaryCalciumDINOLib.io import load_ct

    ct = load_ct(PHANTOM.parent / "real-cardiac-ct-slices")
    res = run_pipeline(ct, load_bundle(None), device="cpu")
    assert res.slice_candidates.min() >= 30  # the noise is there for the model to reject
    assert not res.labels.any() and res.score.total.agatston == 0.0


def test_a_phantom_goes_to_the_phantom_head_and_is_named_by_side(tmp_path):
    """A scan without fat is taken for a calcium-scoring phantom: its candidates go to the
    bundle's phantom head (not the patients' detector), the picked ones are labelled with
    their own voxels, named by side as the synthetic phantoms are labelled, and the report
    says so. A patient's scan never takes that path."""
    from CoronaryCalciumDINOLib.synth import generate_study

    b = load_bundle(save_random_bundle(tmp_path / "b", phantom=True))
    b.detector = PeakDetector(centre_hu=1e6)  # the patients' head flags nothing
    b.phantom_detector = PeakDetector(centre_hu=300.0)  # the phantom head flags peaks above 300 HU
    b.manifest["phantom_detector"]["threshold"] = 0.5
    st = generate_study(700003, phantom=True, matrix=256)
    res = run_pipeline(st.ct, b, device="cpu")
    assert res.counts["phantom"] == 1 and any("calcium-scoring phantom" in w for w in res.warnings)
    both = (res.labels > 0) & (st.labels > 0)
    assert both.sum() > 50
    assert np.all(res.labels[both] == st.labels[both])  # the same side convention as the generator's labels
    assert np.all(st.ct.hu[res.labels > 0] >= 130)
    assert all(c["artery"] == 1.0 for c in res.lesion_confidence)  # a convention, not a guess
    # what became of the candidates: a phantom has no heart region; the picked ones are labelled
    out = res.candidate_outcomes
    assert not (out == _outcome("region")).any() and (out == _outcome("detector")).any()
    np.testing.assert_array_equal(out > 0, (out == _outcome("labelled")) | (out == _outcome("detector")))
    assert ((res.labels > 0) <= (out == _outcome("labelled"))).all()
    # scored at a higher threshold: a picked candidate wholly below it labels nothing that counts
    from scipy import ndimage

    picked = out == _outcome("labelled")
    ids, n = ndimage.label(picked, structure=np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], bool))
    peak = ndimage.maximum(np.asarray(st.ct.hu), ids, np.arange(1, n + 1))
    thr = float(np.median(peak)) + 1.0
    below = np.isin(ids, 1 + np.flatnonzero(peak < thr))
    assert below.any() and (picked & ~below).any()
    high = run_pipeline(st.ct, b, device="cpu", params=ScoringParams(threshold_hu=thr, band_edges_hu=(thr, 1e4, 2e4, 3e4)))
    np.testing.assert_array_equal(high.candidate_outcomes == _outcome("segmenter"), below)
    np.testing.assert_array_equal(high.candidate_outcomes == _outcome("labelled"), picked & ~below)
    patient = generate_study(12, plaques=True, matrix=256)
    res = run_pipeline(patient.ct, b, device="cpu")
    assert res.counts["phantom"] == 0 and not res.labels.any()
    assert not any("phantom" in w for w in res.warnings)


def test_a_phantom_with_a_bundle_without_phantom_head_is_said(bundle_dir):
    from CoronaryCalciumDINOLib.synth import generate_study

    st = generate_study(700003, phantom=True, matrix=128, n_slices=12)
    res = run_pipeline(st.ct, load_bundle(bundle_dir), device="cpu")
    assert res.counts["phantom"] == 0
    assert any("has no phantom detector" in w for w in res.warnings)



def _results_equal(a: PipelineResult, b: PipelineResult) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.slice_probabilities, b.slice_probabilities)
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_array_equal(a.slice_candidates, b.slice_candidates)
    assert a.score.total.agatston == b.score.total.agatston and a.score.total.volume_mm3 == b.score.total.volume_mm3
    assert [(x.artery, x.agatston) for x in a.score.lesions] == [(x.artery, x.agatston) for x in b.score.lesions]
    assert a.lesion_confidence == b.lesion_confidence
    assert a.warnings == b.warnings and a.counts == b.counts and a.model_info == b.model_info


@pytest.mark.parametrize("case", ["patient", "phantom"])
def test_a_bundle_path_gives_the_results_of_a_loaded_bundle(tmp_path, case):
    """Given the bundle's path, the pipeline reads its manifest first and builds the networks
    after the candidates: the labels, scores, probabilities, warnings and counts are those of
    the same bundle loaded beforehand, on the patients' route and on the phantoms'."""
    from CoronaryCalciumDINOLib.synth import generate_study

    path = save_random_bundle(tmp_path / "b", threshold=0.01, phantom=case == "phantom")
    ct = _ct() if case == "patient" else generate_study(700003, phantom=True, matrix=128, n_slices=12).ct
    steps = []
    loaded = run_pipeline(ct, load_bundle(path), device="cpu")
    lazy = run_pipeline(ct, path, device="cpu", progress=lambda f, m: steps.append(m))
    _results_equal(lazy, loaded)
    assert loaded.counts["phantom"] == int(case == "phantom")
    assert loaded.slice_probabilities.max() > 0.01 and loaded.selected.any()  # the detector ran and selected
    assert "load_bundle_s" in lazy.timings and "load_manifest_s" in lazy.timings
    assert "load_bundle_s" not in loaded.timings
    first = next(i for i, m in enumerate(steps) if m.endswith(" candidates"))
    assert steps[first] == f"{lazy.counts['candidates'] - lazy.counts['outside_heart']} candidates"
    assert steps[first + 1] == "loading the model"


def test_the_stages_up_to_the_candidates_import_no_torch(bundle_dir, tmp_path):
    """In a fresh interpreter, importing the pipeline and running it with a bundle path
    reaches its candidates report with none of torch, timm or MONAI imported; they are
    imported after it (the run ends with torch loaded)."""
    import os
    import subprocess
    import sys

    import CoronaryCalciumDINOLib
    from CoronaryCalciumDINOLib.io.volume import write_volume

    ct = _ct()
    ct_path = write_volume(ct.hu, ct, tmp_path / "toy.nrrd")
    code = (
        "import json, re, sys\n"
        "from CoronaryCalciumDINOLib.io.volume import read_volume_file\n"
        "from CoronaryCalciumDINOLib.pipeline import run_pipeline\n"
        "heavy = lambda: sorted(p for p in ('torch', 'timm', 'monai') if p in sys.modules)\n"
        "seen = {'import': heavy()}\n"
        "def progress(fraction, message):\n"
        "    if re.fullmatch(r'\\d+ candidates', message):\n"
        "        seen.setdefault('candidates', heavy())\n"
        "res = run_pipeline(read_volume_file(sys.argv[1]), sys.argv[2], device='cpu', progress=progress)\n"
        "seen['end'] = heavy()\n"
        "print(json.dumps(seen))\n"
    )
    env = dict(os.environ)
    lib_parent = str(Path(CoronaryCalciumDINOLib.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lib_parent, env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", code, str(ct_path), str(bundle_dir)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["import"] == [] and seen["candidates"] == []
    assert "torch" in seen["end"]  # imported after the candidates, for the networks


def test_progress_lines_give_the_candidates_before_cuda_and_the_model(bundle_dir, tmp_path, capsys):
    """``score --progress-lines``: the candidates are reported before the AI is loaded, then
    the ``CUDA 0|1`` line (torch imported, no network run yet), then the detector's steps."""
    from CoronaryCalciumDINOLib.cli import main
    from CoronaryCalciumDINOLib.cli.progress import parse_cuda_line, parse_progress_line
    from CoronaryCalciumDINOLib.io.volume import write_volume

    ct = _ct()
    ct_path = write_volume(ct.hu, ct, tmp_path / "toy.nrrd")
    rc = main(["score", str(ct_path), "--bundle", str(bundle_dir), "--device", "cpu", "--out", str(tmp_path / "out"),
               "--quiet", "--progress-lines"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    cuda = [i for i, line in enumerate(lines) if parse_cuda_line(line) is not None]
    assert len(cuda) == 1 and parse_cuda_line(lines[cuda[0]]) is bool(torch.cuda.is_available())
    messages = [(i, parse_progress_line(line)[1]) for i, line in enumerate(lines) if parse_progress_line(line)]
    candidates = next(i for i, m in messages if re.fullmatch(r"\d+ candidates", m))
    model = next(i for i, m in messages if m == "loading the model")
    detector = next(i for i, m in messages if m.startswith("detector "))
    assert candidates < cuda[0] < model < detector


@pytest.mark.parametrize("case", ["missing", "checksum", "weights"])
def test_score_command_with_a_bad_bundle_is_one_line_and_exit_2(bundle_dir, tmp_path, capsys, case):
    """A bad bundle stops ``score`` with one line and exit 2, whether it is found bad when its
    manifest is verified (before any stage) or when its networks are built (after the
    candidates); no result file is written."""
    import shutil

    from CoronaryCalciumDINOLib.cli import main
    from CoronaryCalciumDINOLib.io.volume import write_volume
    from CoronaryCalciumDINOLib.models.bundle import MANIFEST

    bad = tmp_path / "bad"
    if case != "missing":
        shutil.copytree(bundle_dir, bad)
        man = json.loads((bad / MANIFEST).read_text())
    if case == "checksum":
        target = bad / man["weights"]["segmenter"][0]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        expected = "checksum mismatch for"
    elif case == "weights":  # checksums intact, the detector's config does not fit its weights
        man["detector"]["hidden"] = 16
        (bad / MANIFEST).write_text(json.dumps(man))
        expected = "detector weights do not fit its config"
    else:
        expected = "model bundle not found"
    ct = _ct()
    ct_path = write_volume(ct.hu, ct, tmp_path / "toy.nrrd")
    out = tmp_path / "out"
    rc = main(["score", str(ct_path), "--bundle", str(bad), "--device", "cpu", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ccdino: error: model bundle") and expected in err and "\n" not in err
    assert not out.exists() or not list(out.iterdir())

def test_one_side_per_lesion():
    """A lesion split between the left tree and the RCA goes to the side holding more of it;
    a lesion at the left main's bifurcation keeps its left arteries; separate lesions and
    other slices are left alone."""
    from CoronaryCalciumDINOLib.pipeline.inference import one_side_per_lesion

    lab = np.zeros((3, 12, 12), np.uint8)
    lab[0, 2, 2:8] = [1, 1, 3, 3, 3, 4]  # mostly LCX, one RCA pixel: all left, LCX
    lab[0, 8, 2:6] = [2, 4, 4, 4]  # mostly RCA: all RCA
    lab[0, 10, 9:11] = 4  # a lesion of its own: RCA stays
    lab[1, 5, 3:7] = [1, 1, 2, 3]  # the bifurcation: left arteries kept
    lab[2, 4, 4] = 2
    lab[2, 5, 5] = 4  # diagonal neighbours: one lesion (8-connected), tie goes left
    out = one_side_per_lesion(lab)
    assert out[0, 2, 2:8].tolist() == [1, 1, 3, 3, 3, 3]
    assert out[0, 8, 2:6].tolist() == [4, 4, 4, 4]
    assert out[0, 10, 9:11].tolist() == [4, 4]
    assert np.array_equal(out[1], lab[1])
    assert out[2, 4, 4] == 2 and out[2, 5, 5] == 2
    assert np.array_equal(one_side_per_lesion(lab[1:2]), lab[1:2]) and lab[0, 2, 7] == 4  # input untouched
    # voxels on neighbouring slices are not one lesion
    lab = np.zeros((2, 4, 4), np.uint8)
    lab[0, 1, 1], lab[1, 1, 1] = 2, 4
    assert np.array_equal(one_side_per_lesion(lab), lab)


def test_a_candidate_continuing_a_flagged_one_onto_the_next_slice_passes_the_gate():
    """Gate: below the detector's threshold, a candidate that continues a passed one (its
    voxels within CONTINUE_MM in-plane on the next or previous slice, through a chain of
    such candidates) passes; one as probable but elsewhere, or too improbable, does not."""
    from CoronaryCalciumDINOLib.pipeline import candidates as cd
    from CoronaryCalciumDINOLib.pipeline import inference

    hu = np.full((8, 64, 64), 40.0, np.float32)
    spots = {  # name: (slice, row, column)
        "passed": (3, 30, 30),
        "next": (4, 34, 31),  # its edge 2 mm from the edge of "passed": continues it
        "chain": (5, 38, 32),  # continues "next"
        "far": (4, 10, 50),  # as probable, 20 mm away
        "faint": (6, 42, 33),  # continues "chain", below CONTINUE_PROBABILITY
        "gap": (1, 30, 30),  # two slices away from "passed"
    }
    for z, y, x in spots.values():
        hu[z, y - 1: y + 2, x - 1: x + 2] = 400.0
    c = cd.find_candidates(hu, (3.0, 1.0, 1.0), centre_yx=(32.0, 32.0))
    index = {name: int(np.flatnonzero((c.z == z) & (np.abs(c.cy + c.field.y0 - y) < 1.5)
                                      & (np.abs(c.cx + c.field.x0 - x) < 1.5))[0])
             for name, (z, y, x) in spots.items()}
    prob = np.full(len(c), 0.7)
    prob[index["passed"]] = 0.99
    prob[index["faint"]] = 0.2
    passed = np.zeros(len(c), bool)
    passed[index["passed"]] = True
    got = inference.continuing(c, passed, prob >= inference.CONTINUE_PROBABILITY)
    assert {name for name, i in index.items() if got[i]} == {"passed", "next", "chain"}
    # nothing passed: nothing continues
    assert not inference.continuing(c, np.zeros(len(c), bool), prob >= 0.5).any()


def _continuing_by_whole_volume(c, passed, maybe):
    """The definition of :func:`inference.continuing`, done the slow way: the joined
    candidates' voxels dilated over the whole volume onto the next and previous slice."""
    from scipy import ndimage

    from CoronaryCalciumDINOLib.pipeline import inference

    r = inference.CONTINUE_MM
    ry, rx = max(1, round(r / c.spacing[1])), max(1, round(r / c.spacing[2]))
    yy, xx = np.ogrid[-ry: ry + 1, -rx: rx + 1]
    reach = np.zeros((3, 2 * ry + 1, 2 * rx + 1), bool)
    reach[0] = reach[2] = (yy * c.spacing[1]) ** 2 + (xx * c.spacing[2]) ** 2 <= r ** 2 + 1e-6
    joined = passed.copy()
    while True:
        near = ndimage.binary_dilation(np.isin(c.ids, c.uid[joined]), structure=reach)
        new = maybe & ~joined & np.isin(c.uid, c.ids[near])
        if not new.any():
            return joined
        joined |= new


@pytest.mark.parametrize("seed", range(4))
def test_continuing_is_the_whole_volume_dilation(seed):
    """The per-candidate growth equals the definition on the whole volume, on random
    calcifications (anisotropic pixels, candidates at the field's edges, chains)."""
    from CoronaryCalciumDINOLib.pipeline import candidates as cd
    from CoronaryCalciumDINOLib.pipeline import inference

    rng = np.random.default_rng(seed)
    hu = np.full((12, 96, 96), 40.0, np.float32)
    for _ in range(80):
        z, y, x = rng.integers(0, 12), rng.integers(0, 96), rng.integers(0, 96)
        h, w = rng.integers(2, 7, size=2)
        hu[z, y: y + h, x: x + w] = 300.0
    c = cd.find_candidates(hu, (3.0, 0.45, 0.6), centre_yx=(48.0, 48.0))
    assert len(c) > 30
    maybe = rng.random(len(c)) < 0.7
    for passed in (rng.random(len(c)) < 0.1, np.eye(1, len(c), int(rng.integers(len(c))), dtype=bool)[0]):
        want = _continuing_by_whole_volume(c, passed, maybe)
        assert np.array_equal(inference.continuing(c, passed, maybe), want)
    # candidates taken out (the heart region) stay out, though their voxels remain in ids
    sub = cd.subset(c, np.flatnonzero(rng.random(len(c)) < 0.6))
    assert (np.isin(c.ids, sub.uid) < (c.ids > 0)).any()
    p, m = (rng.random(len(sub)) < 0.2), (rng.random(len(sub)) < 0.8)
    assert np.array_equal(inference.continuing(sub, p, m), _continuing_by_whole_volume(sub, p, m))


def test_anatomy_and_candidates_at_once_give_what_they_give_one_after_the_other():
    """locate_and_find: on a scan no longer than a cardiac scan the candidates are searched in
    a second thread while the anatomy is found; the result is that of the two stages run in
    turn (a chest CT: the candidates of its cardiac range)."""
    from CoronaryCalciumDINOLib.pipeline import candidates as cd
    from CoronaryCalciumDINOLib.pipeline import inference
    from CoronaryCalciumDINOLib.synth import generate_study

    for kw in ({"n_slices": 40}, {"n_slices": 90, "spacing": 3.0}):  # 120 mm: at once; 270 mm: a chest CT
        ct = generate_study(3, matrix=128, **kw).ct
        hu = np.asarray(ct.hu, np.float32)
        cfg = cd.CandidateConfig()
        anatomy, (z0, z1), got = inference.locate_and_find(hu, ct.spacing, cfg)
        ref_anatomy, (r0, r1) = inference.locate(hu, ct.spacing)
        ref = cd.find_candidates(hu[r0:r1], ct.spacing, cfg)
        assert (z0, z1) == (r0, r1)
        assert np.array_equal(anatomy.region, ref_anatomy.region)
        assert np.array_equal(got.ids, ref.ids) and np.array_equal(got.context, ref.context)
        assert np.array_equal(got.z, ref.z) and got.field == ref.field
