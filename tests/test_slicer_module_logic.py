"""The Slicer module's Logic on real MRML (slicer-core), with stand-ins only for Qt and the
application (``slicer_module_stand_ins``):

* opening the panel never imports torch; the CUDA check comes with the first pipeline run
  and is cached;
* the edited-segments question is asked before the wait cursor goes on;
* the layout switches to the table layout only for a new result, never on a later Compute
  or on Rescore;
* the Segment Editor intensity mask set by the module is put back once the editor works on
  another segmentation;
* the first-use install names every missing package and pins the installed torch;
* a skipped self-test is reported as skipped, not raised.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.edits import edited_segments  # noqa: E402
from CoronaryCalciumDINOLib.scene.segmentation import write_segment_mask  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node  # noqa: E402
from slicer_module_stand_ins import load_module  # noqa: E402
from result_stand_ins import FakeResult, small_ct  # noqa: E402

TESTS = Path(__file__).resolve().parent


@pytest.fixture()
def env(monkeypatch):
    core = scene_logic.create_core_scene()
    module, app = load_module(monkeypatch, core)
    volume = ct_to_volume_node(core.scene, small_ct(), "small")
    logic = module.CoronaryCalciumDINOLogic()
    yield types.SimpleNamespace(core=core, module=module, app=app, volume=volume, logic=logic)
    logic.closeSessions()
    logic.restoreSegmentEditorMask()


# ----------------------------------------------------------------------------- torch, CUDA


PANEL_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    import pytest
    sys.path.insert(0, {tests!r})
    from CoronaryCalciumDINOLib.scene import logic as scene_logic
    from slicer_module_stand_ins import load_module

    with pytest.MonkeyPatch.context() as mp:
        module, app = load_module(mp, scene_logic.create_core_scene())
        logic = module.CoronaryCalciumDINOLogic()
        module._lib()  # what setup() imports
        warnings = [logic.deviceWarning(d) for d in ("auto", "cpu", "cuda", "auto")]
        assert "torch" not in sys.modules, "opening the panel imported torch"
        assert warnings == ["", "", "", ""], warnings  # nothing known before the first run
        assert scene_logic.cuda_available() is None
        found = scene_logic.probe_cuda()  # what the first pipeline run does (its thread)
        assert "torch" in sys.modules and found is not None
        import torch
        def no_second_check():
            raise AssertionError("CUDA checked twice")
        torch.cuda.is_available = no_second_check
        assert scene_logic.probe_cuda() is found  # cached
        for device in ("auto", "cuda"):
            text = logic.deviceWarning(device)
            assert (text == "") == found, (device, text)
        if not found:
            assert "No CUDA GPU" in logic.deviceWarning("cuda")
        print("ok")
    """
)


def test_opening_the_panel_does_not_import_torch_and_the_cuda_check_is_cached():
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", PANEL_WITHOUT_TORCH.format(tests=str(TESTS))], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_device_warning_without_torch(env, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert "PyTorch is not installed" in env.logic.deviceWarning("auto")


# ----------------------------------------------------------------------------- compute


def test_edited_segments_question_comes_before_the_wait_cursor(env):
    logic, volume = env.logic, env.volume
    first = logic.compute(volume, segmentFn=FakeResult)
    seg = first.segmentation_node
    write_segment_mask(seg, "LAD", np.zeros(first.pipeline_result.labels.shape, bool), volume)  # the user clears LAD
    logic.flushEditChecks()
    assert edited_segments(seg) == ["LAD"]

    events = env.app.events
    events.clear()

    def ask(edited):
        events.append(f"asked {edited} with {len(env.app.cursor_stack)} wait cursor(s)")
        return "keep"

    job = logic.startCompute(volume, segmentFn=FakeResult)
    job.wait()
    outcome = logic.finishCompute(job, on_conflict=ask, busy=env.module._waitCursor)
    assert events == ["asked ['LAD'] with 0 wait cursor(s)", "wait cursor on", "wait cursor off"]
    assert outcome.kept == ["LAD"]

    # no edits: no question, the writing still under the wait cursor
    events.clear()
    other = ct_to_volume_node(env.core.scene, small_ct(), "other")
    job = logic.startCompute(other, segmentFn=FakeResult)
    job.wait()
    logic.finishCompute(job, on_conflict=ask, busy=env.module._waitCursor)
    assert events == ["wait cursor on", "wait cursor off"]


