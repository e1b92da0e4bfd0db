"""The Slicer module's Compute in its own process (the library's command ``ccdino score``),
on real MRML (slicer-core) with stand-ins only for Qt and the application
(``slicer_module_stand_ins``):

* the progress lines the command prints (``PROGRESS <fraction> <message>``) read back;
* Compute on the real phantom through the process gives the scene what the pipeline gives
  in this process (labels, scores, slice probabilities, attention), and its temporary
  folder is removed;
* Cancel ends the process (terminate; kill after the grace period when it ignores that);
* a process that crashes or is killed (out of memory) gives a one-line error (in the panel:
  its status line and one dialog) and leaves the scene as it was;
* the command runs on Slicer's Python (PythonSlicer), never on the application itself.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("vtk")

from CoronaryCalciumDINOLib.cli.progress import (  # noqa: E402
    format_progress_line,
    parse_cuda_line,
    parse_progress_line,
    progress_line_printer,
)
from CoronaryCalciumDINOLib.errors import Cancelled, CCDinoError  # noqa: E402
from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, nodes_by_class  # noqa: E402
from slicer_module_stand_ins import load_module  # noqa: E402
from result_stand_ins import FakeResult as Result, small_ct  # noqa: E402

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


@pytest.fixture()
def env(monkeypatch):
    core = scene_logic.create_core_scene()
    module, app = load_module(monkeypatch, core)
    logic = module.CoronaryCalciumDINOLogic()
    monkeypatch.setattr(scene_logic, "_CUDA_AVAILABLE", scene_logic._CUDA_AVAILABLE)  # a run's CUDA note ends with the test
    yield types.SimpleNamespace(core=core, module=module, app=app, logic=logic)
    logic.closeSessions()


def _fake_command(tmp_path, monkeypatch, logic, body: str):
    """Make the logic run ``body`` (a Python script) instead of the library's command."""
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(body))
    monkeypatch.setattr(logic, "pythonCommand", lambda: [sys.executable, str(script)])


def _scene_state(scene):
    """Every node of the scene (ID, class, name, modified time) and each table's report text."""
    nodes = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        nodes.append((node.GetID(), node.GetClassName(), node.GetName(), node.GetMTime()))
    reports = [t.GetAttribute("CoronaryCalciumDINO.Report") for t in nodes_by_class(scene, "vtkMRMLTableNode")]
    return nodes, reports


# ----------------------------------------------------------------------------- progress lines


def test_progress_lines_read_back(capsys):
    assert format_progress_line(0.42, "detector 120/300 candidates") == "PROGRESS 0.4200 detector 120/300 candidates"
    assert parse_progress_line("PROGRESS 0.4200 detector 120/300 candidates") == (0.42, "detector 120/300 candidates")
    assert parse_progress_line(format_progress_line(1.7, "two\nlines")) == (1.0, "two lines")  # clipped, one line
    assert parse_progress_line("PROGRESS 1.0000") == (1.0, "")
    for other in ("ccdino: warning: PROGRESS 0.5 x", "PROGRESS nan x", "PROGRESS 2 x", "PROGRESS x y", "", "[ 42%] x"):
        assert parse_progress_line(other) is None, other
    assert (parse_cuda_line("CUDA 1"), parse_cuda_line("CUDA 0"), parse_cuda_line("CUDA yes")) == (True, False, None)
    progress_line_printer()(0.1, "183 candidates")
    assert capsys.readouterr().out == "PROGRESS 0.1000 183 candidates\n"


def test_scoring_parameters_become_the_command_s_options(env):
    from CoronaryCalciumDINOLib.scoring import ScoringOptions, ScoringParams

    logic = env.logic
    params = ScoringOptions(kvp=100, min_area_mm2=0.5, slice_correction=False, calibration_factor=0.8).resolve(None)
    args = logic.scoringArguments(params)
    assert args == ["--kvp", "100.0", "--min-area", "0.5", "--no-slice-correction", "--calibration-factor", "0.8"]
    assert logic.scoringArguments(ScoringParams()) == ["--min-area", "1.0"]
    with pytest.raises(CCDinoError, match="cannot be given to the scoring command"):
        logic.scoringArguments(ScoringParams(threshold_hu=150.0, band_edges_hu=(150.0, 200.0, 300.0, 400.0)))


# ----------------------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def phantom_ct():
    if not PHANTOM.is_dir():
        pytest.skip("phantom data not found")
    from CoronaryCalciumDINOLib.io import load_ct

    return load_ct(PHANTOM)


