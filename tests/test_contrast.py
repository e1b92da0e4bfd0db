"""The contrast-enhanced-CT check: no warning on non-contrast scans, a loud one on contrast.

Non-contrast inputs: synthetic studies (blood 36-50 HU), the real QRM phantom series and the
two real slices of a patient's non-contrast cardiac CT (Testing/Data). Contrast inputs are
built from them by raising the blood pool to about 300 HU, as iodine does in a CT
angiography (200-500 HU): on a synthetic study every heart-mask voxel of 0-100 HU (chambers,
great-vessel roots, myocardium); on the real slices the 0-100 HU tissue within 55 mm of the
heart centre read off the slices (tests/test_slices.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from CoronaryCalciumDINOLib.cli import main
from CoronaryCalciumDINOLib.io import CTVolume, load_ct, write_volume
from CoronaryCalciumDINOLib.pipeline.contrast import MIN_VOLUME_ML, blood_pool, check_contrast, contrast_warning
from CoronaryCalciumDINOLib.synth import render_study

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"
PHANTOM = DATA / "qrm-phantom-canon"
REAL = DATA / "real-cardiac-ct-slices"
REAL_HEART_CENTRE = (245, 270)  # (row, column) of the heart on the real slices


def raise_blood_pool(hu: np.ndarray, heart: np.ndarray, level: float = 300.0, seed: int = 0) -> np.ndarray:
    """Copy of ``hu`` whose heart-mask voxels of 0-100 HU are set to ``level`` + 20 HU noise."""
    out = np.array(hu, dtype=np.float32, copy=True)
    pool = heart.astype(bool) & (hu >= 0) & (hu <= 100)
    out[pool] = level + np.random.default_rng(seed).normal(0.0, 20.0, int(pool.sum()))
    return np.rint(out)


@pytest.fixture(scope="module")
def study():
    """A small synthetic non-contrast study (128 x 128, its default slice count, plaques)."""
    return render_study(3, matrix=128, plaques=True).study


@pytest.fixture(scope="module")
def contrast_hu(study):
    return raise_blood_pool(study.ct.hu, study.heart)


@pytest.fixture(scope="module")
def real_slices():
    return load_ct(REAL)


def real_with_contrast(hu2d: np.ndarray, spacing_yx) -> np.ndarray:
    """A real slice whose heart (0-100 HU after 2.5 mm smoothing, within 55 mm of the heart
    centre) is raised by 255 HU (blood 45 -> 300), keeping the scanner's noise."""
    yy, xx = np.mgrid[: hu2d.shape[0], : hu2d.shape[1]]
    cy, cx = REAL_HEART_CENTRE
    near = ((yy - cy) * spacing_yx[0]) ** 2 + ((xx - cx) * spacing_yx[1]) ** 2 <= 55.0**2
    smooth = ndimage.uniform_filter(hu2d.astype(np.float32), 5)
    pool = near & (smooth >= 0) & (smooth <= 100)
    assert pool.sum() * spacing_yx[0] * spacing_yx[1] > 40 * 100  # a heart's worth: > 40 cm^2
    return np.where(pool, hu2d + 255.0, hu2d).astype(np.float32)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_non_contrast_study_gives_no_warning(study):
    assert contrast_warning(study.ct.hu, study.ct.spacing) is None
    m = blood_pool(study.ct.hu, study.ct.spacing)
    assert m["volume_ml"] < 0.25 * MIN_VOLUME_ML  # far from the threshold, not just under it


def test_synthetic_contrast_study_gives_the_warning(study, contrast_hu):
    message = contrast_warning(contrast_hu, study.ct.spacing)
    assert message is not None
    assert "contrast-enhanced CT" in message and "not a calcium-scoring scan" in message
    assert "not valid" in message and "\n" not in message
    m = blood_pool(contrast_hu, study.ct.spacing)
    assert m["volume_ml"] > 5 * MIN_VOLUME_ML
    assert 270 <= m["median_hu"] <= 330  # the quoted blood pool is the raised ~300 HU
    quoted = int(message.split("about ")[1].split(" HU")[0])
    assert 270 <= quoted <= 330


def test_weakly_enhanced_blood_pool_is_flagged_and_unenhanced_is_not(study):
    # 230 HU is at the low end of an arterial phase; 100 HU is not a blood pool of contrast.
    assert contrast_warning(raise_blood_pool(study.ct.hu, study.heart, 230.0), study.ct.spacing) is not None
    assert contrast_warning(raise_blood_pool(study.ct.hu, study.heart, 100.0), study.ct.spacing) is None


def test_single_slices(study, contrast_hu):
    mid = study.ct.shape[0] // 2
    assert contrast_warning(contrast_hu[mid : mid + 1], study.ct.spacing) is not None
    assert contrast_warning(contrast_hu[mid], study.ct.spacing[1:]) is not None  # (y, x) slice
    assert contrast_warning(study.ct.hu[mid : mid + 1], study.ct.spacing) is None


