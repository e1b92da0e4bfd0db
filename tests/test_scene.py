"""Scene glue on a real MRML scene (slicer-core): volume geometry, result segmentation,
score tables, edit tracking with automatic rescoring, compute again, hand-made segmentations.

Expected scores come from ``scoring.score`` run directly on the label arrays the test
builds (never from the glue's own output); expected geometry is derived by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support as ns  # noqa: E402

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_COLORS, ARTERY_TO_LABEL  # noqa: E402
from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from CoronaryCalciumDINOLib.io import load_ct  # noqa: E402
from CoronaryCalciumDINOLib.io.segfile import terminology_entry  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.edits import EDITED_TAG, edited_segments  # noqa: E402
from CoronaryCalciumDINOLib.scene.table import DISCLAIMER_ATTRIBUTE, report_from_table, table_cell  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, nodes_by_class, volume_node_to_ct  # noqa: E402
from CoronaryCalciumDINOLib.scoring import score  # noqa: E402
from CoronaryCalciumDINOLib.constants import DISCLAIMER  # noqa: E402
from result_stand_ins import FakeResult  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHANTOM = REPO / "Testing" / "Data" / "qrm-phantom-canon"


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def phantom() -> CTVolume:
    return load_ct(PHANTOM)


@pytest.fixture(scope="module")
def known_labels(phantom) -> np.ndarray:
    """Every voxel >= 130 HU, assigned to an artery by image quadrant (row/column halves).

    LM top-left, LAD top-right, LCX bottom-left, RCA bottom-right.
    """
    z, y, x = phantom.shape
    quadrant = np.zeros((y, x), dtype=np.uint8)
    quadrant[: y // 2, : x // 2] = ARTERY_TO_LABEL["LM"]
    quadrant[: y // 2, x // 2 :] = ARTERY_TO_LABEL["LAD"]
    quadrant[y // 2 :, : x // 2] = ARTERY_TO_LABEL["LCX"]
    quadrant[y // 2 :, x // 2 :] = ARTERY_TO_LABEL["RCA"]
    labels = np.where(phantom.hu >= 130, quadrant[None], 0).astype(np.uint8)
    for a in ARTERIES:  # the scenario needs calcium in every artery
        assert np.count_nonzero(labels == ARTERY_TO_LABEL[a]) > 0, a
    return labels


@pytest.fixture()
def core():
    return scene_logic.create_core_scene()


def export_segment(seg_node, segment_name: str, volume_node) -> np.ndarray:
    """Segment -> (z, y, x) array on the CT grid through Slicer's own export (not the glue)."""
    scene = seg_node.GetScene()
    lm = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(lm)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(seg_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        seg_node, ids, lm, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    )
    dims = lm.GetImageData().GetDimensions()
    arr = ns.vtk_to_numpy(lm.GetImageData().GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()
    scene.RemoveNode(lm)
    return arr > 0


def paint(seg_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace a segment's voxels the way an editor would: Slicer's SetBinaryLabelmapToSegment."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ns.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.astype(np.uint8).ravel()
    image.SetImageToWorldMatrix(m)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, seg_node, segment_id, logic.MODE_REPLACE, image.GetExtent())


def assert_table_matches(table_node, expected) -> None:
    for a in ARTERIES:
        s = expected.arteries[a]
        assert table_cell(table_node, "agatston", a) == f"{s.agatston:.2f}"
        assert table_cell(table_node, "volume_mm3", a) == f"{s.volume_mm3:.2f}"
        assert table_cell(table_node, "lesions", a) == str(s.lesions)
    assert table_cell(table_node, "agatston", "total") == f"{expected.total.agatston:.2f}"
    assert table_cell(table_node, "risk_category", "total") == expected.risk_category
    assert table_cell(table_node, "cac_drs", "total") == expected.cac_drs
    report = report_from_table(table_node)
    for a in ARTERIES:
        assert report["arteries"][a]["agatston"] == pytest.approx(expected.arteries[a].agatston, rel=1e-12, abs=1e-12)
    assert report["total"]["agatston"] == pytest.approx(expected.total.agatston, rel=1e-12, abs=1e-12)


def result_segment_count(scene) -> int:
    return len(nodes_by_class(scene, "vtkMRMLSegmentationNode"))


# ----------------------------------------------------------------------------- volumes


def test_phantom_volume_node_geometry(core, phantom):
    node = ct_to_volume_node(core.scene, phantom, "phantom")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    dz, dy, dx = phantom.spacing
    ox, oy, oz = phantom.origin
    # The phantom's direction is the identity (LPS), so RAS flips x and y by hand:
    expected = np.array([[-dx, 0, 0, -ox], [0, -dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1]])
    assert np.allclose(phantom.direction, np.eye(3))
    assert np.allclose(got, expected, atol=1e-9)
    dims = node.GetImageData().GetDimensions()
    assert (dims[2], dims[1], dims[0]) == phantom.shape
    arr = ns.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(phantom.shape)
    assert np.array_equal(arr, phantom.hu)
    back = volume_node_to_ct(node)
    assert back.same_grid(phantom, tol=1e-9)
    assert np.array_equal(back.hu, phantom.hu)
    assert back.kvp == phantom.kvp


def test_oblique_volume_round_trip(core):
    rng = np.random.default_rng(3)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rot @ np.diag([1.0, -1.0, -1.0])
    ct = CTVolume(hu=rng.normal(0, 300, (5, 6, 7)).astype(np.float32), spacing=(2.5, 0.7, 0.6),
                  origin=(10.0, -20.0, 30.0), direction=direction)
    node = ct_to_volume_node(core.scene, ct, "oblique")
    # voxel (i, j, k) = (2, 3, 4) in RAS, derived by hand from the LPS definition
    lps = np.array(ct.origin) + direction @ np.array([2 * 0.6, 3 * 0.7, 4 * 2.5])
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array(m.MultiplyPoint((2, 3, 4, 1))[:3])
    assert np.allclose(ras, lps * np.array([-1, -1, 1]), atol=1e-9)
    back = volume_node_to_ct(node)
    assert back.same_grid(ct, tol=1e-9)
    assert np.array_equal(back.hu, ct.hu)  # float values kept (not integers -> float32 storage)


@pytest.mark.parametrize("damage", ["nan", "spacing", "kvp"])
def test_volume_node_values_are_checked(core, damage):
    """A volume node is read like a file: NaN voxels and implausible spacing are refused,
    a damaged kVp attribute is taken as unknown."""
    ct = CTVolume(hu=np.full((3, 8, 8), -1000, np.float32), spacing=(3.0, 0.5, 0.5), kvp=120.0)
    if damage == "nan":
        ct.hu[1, 2, 2] = np.nan
    elif damage == "spacing":
        ct.spacing = (1e-6, 0.5, 0.5)
    node = ct_to_volume_node(core.scene, ct, f"damaged-{damage}")
    if damage == "kvp":
        node.SetAttribute("CoronaryCalciumDINO.kVp", "nan")
        assert volume_node_to_ct(node).kvp is None
        return
    with pytest.raises(InputError, match="not finite" if damage == "nan" else "slice spacing"):
        volume_node_to_ct(node)


def test_volume_node_without_image_is_an_input_error(core):
    node = slicer.vtkMRMLScalarVolumeNode()
    core.scene.AddNode(node)
    with pytest.raises(InputError):
        volume_node_to_ct(node)


# ----------------------------------------------------------------------------- compute / edit / rescore


def test_compute_edit_rescore_and_compute_again(core, phantom, known_labels):
    scene = core.scene
    volume = ct_to_volume_node(scene, phantom, "phantom")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    sh.CreateItem(study, volume)  # as Slicer's DICOM browser would

    attention = np.stack([np.full(phantom.shape, float(h), np.float32) for h in range(3)])
    out = scene_logic.compute(scene, volume, segment_fn=lambda ct: FakeResult(ct, known_labels, attention))
    seg = out.segmentation_node
    assert result_segment_count(scene) == 1
    assert seg.GetName() == "phantom calcium"
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(out.score_table_node)) == study

    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4
    for a in ARTERIES:
        segment = segmentation.GetSegment(a)
        assert segment is not None and segment.GetName() == a
        assert np.allclose(segment.GetColor(), ARTERY_COLORS[a])
        tag = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", tag)
        assert str(tag) == terminology_entry(a)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert core.terminologies_logic.DeserializeTerminologyEntry(str(tag), entry)
        assert entry.GetTypeObject().GetCodeValue() == "18115005"
        # voxel-exact overlay through Slicer's own export onto the CT grid
        assert np.array_equal(export_segment(seg, a, volume), known_labels == ARTERY_TO_LABEL[a])
    assert edited_segments(seg) == []

    expected = score(phantom.hu, known_labels, phantom.spacing)
    assert_table_matches(out.score_table_node, expected)
    assert out.score_table_node.GetAttribute(DISCLAIMER_ATTRIBUTE) == DISCLAIMER
    assert table_cell(out.score_table_node, "disclaimer", "total") == DISCLAIMER

    slices = out.slice_table_node.GetTable()
    assert slices.GetNumberOfRows() == phantom.shape[0]
    probs = ns.vtk_to_numpy(slices.GetColumnByName("probability"))
    assert np.allclose(probs, np.linspace(0.0, 1.0, phantom.shape[0]), atol=1e-6)
    assert np.array_equal(ns.vtk_to_numpy(slices.GetColumnByName("selected")) == 1, probs > 0.5)

    att = out.attention_node
    att_arr = ns.vtk_to_numpy(att.GetImageData().GetPointData().GetScalars())
    assert np.all(att_arr == 0.0)  # head index 0 = mean map
    from CoronaryCalciumDINOLib.scene.attention import show_attention_head

    show_attention_head(scene, volume, attention, 2, att)
    assert np.all(ns.vtk_to_numpy(att.GetImageData().GetPointData().GetScalars()) == 2.0)
    with pytest.raises(InputError):
        show_attention_head(scene, volume, attention, 3, att)

    # ---- the user clears LAD with Slicer's API; the edit is flagged and the table rescored
    rescored = []
    session = scene_logic.ResultSession(scene, volume, seg, on_rescored=rescored.append)
    paint(seg, "LAD", np.zeros(phantom.shape, bool), volume)
    assert edited_segments(seg) == ["LAD"]
    edited_labels = np.where(known_labels == ARTERY_TO_LABEL["LAD"], 0, known_labels)
    expected_edit = score(phantom.hu, edited_labels, phantom.spacing)
    assert expected_edit.total.agatston < expected.total.agatston
    assert len(rescored) == 1
    assert_table_matches(out.score_table_node, expected_edit)

    # colour changes are not edits
    segmentation.GetSegment("LM").SetColor(0.1, 0.2, 0.3)
    assert edited_segments(seg) == ["LAD"]
    assert len(rescored) == 1

    # ---- compute again (new AI output puts calcium back in LAD, LM emptied): LAD is kept
    second_labels = np.where(known_labels == ARTERY_TO_LABEL["LM"], 0, known_labels)
    again = scene_logic.compute(scene, volume, segment_fn=lambda ct: FakeResult(ct, second_labels), session=session)
    assert again.segmentation_node is seg and result_segment_count(scene) == 1
    assert again.kept == ["LAD"]
    assert not export_segment(seg, "LAD", volume).any()
    assert not export_segment(seg, "LM", volume).any()
    assert np.array_equal(export_segment(seg, "RCA", volume), known_labels == ARTERY_TO_LABEL["RCA"])
    merged = np.where(np.isin(second_labels, [ARTERY_TO_LABEL["LAD"]]), 0, second_labels)
    assert_table_matches(again.score_table_node, score(phantom.hu, merged, phantom.spacing))
    assert edited_segments(seg) == ["LAD"]
    assert len(rescored) == 1  # the AI's own writing did not count as an edit

    # ---- a conflict callback may choose to replace the edited segment
    asked = []
    third = scene_logic.compute(
        scene, volume, segment_fn=lambda ct: FakeResult(ct, known_labels), session=session,
        on_conflict=lambda names: asked.append(names) or "replace",
    )
    assert asked == [["LAD"]] and third.kept == []
    assert np.array_equal(export_segment(seg, "LAD", volume), known_labels == ARTERY_TO_LABEL["LAD"])
    assert edited_segments(seg) == []
    assert_table_matches(third.score_table_node, expected)
    session.close()


