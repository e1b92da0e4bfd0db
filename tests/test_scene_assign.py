"""Click-to-assign on a real MRML scene (slicer-core): a click on a lesion moves exactly its
region between artery segments, the score table follows by exactly that lesion's score, a
click on no candidate changes nothing and says so, and undo restores the previous state.

Expected scores come from ``scoring.score`` on label arrays the test builds; segment
contents are read back through Slicer's own export, not the module's reader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support as ns  # noqa: E402

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_TO_LABEL  # noqa: E402
from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.candidate_area import candidate_mask  # noqa: E402
from CoronaryCalciumDINOLib.scene import assign as assign_glue  # noqa: E402
from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.edits import EDITED_TAG, edited_segments  # noqa: E402
from CoronaryCalciumDINOLib.scene.table import report_from_table  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, node_ijk_to_ras  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams, params_for_kvp, score  # noqa: E402
from result_stand_ins import FakeResult  # noqa: E402

SPACING = (3.0, 0.7, 0.7)
LAD, RCA, LCX, LM = (ARTERY_TO_LABEL[a] for a in ("LAD", "RCA", "LCX", "LM"))

#: lesions: name -> (slice, rows, columns, HU)
LESIONS = {
    "A": (2, slice(4, 8), slice(4, 8), 300.0),  # LAD
    "B": (3, slice(14, 18), slice(14, 18), 450.0),  # RCA
    "C": (4, slice(20, 23), slice(6, 9), 250.0),  # a candidate no segment holds
    "S": (5, slice(10, 14), slice(24, 30), 220.0),  # split: LAD left half, LCX right half
    "K": (3, slice(4, 7), slice(24, 27), 140.0),  # 140 HU: a candidate at 130 HU, not at 147 HU
}


def small_ct() -> CTVolume:
    hu = np.full((8, 32, 36), -50.0, np.float32)
    for z, ys, xs, value in LESIONS.values():
        hu[z, ys, xs] = value
    hu[2, 4:6, 4:6] = 520.0  # A's peak: a different weight from its mean
    hu[6, 26, 30] = 600.0  # one voxel (0.49 mm^2): below the minimum area, no candidate
    return CTVolume(hu=hu, spacing=SPACING)


def result_labels(ct: CTVolume) -> np.ndarray:
    labels = np.zeros(ct.shape, np.uint8)
    z, ys, xs, _ = LESIONS["A"]
    labels[z, ys, xs] = LAD
    z, ys, xs, _ = LESIONS["B"]
    labels[z, ys, xs] = RCA
    z, ys, xs, _ = LESIONS["S"]
    labels[z, ys, 24:27] = LAD
    labels[z, ys, 27:30] = LCX
    return labels


@pytest.fixture()
def env():
    core = scene_logic.create_core_scene()
    ct = small_ct()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    labels = result_labels(ct)
    outcome = scene_logic.compute(core.scene, volume, segment_fn=lambda c: FakeResult(c, labels))
    seg = outcome.segmentation_node
    session = scene_logic.ResultSession(core.scene, volume, seg, ScoringParams())
    yield core, ct, volume, seg, session, labels, outcome
    session.close()


def ras_of(volume, z, y, x):
    return (node_ijk_to_ras(volume) @ np.array([x, y, z, 1.0]))[:3]


def centre_ras(volume, name):
    z, ys, xs, _ = LESIONS[name]
    return ras_of(volume, z, (ys.start + ys.stop - 1) / 2.0, (xs.start + xs.stop - 1) / 2.0)


def exported_labels(seg, volume) -> np.ndarray:
    """Label map of the four artery segments through Slicer's own export."""
    out = None
    for artery in ARTERIES:
        lm = slicer.vtkMRMLLabelMapVolumeNode()
        seg.GetScene().AddNode(lm)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(seg.GetSegmentation().GetSegmentIdBySegmentName(artery))
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg, ids, lm, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        dims = lm.GetImageData().GetDimensions()
        arr = ns.vtk_to_numpy(lm.GetImageData().GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]) > 0
        seg.GetScene().RemoveNode(lm)
        if out is None:
            out = np.zeros(arr.shape, np.uint8)
        assert not np.any(arr & (out > 0)), "two segments hold one voxel"
        out[arr] = ARTERY_TO_LABEL[artery]
    return out