def test_bone_is_not_blood_pool_but_orientation_matters(study):
    """The vertebral bodies (about 200-250 HU after averaging) are left out by the
    mediastinal window only: in the canonical layout they lie posteriorly. Stored with the
    rows reversed (posterior at row 0) the array alone would look enhanced; check_contrast
    reads the direction and flips it back."""
    flipped = np.ascontiguousarray(study.ct.hu[:, ::-1])
    assert contrast_warning(flipped, study.ct.spacing) is not None  # the spine inside the window
    direction = np.diag([1.0, -1.0, 1.0])  # rows run towards anterior
    ct = CTVolume(hu=flipped, spacing=study.ct.spacing, direction=direction)
    assert check_contrast(ct) is None and ct.warnings == []


def test_check_contrast_adds_the_warning_once(study, contrast_hu):
    ct = CTVolume(hu=contrast_hu, spacing=study.ct.spacing, warnings=["earlier warning"])
    message = check_contrast(ct)
    assert message and ct.warnings == ["earlier warning", message]
    assert check_contrast(ct) == message and ct.warnings == ["earlier warning", message]
    assert ct.meta["contrast_warning"] == message


# ----------------------------------------------------------------------------- real data


def test_real_phantom_series_gives_no_warning():
    ct = load_ct(PHANTOM)
    assert contrast_warning(ct.hu, ct.spacing) is None
    assert check_contrast(ct) is None
    assert blood_pool(ct.hu, ct.spacing)["volume_ml"] < 0.5 * MIN_VOLUME_ML


def test_real_non_contrast_slices_give_no_warning(real_slices):
    ct = real_slices
    assert ct.shape[0] == 2
    assert contrast_warning(ct.hu, ct.spacing) is None
    for k in range(ct.shape[0]):
        assert contrast_warning(ct.hu[k : k + 1], ct.spacing) is None
        assert contrast_warning(ct.hu[k], ct.spacing[1:]) is None


def test_real_slice_with_contrast_gives_the_warning(real_slices):
    ct = real_slices
    for k in range(ct.shape[0]):
        raised = real_with_contrast(ct.hu[k], ct.spacing[1:])
        assert contrast_warning(raised[None], ct.spacing) is not None


def test_cost_on_a_512_matrix_volume(study):
    import time

    rng = np.random.default_rng(1)
    hu = np.repeat(np.kron(study.ct.hu[10:26], np.ones((4, 4), np.float32)), 4, axis=0)[:64]  # 64 x 512 x 512
    hu += rng.normal(0.0, 5.0, hu.shape[1:]).astype(np.float32)
    spacing = (3.0, study.ct.spacing[1] / 4, study.ct.spacing[2] / 4)
    contrast_warning(hu, spacing)
    t = time.perf_counter()
    contrast_warning(hu, spacing)
    assert time.perf_counter() - t < 2.0  # about 0.1 s on one core; generous for loaded CI


# ----------------------------------------------------------------------------- command line


def _write_case(tmp_path: Path, study, hu: np.ndarray, name: str) -> tuple[Path, Path]:
    ct = study.ct
    ct_path = write_volume(hu.astype(np.int16), ct, tmp_path / f"{name}.nrrd")
    lab_path = write_volume(np.zeros(ct.shape, np.uint8), ct, tmp_path / f"{name}_labels.nrrd")
    return ct_path, lab_path


