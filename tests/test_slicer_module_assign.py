"""The Slicer module's click-to-assign and review flags on real MRML (slicer-core), with
stand-ins only for Qt and the application (``slicer_module_stand_ins``):

* the Logic assigns the lesion under a RAS point through the result's edit-tracking session:
  the score table follows, the panel's rescoring callback runs, undo restores the table;
* a click (press and release at one spot) in a slice view reaches the Logic with the point
  the view converts; a drag does not;
* the candidates are shown as their own node;
* the review flags of the command's report reach the score table's report and the panel's text.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.table import report_from_table  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, node_ijk_to_ras  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams  # noqa: E402
from slicer_module_stand_ins import load_module  # noqa: E402
from result_stand_ins import FakeResult, small_ct  # noqa: E402


@pytest.fixture()
def env(monkeypatch):
    core = scene_logic.create_core_scene()
    module, app = load_module(monkeypatch, core)
    volume = ct_to_volume_node(core.scene, small_ct(), "small")
    logic = module.CoronaryCalciumDINOLogic()
    rescored = []
    logic.onRescored = rescored.append
    yield types.SimpleNamespace(core=core, module=module, app=app, volume=volume, logic=logic, rescored=rescored)
    logic.closeSessions()


def ras_of(volume, z, y, x):
    return [float(v) for v in (node_ijk_to_ras(volume) @ np.array([x, y, z, 1.0]))[:3]]


def test_logic_assigns_through_the_session_and_undo_restores(env):
    logic, volume = env.logic, env.volume
    outcome = logic.compute(volume, segmentFn=FakeResult)
    seg, table = outcome.segmentation_node, outcome.score_table_node
    before = report_from_table(table)
    assert not logic.canUndoAssign(seg)

    done = logic.assignLesion(seg, volume, ras_of(volume, 2, 5, 5), "RCA")
    assert done.changed and "assigned to RCA" in done.message
    after = report_from_table(table)
    moved = before["arteries"]["LAD"]["agatston"]
    assert moved > 0 and after["arteries"]["LAD"]["agatston"] == 0.0
    assert after["arteries"]["RCA"]["agatston"] == pytest.approx(before["arteries"]["RCA"]["agatston"] + moved)
    assert len(env.rescored) == 1 and env.rescored[0]["arteries"]["RCA"] == after["arteries"]["RCA"]  # the panel's refresh
    assert logic.canUndoAssign(seg)

    missed = logic.assignLesion(seg, volume, ras_of(volume, 2, 12, 12), "LM")
    assert not missed.changed and "No calcium candidate" in missed.message
    assert report_from_table(table)["arteries"] == after["arteries"] and len(env.rescored) == 1

    undone = logic.undoAssign(seg, volume)
    assert undone.changed and report_from_table(table)["arteries"] == before["arteries"]
    assert not logic.canUndoAssign(seg)

    node = logic.showCandidates(seg, volume, True)
    assert node is not None and node.GetDisplayNode().GetVisibility()
    assert logic.showCandidates(seg, volume, False) is node and not node.GetDisplayNode().GetVisibility()
    logic.closeSessions()
    assert not logic.canUndoAssign(seg)  # a new scene, a new history


class FakeInteractor:
    def __init__(self):
        self.position = (0, 0)

    def GetEventPosition(self):
        return self.position


class FakeSliceView:
    """A slice view whose device -> XYZ -> RAS conversion maps (x, y) to a fixed RAS point
    (what qMRMLSliceView.convertDeviceToXYZ / convertXYZToRAS give)."""

    def __init__(self, ras):
        self.ras, self.asked = ras, []

    def convertDeviceToXYZ(self, xy):
        self.asked.append(tuple(xy))
        return [float(xy[0]), float(xy[1]), 0.0]

    def convertXYZToRAS(self, xyz):
        return list(self.ras)


def test_a_click_in_a_slice_view_assigns_and_a_drag_does_not(env):
    module, logic, volume = env.module, env.logic, env.volume
    outcome = logic.compute(volume, segmentFn=FakeResult)
    seg, table = outcome.segmentation_node, outcome.score_table_node
    widget = module.CoronaryCalciumDINOWidget.__new__(module.CoronaryCalciumDINOWidget)
    widget.logic = logic
    widget._parameterNode = types.SimpleNamespace(inputVolume=volume, resultSegmentation=seg)
    widget.ui = types.SimpleNamespace(statusLabel=types.SimpleNamespace(text=""),
                                      assignTargetComboBox=types.SimpleNamespace(currentText="LCX"))
    widget._updateButtons = lambda: None
    widget._pressed = None
    view, interactor = FakeSliceView(ras_of(volume, 3, 15, 15)), FakeInteractor()

    interactor.position = (100, 100)
    widget._onSliceClick(view, interactor, "LeftButtonPressEvent")
    interactor.position = (140, 100)  # a drag (window/level): nothing
    widget._onSliceClick(view, interactor, "LeftButtonReleaseEvent")
    assert view.asked == [] and report_from_table(table)["arteries"]["LCX"]["agatston"] == 0.0

    interactor.position = (120, 80)
    widget._onSliceClick(view, interactor, "LeftButtonPressEvent")
    interactor.position = (121, 80)  # a click (the hand shakes by a pixel)
    widget._onSliceClick(view, interactor, "LeftButtonReleaseEvent")
    assert view.asked == [(121, 80)]
    report = report_from_table(table)
    assert report["arteries"]["RCA"]["agatston"] == 0.0 and report["arteries"]["LCX"]["agatston"] > 0
    assert "assigned to LCX (was RCA)" in widget.ui.statusLabel.text


def test_review_flags_of_the_command_reach_the_table_and_the_panel(env):
    module, logic, volume = env.module, env.logic, env.volume
    ct = small_ct()
    result = FakeResult(ct)
    from CoronaryCalciumDINOLib.report import build_report

    flags = [{"flag": "noise", "message": "heavy image noise (about 50 HU SD)"},
             {"flag": "model_confidence", "message": "the risk category rests on 1 lesion"}]
    report = build_report(result.score, "x", model={"name": "m"}, review_flags=flags, slices=[
        {"index": i, "probability": float(p), "selected": bool(p > 0.5), "candidates": 0}
        for i, p in enumerate(result.slice_probabilities)])
    processed = module._ProcessResult(ct, ScoringParams(), report, result.labels, None, [])
    assert processed.report_extra()["review_flags"] == flags
    outcome = scene_logic.write_result(env.core.scene, volume, ct, processed, ScoringParams())
    stored = report_from_table(outcome.score_table_node)
    assert stored["review_flags"] == flags
    assert scene_logic.review_text(stored).splitlines() == [f"Review: {f['message']}" for f in flags]
    # rescoring after an edit keeps the image's flag and drops the model's
    logic.openSession(outcome.segmentation_node, volume, ScoringParams())
    logic.assignLesion(outcome.segmentation_node, volume, ras_of(volume, 2, 5, 5), "Remove")
    assert [f["flag"] for f in report_from_table(outcome.score_table_node)["review_flags"]] == ["noise"]