def table_report(outcome_or_seg, core):
    seg = getattr(outcome_or_seg, "segmentation_node", outcome_or_seg)
    table, _ = scene_logic.result_tables(core.scene, seg)
    return report_from_table(table)


def assert_scores(report, ct, labels, params=None):
    expected = score(ct.hu, labels, ct.spacing, params or ScoringParams())
    for artery in ARTERIES:
        assert report["arteries"][artery]["agatston"] == pytest.approx(expected.arteries[artery].agatston, abs=1e-9)
        assert report["arteries"][artery]["lesions"] == expected.arteries[artery].lesions
    assert report["total"]["agatston"] == pytest.approx(expected.total.agatston, abs=1e-9)
    assert report["risk_category"] == expected.risk_category


def lesion_score(ct, name) -> float:
    z, ys, xs, _ = LESIONS[name]
    alone = np.zeros(ct.shape, np.uint8)
    alone[z, ys, xs] = LAD
    return score(ct.hu, alone, ct.spacing, ScoringParams()).total.agatston


# ----------------------------------------------------------------------------- assign


def test_a_click_inside_a_lesion_moves_exactly_that_region_and_the_table_follows(env):
    core, ct, volume, seg, session, labels, _ = env
    before = table_report(seg, core)
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    out = assigner.assign(centre_ras(volume, "A"), "RCA")
    assert out.changed and out.slice == 2 and out.voxels == 16 and out.previous == {"LAD": 16}
    assert "assigned to RCA" in out.message and "was LAD" in out.message

    expected = labels.copy()
    z, ys, xs, _ = LESIONS["A"]
    expected[z, ys, xs] = RCA
    assert np.array_equal(exported_labels(seg, volume), expected)
    after = table_report(seg, core)
    assert_scores(after, ct, expected)
    a = lesion_score(ct, "A")
    assert a > 0
    assert after["arteries"]["LAD"]["agatston"] == pytest.approx(before["arteries"]["LAD"]["agatston"] - a, abs=1e-9)
    assert after["arteries"]["RCA"]["agatston"] == pytest.approx(before["arteries"]["RCA"]["agatston"] + a, abs=1e-9)
    assert after["total"]["agatston"] == pytest.approx(before["total"]["agatston"], abs=1e-9)
    assert out.report["total"]["agatston"] == pytest.approx(after["total"]["agatston"])
    # the tracker flagged the changed segments as the user's edits
    assert edited_segments(seg) == ["LAD", "RCA"]


def test_a_candidate_no_segment_holds_is_added_and_a_lesion_removed(env):
    core, ct, volume, seg, session, labels, _ = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    out = assigner.assign(centre_ras(volume, "C"), "lcx")  # any case
    assert out.changed and out.previous == {} and "was no artery" in out.message
    expected = labels.copy()
    z, ys, xs, _ = LESIONS["C"]
    expected[z, ys, xs] = LCX
    assert np.array_equal(exported_labels(seg, volume), expected)
    assert_scores(table_report(seg, core), ct, expected)

    out = assigner.assign(centre_ras(volume, "B"), assign_glue.REMOVE)
    assert out.changed and "removed" in out.message
    z, ys, xs, _ = LESIONS["B"]
    expected[z, ys, xs] = 0
    assert np.array_equal(exported_labels(seg, volume), expected)
    report = table_report(seg, core)
    assert_scores(report, ct, expected)
    assert report["arteries"]["RCA"]["agatston"] == 0.0


def test_a_lesion_split_between_arteries_moves_whole(env):
    core, ct, volume, seg, session, labels, _ = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    z, ys, xs, _ = LESIONS["S"]
    out = assigner.assign(ras_of(volume, z, 11, 28), "LAD")  # clicked on its LCX half
    assert out.changed and out.previous == {"LAD": 12, "LCX": 12}
    expected = labels.copy()
    expected[z, ys, xs] = LAD
    assert np.array_equal(exported_labels(seg, volume), expected)
    assert_scores(table_report(seg, core), ct, expected)