def test_cli_score_labels_warns_on_contrast_ct(study, contrast_hu, tmp_path, capsys):
    ct_path, lab_path = _write_case(tmp_path, study, contrast_hu, "cta")
    rc = main(["score", str(ct_path), "--labels", str(lab_path), "--json", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ccdino: warning:") and "contrast-enhanced CT" in line]
    assert len(lines) == 1 and lines[0].startswith("ccdino: warning: the blood pool measures about")
    report = json.loads((tmp_path / "r.json").read_text())
    contrast = [w for w in report["warnings"] if "contrast-enhanced CT" in w]
    assert len(contrast) == 1 and "not valid" in contrast[0]
    assert lines[0] == f"ccdino: warning: {contrast[0]}"


def test_cli_score_labels_is_quiet_on_non_contrast_ct(study, tmp_path, capsys):
    ct_path, lab_path = _write_case(tmp_path, study, study.ct.hu, "plain")
    rc = main(["score", str(ct_path), "--labels", str(lab_path), "--json", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0
    assert "contrast" not in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert not any("contrast" in w for w in report["warnings"])


class _FakePipelineResult:
    """What ``run_pipeline`` returns, with empty labels (the AI path without torch)."""

    def __init__(self, ct, warnings):
        from CoronaryCalciumDINOLib.scoring import score

        self.labels = np.zeros(ct.shape, np.uint8)
        self.score = score(ct.hu, self.labels, ct.spacing)
        self.attention = None
        self.warnings = list(warnings)

    def report_extra(self):
        return {"model": {"name": "fake"}}


@pytest.mark.parametrize("pipeline_checks_too", [False, True])
def test_cli_score_ai_path_warns_once_on_contrast_ct(study, contrast_hu, tmp_path, capsys, monkeypatch, pipeline_checks_too):
    """Without --labels the same CT warning is printed and reported exactly once, also when
    the pipeline runs the contrast check again (as run_pipeline does)."""
    import CoronaryCalciumDINOLib.pipeline as pipeline

    def fake_run_pipeline(ct, bundle, **kwargs):
        notes = ["a pipeline note"]
        if pipeline_checks_too:
            check_contrast(ct)
        return _FakePipelineResult(ct, notes)

    monkeypatch.setattr(pipeline, "load_bundle", lambda path: object())
    monkeypatch.setattr(pipeline, "run_pipeline", fake_run_pipeline)
    ct_path, _ = _write_case(tmp_path, study, contrast_hu, "cta")
    rc = main(["score", str(ct_path), "--json", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    printed = [line for line in err.splitlines() if line.startswith("ccdino: warning:")]
    assert len([line for line in printed if "contrast-enhanced CT" in line]) == 1
    assert "ccdino: warning: a pipeline note" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert len([w for w in report["warnings"] if "contrast-enhanced CT" in w]) == 1
    assert "a pipeline note" in report["warnings"]


def test_batch_with_labels_reports_contrast(study, contrast_hu, tmp_path):
    from CoronaryCalciumDINOLib.batch import run_batch

    inp, labels, out = tmp_path / "in", tmp_path / "labels", tmp_path / "out"
    inp.mkdir()
    labels.mkdir()
    write_volume(contrast_hu.astype(np.int16), study.ct, inp / "cta.nrrd")
    write_volume(study.ct.hu.astype(np.int16), study.ct, inp / "plain.nrrd")
    for name in ("cta", "plain"):
        write_volume(np.zeros(study.ct.shape, np.uint8), study.ct, labels / f"{name}.nrrd")
    rows = run_batch(inp, out, labels_dir=labels)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    cta = json.loads((out / "cta.json").read_text())
    plain = json.loads((out / "plain.json").read_text())
    assert any("contrast-enhanced CT" in w for w in cta["warnings"])
    assert not any("contrast" in w for w in plain["warnings"])


# ----------------------------------------------------------------------------- Slicer glue


class _Known:
    """PipelineResult-like result with empty labels."""

    def __init__(self, ct):
        from CoronaryCalciumDINOLib.scoring import score

        self.labels = np.zeros(ct.shape, np.uint8)
        self.score = score(ct.hu, self.labels, ct.spacing)
        self.slice_probabilities = np.zeros(ct.shape[0], np.float32)
        self.selected = np.zeros(ct.shape[0], bool)
        self.attention = None
        self.warnings = ["a pipeline note"]


def test_scene_compute_and_rescore_report_contrast(study, contrast_hu):
    pytest.importorskip("slicer")
    from CoronaryCalciumDINOLib.scene import logic as scene_logic
    from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node

    core = scene_logic.create_core_scene()
    cta = CTVolume(hu=contrast_hu, spacing=study.ct.spacing, origin=study.ct.origin, direction=study.ct.direction)
    volume = ct_to_volume_node(core.scene, cta, "cta")
    out = scene_logic.compute(core.scene, volume, segment_fn=_Known)
    contrast = [w for w in out.report["warnings"] if "contrast-enhanced CT" in w]
    assert len(contrast) == 1 and "a pipeline note" in out.report["warnings"]
    text = scene_logic.warnings_text(out.report)
    assert text.startswith("Warning: ") and contrast[0] in text
    again = scene_logic.rescore(out.segmentation_node, volume)
    assert [w for w in again["warnings"] if "contrast-enhanced CT" in w] == contrast

    plain = ct_to_volume_node(core.scene, study.ct, "plain")
    out = scene_logic.compute(core.scene, plain, segment_fn=_Known)
    assert not any("contrast" in w for w in out.report["warnings"])
    assert scene_logic.warnings_text({"warnings": []}) == ""


def test_run_pipeline_puts_the_contrast_warning_on_the_ct(study, contrast_hu, tmp_path):
    """The real pipeline checks the CT too: its warning joins ct.warnings once, not the
    run's own notes (which every report adds next to ct.warnings)."""
    pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.io.volume import CTVolume
    from CoronaryCalciumDINOLib.models.bundle import save_random_bundle
    from CoronaryCalciumDINOLib.pipeline import load_bundle, run_pipeline

    ct = CTVolume(hu=contrast_hu, spacing=study.ct.spacing)
    res = run_pipeline(ct, load_bundle(save_random_bundle(tmp_path / "b", threshold=0.99)), device="cpu")
    assert len([w for w in ct.warnings if "contrast-enhanced CT" in w]) == 1
    assert not any("contrast" in w for w in res.warnings)