@pytest.mark.slow
def test_compute_in_a_process_loads_what_the_pipeline_gives(env, phantom_ct):
    pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.pipeline import load_bundle, run_pipeline
    from CoronaryCalciumDINOLib.scene.table import report_from_table

    logic, scene = env.logic, env.core.scene
    volume = ct_to_volume_node(scene, phantom_ct, "phantom")
    job = logic.startCompute(volume, device="cpu", attention=True)
    folder = job.folder
    assert os.path.isfile(os.path.join(folder, "volume.nrrd"))
    assert not any("torch" == name.split(".")[0] for name in job.args)  # the command, not an import here
    seen = []
    deadline = time.monotonic() + 600
    while job.poll():
        seen.append((job.fraction, job.message))
        assert time.monotonic() < deadline, "the compute process did not end"
        time.sleep(0.05)
    seen.append((job.fraction, job.message))
    assert job.error is None, job.error
    assert job.returncode == 0 and job.cuda is not None
    assert any(message.endswith(" candidates") for _f, message in seen)  # the first progress after the candidates
    assert seen[-1] == (1.0, "done")
    fractions = [f for f, _m in seen]
    assert fractions == sorted(fractions)

    outcome = logic.finishCompute(job)
    assert not os.path.exists(folder)  # the temporary folder is removed
    assert scene_logic.cuda_available() is job.cuda  # the process's CUDA check, kept for the panel

    # the same CT and parameters through the pipeline in this process
    ct = env.module._lib().scene.volume.volume_node_to_ct(volume)
    params = scene_logic.scoring_params_for(volume, None)
    assert params.kvp is not None  # the phantom's kVp went to the command as --kvp
    res = run_pipeline(ct, load_bundle(None), device="cpu", params=params, attention=True)
    got = outcome.pipeline_result
    assert np.array_equal(got.labels, res.labels)
    assert res.score.total.agatston > 0
    report = report_from_table(outcome.score_table_node)
    assert report["total"]["agatston"] == pytest.approx(res.score.total.agatston, rel=1e-9)
    for artery, values in report["arteries"].items():
        assert values["agatston"] == pytest.approx(res.score.arteries[artery].agatston, rel=1e-9)
        assert values["lesions"] == res.score.arteries[artery].lesions
    assert report["kvp"] == params.kvp and report["threshold_hu"] == params.threshold_hu
    assert np.allclose(got.slice_probabilities, res.slice_probabilities, atol=1e-6)
    assert np.array_equal(got.selected, res.selected)
    assert [s["probability"] for s in report["slices"]] == pytest.approx([float(p) for p in res.slice_probabilities], abs=1e-6)
    assert report["model"]["taken_for_phantom"] == bool(res.counts["phantom"])
    assert got.attention.shape == res.attention.shape  # quantised by the command (io.attention)
    for h in range(res.attention.shape[0]):
        assert np.abs(got.attention.head(h) - res.attention[h]).max() <= got.attention.step[h] / 2 + 1e-6
    assert outcome.attention_node is not None
    assert sorted(report["warnings"]) == sorted([*ct.warnings, *res.warnings])