def test_a_click_on_no_candidate_changes_nothing_and_says_so(env):
    core, ct, volume, seg, session, labels, _ = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    table, _ = scene_logic.result_tables(core.scene, seg)
    stored = table.GetAttribute("CoronaryCalciumDINO.Report")
    cases = {
        "background": (ras_of(volume, 2, 20, 20), "below the 130 HU threshold"),
        "too small": (ras_of(volume, 6, 26, 30), "not a candidate"),
        "outside": (ras_of(volume, 2, 20, 60), "outside the CT"),
    }
    for name, (ras, said) in cases.items():
        out = assigner.assign(ras, "LAD")
        assert not out.changed, name
        assert said in out.message and "nothing changed" in out.message, (name, out.message)
        assert "\n" not in out.message
    same = assigner.assign(centre_ras(volume, "A"), "LAD")  # already LAD
    assert not same.changed and "already all LAD" in same.message
    assert table.GetAttribute("CoronaryCalciumDINO.Report") == stored
    assert np.array_equal(exported_labels(seg, volume), labels)
    assert edited_segments(seg) == [] and not assigner.can_undo


def test_a_click_next_to_a_lesion_snaps_within_one_millimetre_only(env):
    core, ct, volume, seg, session, labels, _ = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    far = assigner.assign(ras_of(volume, 2, 5, 11), "RCA")  # 4 voxels (2.8 mm) right of A
    assert not far.changed
    near = assigner.assign(ras_of(volume, 2, 5, 8), "RCA")  # 1 voxel (0.7 mm) right of A
    assert near.changed and near.voxels == 16


def test_undo_restores_the_previous_state_exactly(env):
    core, ct, volume, seg, session, labels, _ = env
    table, _ = scene_logic.result_tables(core.scene, seg)
    original = report_from_table(table)
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    assigner.assign(centre_ras(volume, "A"), "RCA")
    assigner.assign(ras_of(volume, 5, 11, 28), "LM")
    assigner.assign(centre_ras(volume, "B"), "remove")
    for _ in range(3):
        out = assigner.undo()
        assert out.changed and out.message.startswith("Undone:")
    assert np.array_equal(exported_labels(seg, volume), labels)
    restored = report_from_table(table)
    for key in ("arteries", "total", "risk_category", "cac_drs", "lesions"):
        assert json.dumps(restored[key], sort_keys=True) == json.dumps(original[key], sort_keys=True), key
    # back to exactly the AI's content: no longer flagged as edited
    assert edited_segments(seg) == []
    for artery in ARTERIES:
        tag = vtk.reference("")
        seg.GetSegmentation().GetSegment(artery).GetTag(EDITED_TAG, tag)
        assert str(tag) == "0"
    nothing = assigner.undo()
    assert not nothing.changed and nothing.message == "Nothing to undo."


def test_undo_refuses_when_the_lesion_was_changed_since(env):
    core, ct, volume, seg, session, labels, _ = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    assigner.assign(centre_ras(volume, "A"), "RCA")
    assigner.assign(centre_ras(volume, "A"), "LCX")  # a second assignment of the same lesion
    # someone else (Segment Editor) changes the lesion: the last assignment cannot be undone
    z, ys, xs, _ = LESIONS["A"]
    mask = np.zeros(ct.shape, bool)
    mask[z, ys, xs] = True
    from CoronaryCalciumDINOLib.scene.segmentation import write_segment_mask

    write_segment_mask(seg, "LCX", np.zeros(ct.shape, bool), volume)
    now = exported_labels(seg, volume)
    out = assigner.undo()
    assert not out.changed and "Cannot undo" in out.message and "nothing changed" in out.message
    assert np.array_equal(exported_labels(seg, volume), now)