def test_layout_switches_only_for_a_new_result(env):
    logic, volume, layouts = env.logic, env.volume, env.app.layoutManager().layouts
    selection = env.core.app_logic.GetSelectionNode()
    first = logic.compute(volume, segmentFn=FakeResult)
    logic.showResult(first)
    assert first.created and layouts == [slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView]
    assert selection.GetActiveTableID() == first.score_table_node.GetID()

    again = logic.compute(volume, segmentFn=FakeResult)
    logic.showResult(again)
    table = logic.rescore(again.segmentation_node, volume)
    logic.showTableInLayout(table)  # what Rescore does
    assert not again.created
    assert layouts == [slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView]  # still only the first switch
    assert selection.GetActiveTableID() == table.GetID()


# ----------------------------------------------------------------------------- Segment Editor mask


def test_segment_editor_mask_is_restored_for_other_segmentations(env):
    scene = env.core.scene
    editor = slicer.vtkMRMLSegmentEditorNode()
    scene.AddNode(editor)
    editor.SetSourceVolumeIntensityMask(False)
    editor.SetSourceVolumeIntensityMaskRange(-100.0, 300.0)  # the user's own settings
    result = env.logic.compute(env.volume, segmentFn=FakeResult).segmentation_node
    mine = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(mine)

    editor.SetAndObserveSegmentationNode(result)
    env.logic.setSegmentEditorMask(editor, result, 130.0)
    assert editor.GetSourceVolumeIntensityMask() and tuple(editor.GetSourceVolumeIntensityMaskRange()) == (130.0, 1.0e5)
    editor.SetAndObserveSegmentationNode(result)  # still the result: the mask stays
    assert editor.GetSourceVolumeIntensityMask()

    editor.SetAndObserveSegmentationNode(mine)  # the user goes on to their own segmentation
    assert not editor.GetSourceVolumeIntensityMask()
    assert tuple(editor.GetSourceVolumeIntensityMaskRange()) == (-100.0, 300.0)

    # settings the user changed while correcting are theirs and stay
    editor.SetAndObserveSegmentationNode(result)
    env.logic.setSegmentEditorMask(editor, result, 130.0)
    editor.SetSourceVolumeIntensityMaskRange(200.0, 1000.0)
    editor.SetAndObserveSegmentationNode(mine)
    assert editor.GetSourceVolumeIntensityMask() and tuple(editor.GetSourceVolumeIntensityMaskRange()) == (200.0, 1000.0)

    # the module's cleanup (or scene close) restores it too
    editor.SetSourceVolumeIntensityMask(False)
    editor.SetAndObserveSegmentationNode(result)
    env.logic.setSegmentEditorMask(editor, result, 130.0)
    env.logic.restoreSegmentEditorMask()
    assert not editor.GetSourceVolumeIntensityMask()


def test_open_segment_editor_sets_the_mask_through_the_editor_widget(env, monkeypatch):
    scene = env.core.scene
    editor = slicer.vtkMRMLSegmentEditorNode()
    scene.AddNode(editor)
    widget = types.SimpleNamespace(
        setSegmentationNode=editor.SetAndObserveSegmentationNode,
        setSourceVolumeNode=editor.SetAndObserveSourceVolumeNode,
        mrmlSegmentEditorNode=lambda: editor,
    )
    representation = types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=widget))
    modules = types.SimpleNamespace(segmenteditor=types.SimpleNamespace(widgetRepresentation=lambda: representation))
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: None)
    result = env.logic.compute(env.volume, segmentFn=FakeResult).segmentation_node
    env.logic.openSegmentEditor(result, env.volume, 130.0)
    assert editor.GetSegmentationNode() is result and editor.GetSourceVolumeNode() is env.volume
    assert editor.GetSourceVolumeIntensityMask()
    other = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(other)
    widget.setSegmentationNode(other)
    assert not editor.GetSourceVolumeIntensityMask()