def test_cancel_ends_the_command_s_process(env):
    logic, scene = env.logic, env.core.scene
    volume = ct_to_volume_node(scene, small_ct(), "small")
    before = _scene_state(scene)
    job = logic.startCompute(volume, device="cpu", attention=False)
    assert job.poll()  # the command runs (it is still importing its modules)
    job.cancel()
    assert job.message == "Cancelling..."
    job.wait(60)
    assert job.process.poll() is not None, "the process still runs after Cancel"
    assert isinstance(job.error, Cancelled)
    assert not os.path.exists(job.folder)
    with pytest.raises(Cancelled):
        logic.finishCompute(job)
    assert _scene_state(scene) == before


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is TerminateProcess on Windows: it cannot be ignored")
def test_cancel_kills_a_process_that_does_not_end(env, tmp_path, monkeypatch):
    logic = env.logic
    _fake_command(tmp_path, monkeypatch, logic, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("PROGRESS 0.1000 183 candidates", flush=True)
        time.sleep(120)
    """)
    logic.cancelGraceSeconds = 0.5
    volume = ct_to_volume_node(env.core.scene, small_ct(), "small")
    job = logic.startCompute(volume)
    deadline = time.monotonic() + 60
    while job.poll() and job.fraction < 0.1:  # until the command ignores SIGTERM
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job.message == "183 candidates"
    started = time.monotonic()
    job.cancel()
    job.wait(30)
    assert job.returncode == -signal.SIGKILL  # terminate was ignored: killed after the grace period
    assert 0.4 < time.monotonic() - started < 20
    assert isinstance(job.error, Cancelled) and not os.path.exists(job.folder)


# ----------------------------------------------------------------------------- crashes

CRASHES = {
    "killed": ("os.kill(os.getpid(), signal.SIGKILL)", "the AI process was ended by SIGKILL (out of memory?); the scene is unchanged"),
    "abort": ("os.abort()", "the AI process was ended by SIGABRT; the scene is unchanged"),
    "memory": ("raise MemoryError('cannot allocate 2.1 GB')",
               "the AI process failed (exit code 1): MemoryError: cannot allocate 2.1 GB; the scene is unchanged"),
    "error": ("print('ccdino: error: the CT holds 3 slices', file=sys.stderr); sys.exit(2)", "the CT holds 3 slices"),
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crashing_process_gives_one_line_and_leaves_the_scene(env, tmp_path, monkeypatch, crash):
    if os.name == "nt" and crash in ("killed", "abort"):
        pytest.skip("POSIX signals")
    logic, scene = env.logic, env.core.scene
    volume = ct_to_volume_node(scene, small_ct(), "small")
    first = logic.compute(volume, segmentFn=Result)  # a result the crash must not touch
    labels_before = env.module._lib().scene.segmentation.read_labels(first.segmentation_node, volume)[0].copy()
    before = _scene_state(scene)

    statement, expected = CRASHES[crash]
    _fake_command(tmp_path, monkeypatch, logic, f"""
        import os, signal, sys
        print("CUDA 0", flush=True)
        print("PROGRESS 0.1000 183 candidates", flush=True)
        {statement}
    """)
    job = logic.startCompute(volume)
    job.wait(60)
    assert job.message == "183 candidates"
    assert isinstance(job.error, CCDinoError) and not isinstance(job.error, Cancelled)
    assert str(job.error) == expected
    assert "\n" not in str(job.error)
    assert not os.path.exists(job.folder)
    with pytest.raises(CCDinoError) as raised:
        logic.finishCompute(job)
    assert str(raised.value) == expected
    assert _scene_state(scene) == before
    labels_after = env.module._lib().scene.segmentation.read_labels(first.segmentation_node, volume)[0]
    assert np.array_equal(labels_after, labels_before)


def test_a_process_without_result_files_is_an_error(env, tmp_path, monkeypatch):
    logic, scene = env.logic, env.core.scene
    _fake_command(tmp_path, monkeypatch, logic, """
        print("PROGRESS 1.0000 done", flush=True)
    """)
    volume = ct_to_volume_node(scene, small_ct(), "small")
    before = _scene_state(scene)
    job = logic.startCompute(volume)
    job.wait(60)
    assert job.error is None and job.returncode == 0
    with pytest.raises(CCDinoError, match="^the compute process left no readable result: "):
        logic.finishCompute(job)
    assert not os.path.exists(job.folder)
    assert _scene_state(scene) == before


def test_compute_in_a_process_on_a_small_ct(env, monkeypatch):
    """The default run's check of the real command in its process (the phantom's is slow):
    a small CT, scored as the pipeline scores it in this process; the attention comes
    quantised by the command, and this (the main) thread quantises nothing."""
    pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.io.attention import AttentionMaps
    from CoronaryCalciumDINOLib.pipeline import run_pipeline
    from CoronaryCalciumDINOLib.scene.table import report_from_table

    logic, scene = env.logic, env.core.scene
    ct = small_ct()
    volume = ct_to_volume_node(scene, ct, "small")
    job = logic.startCompute(volume, device="cpu", attention=True)
    assert "--attention-codes" in job.args and "--attention" not in job.args
    job.wait(600)
    assert job.error is None, job.error

    def no_quantising_here(self, *args, **kwargs):
        raise AssertionError("the main thread quantised attention maps")

    with monkeypatch.context() as m:
        m.setattr(AttentionMaps, "__init__", no_quantising_here)
        outcome = logic.finishCompute(job)
    assert not os.path.exists(job.folder)
    res = run_pipeline(ct, None, device="cpu", params=scene_logic.scoring_params_for(volume, None), attention=True)
    assert np.array_equal(outcome.pipeline_result.labels, res.labels)
    assert np.array_equal(outcome.pipeline_result.selected, res.selected)
    assert report_from_table(outcome.score_table_node)["total"]["agatston"] == pytest.approx(res.score.total.agatston, rel=1e-9)
    kept = logic._attention[volume.GetID()]
    assert kept is outcome.pipeline_result.attention and isinstance(kept, AttentionMaps)
    assert kept.shape == res.attention.shape  # (this CT's maps may be empty: the phantom's test has others)
    for h in range(res.attention.shape[0]):
        assert np.abs(kept.head(h) - res.attention[h]).max() <= kept.step[h] / 2 + 1e-6
    from vtk.util import numpy_support as ns

    shown = ns.vtk_to_numpy(outcome.attention_node.GetImageData().GetPointData().GetScalars()).reshape(ct.shape)
    assert np.array_equal(shown, kept.head(0))


def test_the_command_runs_on_slicer_s_python(env, tmp_path, monkeypatch):
    """PythonSlicer from the PATH, else from Slicer's bin folder; never the application
    itself; this Python outside Slicer."""
    logic = env.logic
    monkeypatch.setattr(env.module.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer" if name == "PythonSlicer" else None)
    assert logic.pythonCommand() == ["/opt/Slicer/bin/PythonSlicer", "-m", "CoronaryCalciumDINOLib.cli"]
    monkeypatch.setattr(env.module.shutil, "which", lambda name: None)
    assert logic.pythonCommand()[0] == sys.executable  # no Slicer application (slicer-core)
    monkeypatch.setattr(env.app, "slicerHome", str(tmp_path), raising=False)
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        logic.pythonCommand()
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    python.write_text("")
    assert logic.pythonCommand()[0] == str(python)


def test_the_panel_shows_a_crash_in_one_line(env, tmp_path, monkeypatch):
    """The panel's timer polls the process (never waits on it); a crash ends in one status
    line and one error dialog, the buttons back, the scene unchanged."""
    logic, scene, module = env.logic, env.core.scene, env.module
    volume = ct_to_volume_node(scene, small_ct(), "small")
    _fake_command(tmp_path, monkeypatch, logic, """
        import os, signal, time
        print("CUDA 0", flush=True)
        print("PROGRESS 0.6000 detector 183/183 candidates", flush=True)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    dialogs = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: dialogs.append(text), raising=False)

    class Value:
        def __init__(self):
            self.value, self.text, self.visible = 0, "", True

        def setValue(self, value):
            self.value = value

    panel = types.SimpleNamespace(
        ui=types.SimpleNamespace(progressBar=Value(), statusLabel=Value()),
        logic=logic, _timer=module.qt.QTimer(), buttons=[], warnings=[],
    )
    panel._updateButtons = lambda: panel.buttons.append(panel._job is None)
    panel._updateDeviceWarning = lambda: panel.warnings.append(logic.deviceWarning("cuda"))
    before = _scene_state(scene)
    panel._job = logic.startCompute(volume)
    panel._timer.start()
    seen = set()
    deadline = time.monotonic() + 60
    while panel._job is not None:
        assert time.monotonic() < deadline
        module.CoronaryCalciumDINOWidget._pollJob(panel)
        seen.add((panel.ui.progressBar.value, panel.ui.statusLabel.text))
        time.sleep(0.02)
    assert (60, "detector 183/183 candidates") in seen  # polls returned while it ran; the bar followed it
    expected = "the AI process was ended by SIGKILL (out of memory?); the scene is unchanged"
    assert panel.ui.statusLabel.text == expected and panel.ui.progressBar.value == 0
    assert dialogs == ["Compute failed: " + expected]
    assert not panel._timer.active and panel.buttons == [True]
    assert "No CUDA GPU" in panel.warnings[-1]  # the process's CUDA check reached the panel
    assert _scene_state(scene) == before


def test_a_process_that_cannot_be_followed_is_ended_with_one_line(env, tmp_path, monkeypatch):
    """When reading the process's output fails, poll ends the run: the process is killed,
    the temporary folder removed, one line said, and later polls change nothing."""
    logic, scene = env.logic, env.core.scene
    volume = ct_to_volume_node(scene, small_ct(), "small")
    before = _scene_state(scene)
    _fake_command(tmp_path, monkeypatch, logic, """
        import time
        print("PROGRESS 0.1000 183 candidates", flush=True)
        time.sleep(120)
    """)
    job = logic.startCompute(volume)

    def unreadable(self, final=False):
        raise UnicodeDecodeError("utf-8", b"\\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(env.module._OutputLines, "read", unreadable)
    assert job.poll() is False
    assert job.process.poll() is not None  # killed, not left running
    assert isinstance(job.error, CCDinoError) and not isinstance(job.error, Cancelled)
    assert "could not be followed" in str(job.error) and "\n" not in str(job.error)
    assert not os.path.exists(job.folder)
    assert job.poll() is False and _scene_state(scene) == before