def test_edit_made_without_a_session_is_kept(core, phantom, known_labels):
    """An edit no tracker observed (e.g. after reloading the scene) is still detected."""
    volume = ct_to_volume_node(core.scene, phantom, "phantom")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda ct: FakeResult(ct, known_labels))
    lcx = known_labels == ARTERY_TO_LABEL["LCX"]
    kept = lcx.copy()
    kept[: phantom.shape[0] // 2] = False  # the user erased the lower half of LCX
    paint(out.segmentation_node, "LCX", kept, volume)
    assert edited_segments(out.segmentation_node) == []  # nobody was watching
    again = scene_logic.compute(core.scene, volume, segment_fn=lambda ct: FakeResult(ct, known_labels))
    assert again.kept == ["LCX"]
    assert np.array_equal(export_segment(out.segmentation_node, "LCX", volume), kept)
    merged = np.where(lcx & ~kept, 0, known_labels)
    assert_table_matches(again.score_table_node, score(phantom.hu, merged, phantom.spacing))


def test_rescore_hand_made_segmentation(core, phantom, known_labels):
    scene = core.scene
    volume = ct_to_volume_node(scene, phantom, "phantom")
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    # names as a user would type them, IDs generated by Slicer, order shuffled
    hand = np.where(known_labels == ARTERY_TO_LABEL["LCX"], 0, known_labels)
    for name in ("RCA", "LM", "LCX", "LAD"):
        segment_id = seg.GetSegmentation().AddEmptySegment("", name)
        paint(seg, segment_id, hand == ARTERY_TO_LABEL[name], volume)
    report = scene_logic.rescore(seg, volume)
    expected = score(phantom.hu, hand, phantom.spacing)
    table, _ = scene_logic.result_tables(scene, seg)
    assert_table_matches(table, expected)
    assert report["total"]["agatston"] == pytest.approx(expected.total.agatston, rel=1e-12)
    assert report["arteries"]["LCX"]["agatston"] == 0.0


def test_rescore_missing_segment_is_a_clear_error(core, phantom):
    scene = core.scene
    volume = ct_to_volume_node(scene, phantom, "phantom")
    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    for name in ("LM", "LAD", "LCX"):
        seg.GetSegmentation().AddEmptySegment(name, name)
    with pytest.raises(InputError, match="RCA"):
        scene_logic.rescore(seg, volume)


def test_compute_rejects_labels_off_grid(core, phantom):
    volume = ct_to_volume_node(core.scene, phantom, "phantom")
    bad = np.zeros((3, 4, 5), np.uint8)

    class Bad:
        labels = bad

    with pytest.raises(InputError):
        scene_logic.compute(core.scene, volume, segment_fn=lambda ct: Bad())
    assert result_segment_count(core.scene) == 0


def test_deferred_edit_check_and_edited_tag(core, phantom, known_labels):
    volume = ct_to_volume_node(core.scene, phantom, "phantom")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda ct: FakeResult(ct, known_labels))
    pending, rescored = [], []
    session = scene_logic.ResultSession(core.scene, volume, out.segmentation_node,
                                        on_rescored=rescored.append, defer=pending.append)
    mask = known_labels == ARTERY_TO_LABEL["RCA"]
    mask[0, :2, :2] = True  # the user adds two-by-two voxels, in two strokes
    paint(out.segmentation_node, "RCA", mask, volume)
    mask[0, 2:4, :2] = True
    paint(out.segmentation_node, "RCA", mask, volume)
    assert pending and edited_segments(out.segmentation_node) == [] and rescored == []
    for check in pending:  # what the Qt timer does once editing pauses
        check()
    assert edited_segments(out.segmentation_node) == ["RCA"] and len(rescored) == 1
    expected = score(phantom.hu, np.where(mask, ARTERY_TO_LABEL["RCA"], np.where(known_labels == ARTERY_TO_LABEL["RCA"], 0, known_labels)), phantom.spacing)
    assert_table_matches(out.score_table_node, expected)
    tag = vtk.reference("")
    assert out.segmentation_node.GetSegmentation().GetSegment("RCA").GetTag(EDITED_TAG, tag)
    assert str(tag) == "1"
    session.close()