# ----------------------------------------------------------------------------- install


@pytest.mark.parametrize("slicer_version", ["5.8", "5.12"])
def test_first_use_install_names_every_package_and_pins_torch(env, monkeypatch, slicer_version):
    logic = env.logic
    requirements = env.module._requirements()
    missing_now = ["torch", "timm", "monai", "safetensors", "nrrd", "matplotlib", "skimage", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls"]
    calls = {"missing": 0, "asked": [], "torch": [], "pip": []}

    def missing(ai=True):
        calls["missing"] += 1
        return list(missing_now) if calls["missing"] == 1 else []

    monkeypatch.setattr(requirements, "missing", missing)

    def confirm(text, **kwargs):
        calls["asked"].append(text + "\n" + kwargs.get("detailedText", ""))
        return True

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm, raising=False)

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation, torchVersionRequirement):
            calls["torch"].append(torchVersionRequirement)
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))

    def read(path):
        return Path(path).read_text().splitlines()

    if slicer_version == "5.8":
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # no slicer.packaging before 5.12

        def pip_install(args):
            c = args.index("-c")
            calls["pip"].append((args[:c], read(args[c + 1])))

        monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    else:
        def pip_ensure(reqs, constraints=None, **kwargs):
            calls["pip"].append((list(reqs), read(constraints)))

        packaging = types.ModuleType("slicer.packaging")
        packaging.pip_ensure = pip_ensure
        monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
        monkeypatch.setattr(slicer, "packaging", packaging, raising=False)

    assert logic.ensureDependencies(interactive=True)
    (question,) = calls["asked"]
    for name in ("torch", "timm", "monai", "safetensors", "pynrrd", "matplotlib", "scikit-image", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"):
        assert name in question.split("\n")[0], name
    assert calls["torch"] == [requirements.TORCH_VERSION]
    ((installed, constraints),) = calls["pip"]
    assert installed == requirements.pip_requirements(missing_now)  # every package but torch
    assert f"torch=={importlib.metadata.version('torch')}" in constraints


def test_every_package_the_library_imports_is_offered(env):
    """The list the install offers is the library's list: every import name it checks
    maps to a pip package, and the AI's packages are in it."""
    requirements = env.module._requirements()
    names = env.logic.packageNames(list(requirements.CORE) + list(requirements.AI))
    for name in ("torch", "timm", "monai", "safetensors", "pynrrd", "matplotlib", "scikit-image", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pyjpegls"):
        assert name in names


def test_batch_script_install_pins_torch(monkeypatch):
    import runpy

    path = TESTS.parent / "CoronaryCalciumDINO" / "Resources" / "Scripts" / "ccdino_batch_slicer.py"
    script = runpy.run_path(str(path), run_name="batch")
    pip = []

    def pip_install(args):
        c = args.index("-c")
        pip.append((args[:c], Path(args[c + 1]).read_text().splitlines()))

    stand_in = types.ModuleType("slicer")
    stand_in.util = types.SimpleNamespace(pip_install=pip_install)
    monkeypatch.setitem(sys.modules, "slicer", stand_in)
    script["install_dependencies"](["timm", "nrrd"])
    ((installed, constraints),) = pip
    assert installed == ["timm>=1.0,<1.1", "pynrrd>=1.0"]
    assert f"torch=={importlib.metadata.version('torch')}" in constraints


# ----------------------------------------------------------------------------- self-test


def test_skipped_self_test_is_not_a_failure(env, monkeypatch):
    Test = env.module.CoronaryCalciumDINOTest

    def no_data(self):
        raise unittest.SkipTest("phantom data not found")

    monkeypatch.setattr(Test, "_phantomPath", no_data)
    monkeypatch.setattr(Test, "setUp", lambda self: None)
    Test.messages = []
    try:
        Test().runTest()  # Reload and Test calls runTest directly: it must not raise
    except unittest.SkipTest as exc:  # pytest would count it as skipped, Slicer as failed
        pytest.fail(f"runTest raised SkipTest: {exc}")
    assert Test.messages[-1] == "Self-test skipped: phantom data not found"
