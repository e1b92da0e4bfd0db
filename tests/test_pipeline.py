"""Inference pipeline on tiny bundles: outputs, geometry, gating, HU restriction, progress,
cancel, attention; the ``score`` command's AI outputs; the default bundle on the phantom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.errors import Cancelled, InputError  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.models.bundle import save_random_bundle  # noqa: E402
from CoronaryCalciumDINOLib.pipeline import PipelineResult, load_bundle, run_pipeline  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams, score  # noqa: E402

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


class ConstantSegmenter(torch.nn.Module):
    """Predicts one class everywhere (to test the plumbing, not a model)."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(x.shape[0], 5, *x.shape[2:], device=x.device)
        out[:, self.cls] = 1.0
        return out


class CalciumWindowSegmenter(torch.nn.Module):
    """Class 3 where the centre slice's calcium window (HU > 130) is positive."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel

    def forward(self, x):
        out = torch.zeros(x.shape[0], 5, *x.shape[2:], device=x.device)
        out[:, 0] = 0.5
        out[:, 3] = (x[:, self.channel] > 0).float()
        return out


def _ct(nz=8, n=48, seed=0) -> CTVolume:
    """A 1 mm-pixel toy CT: soft-tissue disc in air, 3x3-pixel dense spots of rising HU."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((nz, n, n), -1000.0, np.float32)
    hu[:, (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.45 * n) ** 2] = 40.0
    hu += rng.normal(0, 5, hu.shape).astype(np.float32)
    for z in range(nz):
        y, x = 10 + 3 * z % 25, 12 + 2 * z % 20
        hu[z, y : y + 3, x : x + 3] = 150.0 + 60.0 * z
        hu[z, 30:32, 30:33] = 135.0  # small spot just above 130 HU
    return CTVolume(hu=hu, spacing=(3.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    # segmenter field 64 mm at 1 mm pixels = 64 px = its input size: no resampling
    return save_random_bundle(
        tmp_path_factory.mktemp("pipe") / "b", input_size=32, threshold=0.0,
        segmenter={"input_size": 64, "crop_mm": 64.0, "channels": [8, 16], "strides": [2], "neighbours": 1},
    )


def test_outputs_types_shapes(bundle_dir):
    ct = _ct()
    res = run_pipeline(ct, load_bundle(bundle_dir), device="cpu")
    assert isinstance(res, PipelineResult)
    assert res.labels.dtype == np.uint8 and res.labels.shape == ct.shape
    assert res.slice_probabilities.dtype == np.float32 and res.slice_probabilities.shape == (ct.shape[0],)
    assert np.all((res.slice_probabilities >= 0) & (res.slice_probabilities <= 1))
    assert res.selected.dtype == bool and res.selected.all()  # threshold 0 selects every slice
    assert res.attention is None
    assert set(res.model_info) == {"name", "version", "sha256", "trained_on"}
    assert res.labels.max() <= 4
    # the returned score is the score of the returned labels
    ref = score(ct.hu, res.labels, ct.spacing)
    assert res.score.total.agatston == pytest.approx(ref.total.agatston)
    extra = res.report_extra()
    assert [s["index"] for s in extra["slices"]] == list(range(ct.shape[0]))
    assert extra["model"]["name"] == "random-untrained"


def test_labels_only_on_selected_slices_and_calcium_hu(bundle_dir):
    ct = _ct()
    b = load_bundle(bundle_dir)
    b.segmenter = ConstantSegmenter(2)
    probs = run_pipeline(ct, b, device="cpu").slice_probabilities
    assert np.unique(probs).size > 2, "toy slices should give different probabilities"
    thr = float(np.sort(probs)[len(probs) // 2])
    b.manifest["detector"]["threshold"] = thr
    res = run_pipeline(ct, b, device="cpu")
    sel = probs >= thr
    np.testing.assert_array_equal(res.selected, sel)
    assert 0 < sel.sum() < len(sel)
    # the constant segmenter covers the whole 48 mm image (field 64 mm), so the labels must
    # be exactly: 2 where HU >= 130 on selected slices, 0 elsewhere
    expected = np.where((ct.hu >= 130) & sel[:, None, None], 2, 0)
    np.testing.assert_array_equal(res.labels, expected)
    # a higher scoring threshold keeps fewer voxels, exactly those >= it
    res300 = run_pipeline(ct, b, device="cpu", params=ScoringParams(threshold_hu=300.0, band_edges_hu=(300, 400, 500, 600)))
    np.testing.assert_array_equal(res300.labels, np.where((ct.hu >= 300) & sel[:, None, None], 2, 0))
    # the "UNET on every slice" mode labels every slice
    res_all = run_pipeline(ct, b, device="cpu", all_slices=True)
    assert res_all.selected.all()
    np.testing.assert_array_equal(res_all.labels, np.where(ct.hu >= 130, 2, 0))


def test_segmenter_geometry_round_trip(bundle_dir):
    """Input field -> segmenter -> CT grid puts labels back on the same voxels."""
    ct = _ct()
    b = load_bundle(bundle_dir)
    b.segmenter = CalciumWindowSegmenter(channel=3 + 2)  # centre slice (of 3), calcium window
    res = run_pipeline(ct, b, device="cpu")
    np.testing.assert_array_equal(res.labels, np.where(ct.hu > 130, 3, 0))


def test_segmenter_geometry_with_resampling(tmp_path):
    """Field 128 mm at 1 mm = 128 px resampled to 64 px: labels stay on the dense voxels.

    The 3x3 spots are raised to >= 450 HU so that after 2x antialiased shrinking (a
    3x3 spot keeps at least (7/8)^2 of its contrast) they stay above 130 HU.
    """
    ct = _ct()
    ct.hu[ct.hu >= 150] += 300.0
    b = load_bundle(save_random_bundle(
        tmp_path / "b2", input_size=32, threshold=0.0,
        segmenter={"input_size": 64, "crop_mm": 128.0, "channels": [8, 16], "strides": [2], "neighbours": 0},
    ))
    b.segmenter = CalciumWindowSegmenter(channel=2)
    res = run_pipeline(ct, b, device="cpu")
    dense = ct.hu >= 130
    assert not np.any(res.labels[~dense])  # HU restriction
    from scipy import ndimage

    for z in range(ct.shape[0]):  # every 3x3 spot gets labelled
        comps, n = ndimage.label(ct.hu[z] >= 150)
        for k in range(1, n + 1):
            assert np.any(res.labels[z][comps == k] == 3), (z, k)


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
    probs = run_pipeline(ct, b, device="cpu").slice_probabilities
    b.manifest["detector"]["threshold"] = float(np.sort(probs)[len(probs) // 2])
    res = run_pipeline(ct, b, device="cpu", attention=True)
    heads = b.backbone.blocks[-1].attn.num_heads
    assert res.attention.shape == (heads + 1, *ct.shape) and res.attention.dtype == np.float32
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
    labels = read_label_file(out / "toy.labels.nrrd", read_volume_file(ct_path))
    assert labels.shape == ct.shape and not np.any(labels[ct.hu < 130])
    assert (out / "toy.seg.nrrd").is_file()
    heads = load_bundle(bundle_dir).backbone.blocks[-1].attn.num_heads
    assert (tmp_path / "att.nrrd").is_file()
    for h in range(1, heads + 1):
        assert (tmp_path / f"att.head{h}.nrrd").is_file()


def test_default_bundle_on_phantom():
    """The shipped bundle loads, verifies and runs on the real phantom scan.

    Its numbers are recorded in docs/model.md; here only what must hold for any model:
    labels only on selected slices and only at >= 130 HU, consistent score.
    """
    from CoronaryCalciumDINOLib.io import load_ct

    ct = load_ct(PHANTOM)
    res = run_pipeline(ct, load_bundle(None), device="cpu")
    assert res.labels.shape == ct.shape
    assert not np.any(res.labels[~res.selected])
    assert not np.any(res.labels[ct.hu < 130])
    assert res.score.total.agatston == pytest.approx(score(ct.hu, res.labels, ct.spacing).total.agatston)


def test_evaluation_gated_equals_pipeline_run(bundle_dir):
    """evaluate_study derives the gated result from one all-slice run: it must equal a
    separate detector-gated run of the pipeline."""
    from CoronaryCalciumDINOLib.data.studies import Study
    from CoronaryCalciumDINOLib.evaluation.pipeline_eval import evaluate_study, summarise

    ct = _ct()
    b = load_bundle(bundle_dir)
    b.segmenter = CalciumWindowSegmenter(channel=5)
    probs = run_pipeline(ct, b, device="cpu").slice_probabilities
    b.manifest["detector"]["threshold"] = float(np.sort(probs)[len(probs) // 2])
    ref_labels = np.where(ct.hu >= 150, 1, 0).astype(np.uint8)  # the spots, as LM
    outcome = evaluate_study(Study(id="toy", ct=ct, labels=ref_labels), b, device="cpu")
    gated = run_pipeline(ct, b, device="cpu")
    assert outcome.pipeline["total"] == pytest.approx(gated.score.total.agatston)
    assert outcome.pipeline["LCX"] == pytest.approx(gated.score.arteries["LCX"].agatston)
    np.testing.assert_array_equal(outcome.selected, gated.selected)
    # every slice has a >= 150 HU spot, so every slice is a reference positive
    assert outcome.positive.all()
    assert outcome.reference["LM"] == pytest.approx(score(ct.hu, ref_labels, ct.spacing).total.agatston)
    # segmenter on all slices labels the same voxels on more slices: never a lower score
    assert outcome.unet_all["total"] >= outcome.pipeline["total"]
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