# ----------------------------------------------------------------------------- real bundle


def test_compute_with_the_real_pipeline_on_a_tiny_bundle(core, tmp_path):
    """run_pipeline (random tiny bundle) through compute: segments, table and attention."""
    torch = pytest.importorskip("torch")
    from CoronaryCalciumDINOLib.models.bundle import save_random_bundle

    torch.set_num_threads(1)
    bundle = save_random_bundle(tmp_path / "b", threshold=0.01)
    rng = np.random.default_rng(0)
    hu = np.full((6, 48, 48), 40.0, np.float32) + rng.normal(0, 5, (6, 48, 48)).astype(np.float32)
    hu[:, 10:14, 10:14] = 400.0
    ct = CTVolume(hu=hu, spacing=(3.0, 1.0, 1.0), origin=(5.0, -7.0, 11.0))
    volume = ct_to_volume_node(core.scene, ct, "tiny")
    out = scene_logic.compute(core.scene, volume, bundle=bundle, device="cpu", attention=True)
    res = out.pipeline_result
    for a in ARTERIES:
        assert np.array_equal(export_segment(out.segmentation_node, a, volume), res.labels == ARTERY_TO_LABEL[a])
    assert_table_matches(out.score_table_node, score(hu, res.labels, ct.spacing))
    assert res.attention is not None
    att = ns.vtk_to_numpy(out.attention_node.GetImageData().GetPointData().GetScalars()).reshape(ct.shape)
    assert np.array_equal(att, res.attention[0])
    report = report_from_table(out.score_table_node)
    assert len(report["slices"]) == ct.shape[0] and report["model"]


def test_compute_with_default_bundle_on_phantom(core, phantom):
    volume = ct_to_volume_node(core.scene, phantom, "phantom")
    out = scene_logic.compute(core.scene, volume, bundle=None, device="cpu", attention=False)
    res = out.pipeline_result
    for a in ARTERIES:
        assert np.array_equal(export_segment(out.segmentation_node, a, volume), res.labels == ARTERY_TO_LABEL[a])
    assert_table_matches(out.score_table_node, score(phantom.hu, res.labels, phantom.spacing))
    assert out.slice_table_node.GetTable().GetNumberOfRows() == phantom.shape[0]