def test_assign_works_on_shared_labelmap_layers_and_without_a_session(env):
    core, ct, volume, seg, session, labels, _ = env
    session.close()
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)  # what Segment Editor does
    assigner = assign_glue.LesionAssigner(seg, volume)
    out = assigner.assign(centre_ras(volume, "B"), "LAD")
    assert out.changed
    expected = labels.copy()
    z, ys, xs, _ = LESIONS["B"]
    expected[z, ys, xs] = LAD
    assert np.array_equal(exported_labels(seg, volume), expected)
    assert_scores(table_report(seg, core), ct, expected)
    assert set(edited_segments(seg)) == {"LAD", "RCA"}
    assert assigner.undo().changed
    assert np.array_equal(exported_labels(seg, volume), labels)


def test_the_kvp_adapted_threshold_of_the_result_defines_the_candidates(env):
    core, ct, volume, seg, session, labels, _ = env
    low = assign_glue.LesionAssigner(seg, volume, params=ScoringParams(), session=session)
    assert low.find_lesion(centre_ras(volume, "K"))[0] == 3  # 140 HU >= 130 HU
    params = params_for_kvp(100)  # 147 HU
    high = assign_glue.LesionAssigner(seg, volume, params=params, session=session)
    out = high.assign(centre_ras(volume, "K"), "LAD")
    assert not out.changed and "below the 147 HU threshold" in out.message


def test_unknown_target_is_refused(env):
    core, ct, volume, seg, session, labels, _ = env
    with pytest.raises(InputError, match="unknown target"):
        assign_glue.LesionAssigner(seg, volume, session=session).assign(centre_ras(volume, "A"), "aorta")


# ----------------------------------------------------------------------------- candidates shown


def test_candidates_are_shown_as_their_own_node_and_never_scored(env):
    core, ct, volume, seg, session, labels, outcome = env
    assigner = assign_glue.LesionAssigner(seg, volume, session=session)
    table, _ = scene_logic.result_tables(core.scene, seg)
    stored = table.GetAttribute("CoronaryCalciumDINO.Report")
    mask = assigner.candidates()
    node = assign_glue.show_candidates(core.scene, seg, volume, mask)
    assert seg.GetAttribute(scene_logic.CANDIDATES_REF) == node.GetID()
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    # its voxels: every >= 130 HU region of >= 1 mm^2 (no anatomy on this small CT)
    expected = np.zeros(ct.shape, bool)
    for z, ys, xs, _ in LESIONS.values():
        expected[z, ys, xs] = True
    assert np.array_equal(mask.full(), expected)
    lm = slicer.vtkMRMLLabelMapVolumeNode()
    core.scene.AddNode(lm)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        node, lm, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    dims = lm.GetImageData().GetDimensions()
    shown = ns.vtk_to_numpy(lm.GetImageData().GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]) > 0
    assert np.array_equal(shown, expected)
    # nothing in the result changed: no edit, same scores
    assert edited_segments(seg) == [] and table.GetAttribute("CoronaryCalciumDINO.Report") == stored
    assert assign_glue.show_candidates(core.scene, seg, volume, None, visible=False) is node
    assert not node.GetDisplayNode().GetVisibility()
    scene_logic.remove_result(core.scene, seg)
    assert not core.scene.IsNodePresent(node)


def test_candidate_mask_is_the_pipelines_candidates_in_the_heart_region():
    """On the hand-drawn thorax of the anatomy tests: the heart's speck is a candidate; the
    aorta's, the sternum's edge and the rib (left out by the pipeline's heart-region step)
    are not."""
    from test_anatomy import SPACING as THORAX_SPACING
    from test_anatomy import _thorax

    hu, specks = _thorax()
    mask = candidate_mask(CTVolume(hu=hu, spacing=THORAX_SPACING))
    assert mask.heart_region_used
    full = mask.full()
    y, x = specks["heart"]
    assert full[10, y, x]
    for name in ("aorta", "sternum_edge", "rib"):
        y, x = specks[name]
        assert not full[10, y, x], name
    assert full.sum() == 9 * hu.shape[0]  # the heart's 3 x 3 speck on every slice, nothing else
