"""Edit tracking after a saved scene is loaded again, rescoring on the segments' boxes, and
the attention maps' memory bound (slicer-core, real MRML).

* A result saved in a Slicer data bundle (.mrb) and loaded into a fresh scene tracks edits
  again: the scene glue finds the tagged result and the module's Logic reopens its session
  on the scene's import event; an edit changes the scores, which equal ``scoring.score`` of
  the edited labels on the whole grid.
* Rescoring reads only the segments' bounding boxes and a view of the stored (int16) CT,
  and gives exactly the scores of a full rescoring.
* Fingerprints written by earlier versions (whole-grid masks) are still understood.
* The attention kept for display is quantised: at most 300 MB for 512 x 512 x 400, values
  within half a quantisation step.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_TO_LABEL  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.attention import AttentionMaps  # noqa: E402
from CoronaryCalciumDINOLib.scene.edits import HASH_TAG, edited_segments, flag_unrecorded_edits  # noqa: E402
from CoronaryCalciumDINOLib.scene.segmentation import (  # noqa: E402
    RESULT_ATTRIBUTE,
    full_mask_fingerprint,
    read_labels_box,
    read_segment_boxes,
    write_segment_mask,
)
from CoronaryCalciumDINOLib.scene.table import report_from_table  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, nodes_by_class, volume_node_to_ct  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringParams, score  # noqa: E402
from slicer_module_stand_ins import load_module  # noqa: E402


def study() -> tuple[CTVolume, np.ndarray]:
    """An integer-HU CT (stored as int16 in the volume node) with calcium in every artery."""
    rng = np.random.default_rng(7)
    hu = rng.integers(-120, 90, size=(12, 40, 48)).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    spots = {"LM": [(2, 5, 6)], "LAD": [(3, 20, 30), (8, 30, 8)], "LCX": [(5, 12, 40)], "RCA": [(9, 33, 33), (10, 2, 2)]}
    for artery, places in spots.items():
        for k, (z, y, x) in enumerate(places):
            hu[z, y: y + 4, x: x + 5] = 180 + 120 * k + rng.integers(0, 300, size=(4, 5))
            labels[z, y: y + 4, x: x + 5] = ARTERY_TO_LABEL[artery]
    return CTVolume(hu=hu, spacing=(2.5, 0.6, 0.6), kvp=120.0), labels


class Result:
    def __init__(self, ct: CTVolume, labels: np.ndarray):
        self.labels = labels
        self.score = score(ct.hu, labels, ct.spacing, ScoringParams(kvp=120.0))
        self.slice_probabilities = None
        self.attention = None


def save_bundle(core, tmp_path) -> str:
    """The scene as a Slicer data bundle (.mrb), as File > Save writes it."""
    folder = tmp_path / "saved"
    folder.mkdir()
    assert core.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder), None)
    mrb = str(tmp_path / "study.mrb")
    assert core.app_logic.Zip(mrb, str(folder))
    return mrb


def load_bundle(core, mrb: str, tmp_path) -> None:
    unpack = tmp_path / "unpacked"
    unpack.mkdir(exist_ok=True)
    assert core.app_logic.OpenSlicerDataBundle(mrb, str(unpack))


def scores_of(table_node) -> dict:
    report = report_from_table(table_node)
    return {a: report["arteries"][a]["agatston"] for a in ARTERIES} | {"total": report["total"]["agatston"]}


def expected_scores(ct: CTVolume, labels: np.ndarray) -> dict:
    expected = score(ct.hu, labels, ct.spacing, ScoringParams(kvp=120.0))
    return {a: expected.arteries[a].agatston for a in ARTERIES} | {"total": expected.total.agatston}


def loaded_result(scene):
    segs = [n for n in nodes_by_class(scene, "vtkMRMLSegmentationNode") if n.GetAttribute(RESULT_ATTRIBUTE)]
    assert len(segs) == 1
    return segs[0]


# ----------------------------------------------------------------------------- reload


def test_reloaded_bundle_tracks_edits_and_rescores(tmp_path):
    ct, labels = study()
    first = scene_logic.create_core_scene()
    volume = ct_to_volume_node(first.scene, ct, "CT")
    out = scene_logic.compute(first.scene, volume, segment_fn=lambda c: Result(c, labels))
    assert scores_of(out.score_table_node) == pytest.approx(expected_scores(ct, labels), rel=1e-12)
    mrb = save_bundle(first, tmp_path)

    fresh = scene_logic.create_core_scene()
    load_bundle(fresh, mrb, tmp_path)
    seg = loaded_result(fresh.scene)
    found = scene_logic.tagged_results(fresh.scene)
    assert [f.segmentation_node for f in found] == [seg]
    loaded_volume = found[0].volume_node
    assert loaded_volume.GetName() == "CT" and found[0].newly_flagged == []
    assert found[0].params == ScoringParams(kvp=120.0)  # read back from the stored table

    rescored = []
    sessions = scene_logic.reopen_sessions(
        fresh.scene, lambda s, v, p: scene_logic.ResultSession(fresh.scene, v, s, p, on_rescored=rescored.append))
    assert len(sessions) == 1
    lad = labels == ARTERY_TO_LABEL["LAD"]
    lad[8] = False  # the user erases the LAD lesion of slice 8
    write_segment_mask(seg, "LAD", lad, loaded_volume)
    edited = np.where((labels == ARTERY_TO_LABEL["LAD"]) & ~lad, 0, labels)
    table, _ = scene_logic.result_tables(fresh.scene, seg)
    assert edited_segments(seg) == ["LAD"] and rescored  # checked on each event (no deferral here)
    assert scores_of(table) == pytest.approx(expected_scores(ct, edited), rel=1e-12)
    assert scores_of(table)["LAD"] < expected_scores(ct, labels)["LAD"]
    sessions[0].close()


def test_module_logic_reopens_sessions_on_scene_import(tmp_path, monkeypatch):
    ct, labels = study()
    first = scene_logic.create_core_scene()
    volume = ct_to_volume_node(first.scene, ct, "CT")
    scene_logic.compute(first.scene, volume, segment_fn=lambda c: Result(c, labels))
    mrb = save_bundle(first, tmp_path)

    core = scene_logic.create_core_scene()
    module, _app = load_module(monkeypatch, core)
    logic = module.CoronaryCalciumDINOLogic()
    reports = []
    logic.onRescored = reports.append
    logic.observeScene()
    try:
        load_bundle(core, mrb, tmp_path)  # the scene's EndImportEvent opens the session
        seg = loaded_result(core.scene)
        assert seg.GetID() in logic._sessions
        loaded_volume = logic._sessions[seg.GetID()].volume_node
        rca = labels == ARTERY_TO_LABEL["RCA"]
        rca[10] = False
        write_segment_mask(seg, "RCA", rca, loaded_volume)
        assert reports == []  # checked once the editing pauses (the module's timer)
        logic.flushEditChecks()
        edited = np.where((labels == ARTERY_TO_LABEL["RCA"]) & ~rca, 0, labels)
        table, _ = logic.resultTables(seg)
        assert len(reports) == 1 and edited_segments(seg) == ["RCA"]
        assert scores_of(table) == pytest.approx(expected_scores(ct, edited), rel=1e-12)
        assert logic.restoreSessions() == 0  # already tracked: no second session
    finally:
        logic.stopObservingScene()
        logic.closeSessions()


def test_edit_made_before_the_session_opens_is_rescored(tmp_path):
    """An edit made while nothing tracked the result (e.g. before the module was opened) is
    flagged and rescored when the session opens again."""
    ct, labels = study()
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    write_segment_mask(out.segmentation_node, "LM", np.zeros(ct.shape, bool), volume)
    assert edited_segments(out.segmentation_node) == []
    rescored = []
    sessions = scene_logic.reopen_sessions(
        core.scene, lambda s, v, p: scene_logic.ResultSession(core.scene, v, s, p, on_rescored=rescored.append))
    edited = np.where(labels == ARTERY_TO_LABEL["LM"], 0, labels)
    assert edited_segments(out.segmentation_node) == ["LM"] and len(rescored) == 1  # rescored on opening
    assert scores_of(out.score_table_node) == pytest.approx(expected_scores(ct, edited), rel=1e-12)
    sessions[0].close()


def test_fingerprints_of_earlier_versions_are_understood():
    ct, labels = study()
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    seg = out.segmentation_node
    for artery in ARTERIES:  # as an earlier version stored them
        seg.GetSegmentation().GetSegment(artery).SetTag(HASH_TAG, full_mask_fingerprint(labels == ARTERY_TO_LABEL[artery]))
    assert flag_unrecorded_edits(seg, volume) == []
    write_segment_mask(seg, "LCX", np.zeros(ct.shape, bool), volume)
    assert flag_unrecorded_edits(seg, volume) == ["LCX"]


# ----------------------------------------------------------------------------- boxes


def test_box_rescoring_equals_full_rescoring_and_keeps_the_ct_as_stored():
    ct, labels = study()
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    seg = out.segmentation_node
    # overlapping edits: LAD also claims part of an LM lesion (the later artery wins)
    lad = labels == ARTERY_TO_LABEL["LAD"]
    lad[2, 5:7, 6:9] = True
    lad[11, 0:3, 44:48] = True  # a stroke at the corner of the grid
    write_segment_mask(seg, "LAD", lad, volume)
    full = labels.copy()
    full[lad] = ARTERY_TO_LABEL["LAD"]
    full[(labels == ARTERY_TO_LABEL["LCX"]) | (labels == ARTERY_TO_LABEL["RCA"])] = labels[
        (labels == ARTERY_TO_LABEL["LCX"]) | (labels == ARTERY_TO_LABEL["RCA"])]

    box, offset, warnings = read_labels_box(seg, volume)
    assert box.shape != ct.shape  # only the box of the segments
    whole = np.zeros(ct.shape, np.uint8)
    whole[tuple(slice(o, o + n) for o, n in zip(offset, box.shape))] = box
    assert np.array_equal(whole, full)
    assert warnings and "more than one artery" in warnings[0]

    view = volume_node_to_ct(volume, copy=False)
    assert view.hu.dtype == np.int16 and not view.hu.flags.writeable
    from vtk.util import numpy_support as ns

    assert np.shares_memory(view.hu, ns.vtk_to_numpy(volume.GetImageData().GetPointData().GetScalars()))  # no copy

    report = scene_logic.rescore(seg, volume)
    expected = score(ct.hu, full, ct.spacing, ScoringParams(kvp=120.0))
    assert scores_of(out.score_table_node) == pytest.approx(expected_scores(ct, full), rel=0, abs=0)
    assert [(les["artery"], les["slice"], les["agatston"]) for les in report["lesions"]] == [
        (les.artery, les.slice, les.agatston) for les in expected.lesions]

    boxes = read_segment_boxes(seg, volume, ARTERIES)
    for artery in ARTERIES:
        expected_mask = full == ARTERY_TO_LABEL[artery] if artery != "LM" else labels == ARTERY_TO_LABEL["LM"]
        assert np.array_equal(boxes[artery].full(), expected_mask), artery


def test_box_rescoring_of_an_empty_segmentation():
    ct, labels = study()
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    for artery in ARTERIES:
        write_segment_mask(out.segmentation_node, artery, np.zeros(ct.shape, bool), volume)
    report = scene_logic.rescore(out.segmentation_node, volume)
    assert report["total"]["agatston"] == 0.0 and report["lesions"] == []


# ----------------------------------------------------------------------------- attention


def test_attention_memory_is_bounded_for_512x512x400():
    """Attention over every voxel of a 512 x 512 x 400 CT (4 heads + mean): 2.1 GB as
    float32; kept within 300 MB, each value within half a quantisation step."""
    shape = (5, 400, 512, 512)
    ramp = np.linspace(0.001, 1.0, 512, dtype=np.float32)
    maps = np.broadcast_to(ramp[None, None, None, :] * np.float32(1.0), shape)  # no 2.1 GB in the test itself
    assert maps.dtype == np.float32 and 4 * np.prod(shape) > 2.0e9
    kept = AttentionMaps(maps)
    assert kept.nbytes <= 300e6
    for h in (0, 3):
        decoded = kept.head(h)
        assert decoded.dtype == np.float32 and decoded.shape == shape[1:]
        assert np.abs(decoded[::7, ::5] - maps[h][::7, ::5]).max() <= kept.step[h] / 2 + 1e-6


def test_attention_quantisation_and_display(tmp_path):
    rng = np.random.default_rng(3)
    ct, labels = study()
    maps = np.zeros((5, *ct.shape), np.float32)
    maps[:, 3:6, 10:30, 5:25] = rng.random((5, 3, 20, 20)).astype(np.float32)
    maps[1:] /= maps[1:].max(axis=(1, 2, 3), keepdims=True)
    kept = AttentionMaps(maps)
    assert kept.bits == 8 and kept.nbytes < maps.nbytes / 4
    for h in range(5):
        decoded = kept.head(h)
        assert np.abs(decoded - maps[h]).max() <= kept.step[h] / 2 + 1e-7
        assert np.all(decoded[maps[h] == 0] == 0)
    sparse = maps.copy()
    sparse[:, 0, 0, 0] = 0.5  # far from the rest: only the reached voxels are kept
    kept_sparse = AttentionMaps(sparse)
    assert kept_sparse.sparse
    assert all(np.abs(kept_sparse.head(h) - sparse[h]).max() <= kept_sparse.step[h] / 2 + 1e-7 for h in range(5))

    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    from CoronaryCalciumDINOLib.scene.attention import show_attention_head
    from vtk.util import numpy_support as ns

    node = show_attention_head(core.scene, volume, kept, 2)
    shown = ns.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(ct.shape)
    assert np.array_equal(shown, kept.head(2))
    assert np.abs(shown - maps[2]).max() <= kept.step[2] / 2 + 1e-7


def test_module_logic_keeps_attention_quantised(monkeypatch):
    core = scene_logic.create_core_scene()
    module, _app = load_module(monkeypatch, core)
    ct, labels = study()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    maps = np.zeros((5, *ct.shape), np.float32)
    maps[:, 2:9] = np.linspace(0.0, 1.0, ct.shape[2], dtype=np.float32)

    def segment(c):
        result = Result(c, labels)
        result.attention = maps
        return result

    logic = module.CoronaryCalciumDINOLogic()
    try:
        logic.compute(volume, segmentFn=segment)
        kept = logic._attention[volume.GetID()]
        assert isinstance(kept, AttentionMaps) and kept.nbytes < maps.nbytes / 3
        node = logic.selectAttentionHead(volume, 4)
        from vtk.util import numpy_support as ns

        shown = ns.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()).reshape(ct.shape)
        assert np.abs(shown - maps[4]).max() <= kept.step[4] / 2 + 1e-7
    finally:
        logic.closeSessions()



# ----------------------------------------------------------------------------- a segmentation file loaded alone


def load_segmentation_file(core, path) -> object:
    """A ``.seg.nrrd`` loaded on its own, as File > Add Data does (node added, then read)."""
    node = core.segmentations_logic.LoadSegmentationFromFile(str(path), True)
    assert node is not None
    return node


def saved_segmentation_file(tmp_path) -> tuple[CTVolume, np.ndarray, str]:
    """The result segmentation of a scene written to a ``.seg.nrrd`` by Slicer's storage node
    (what saving the scene writes), without the scene."""
    ct, labels = study()
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    out = scene_logic.compute(core.scene, volume, segment_fn=lambda c: Result(c, labels))
    path = str(tmp_path / "CT calcium.seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    core.scene.AddNode(storage)
    storage.SetFileName(path)
    assert storage.WriteData(out.segmentation_node)
    return ct, labels, path


@pytest.mark.parametrize("source", ["ccdino", "slicer"])
def test_segmentation_file_loaded_alone_is_tracked_and_scored(tmp_path, source):
    """The ``.seg.nrrd`` of ``ccdino score --out`` or of a saved scene, loaded on its own beside
    its CT: recognised by its segments' tags, tied to the CT on whose grid it lies, scored at
    once, and rescored on an edit."""
    from CoronaryCalciumDINOLib.io.segfile import write_seg_nrrd

    if source == "ccdino":
        ct, labels = study()
        path = write_seg_nrrd(labels, ct, tmp_path / "study.seg.nrrd", ai_result=True)
    else:
        ct, labels, path = saved_segmentation_file(tmp_path)
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    ct_to_volume_node(core.scene, CTVolume(hu=ct.hu[:, :20], spacing=ct.spacing), "other grid")
    seg = load_segmentation_file(core, path)
    assert not seg.GetAttribute(RESULT_ATTRIBUTE)  # the file keeps no node attributes

    rescored = []
    sessions = scene_logic.reopen_sessions(
        core.scene, lambda s, v, p: scene_logic.ResultSession(core.scene, v, s, p, on_rescored=rescored.append))
    assert len(sessions) == 1 and sessions[0].segmentation_node is seg and sessions[0].volume_node is volume
    assert seg.GetAttribute(RESULT_ATTRIBUTE) == volume.GetID()
    assert edited_segments(seg) == [] and len(rescored) == 1  # no edit; scored at once (there was no table)
    table, _ = scene_logic.result_tables(core.scene, seg)
    assert scores_of(table) == pytest.approx(expected_scores(ct, labels), rel=1e-12)

    lcx = labels == ARTERY_TO_LABEL["LCX"]
    lcx[5] = False  # the user erases the LCX lesion
    write_segment_mask(seg, "LCX", lcx, volume)
    edited = np.where(labels == ARTERY_TO_LABEL["LCX"], 0, labels)
    assert edited_segments(seg) == ["LCX"] and len(rescored) == 2
    assert scores_of(table) == pytest.approx(expected_scores(ct, edited), rel=1e-12)
    assert scene_logic.reopen_sessions(core.scene, lambda s, v, p: sessions[0]) == [sessions[0]]  # no second result
    sessions[0].close()


def test_segmentation_file_edited_before_loading_is_flagged(tmp_path):
    ct, labels = study()
    from CoronaryCalciumDINOLib.io.segfile import write_seg_nrrd

    path = write_seg_nrrd(labels, ct, tmp_path / "study.seg.nrrd", ai_result=True)
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, ct, "CT")
    seg = load_segmentation_file(core, path)
    write_segment_mask(seg, "RCA", np.zeros(ct.shape, bool), volume)  # edited while nothing tracked it
    sessions = scene_logic.reopen_sessions(core.scene, lambda s, v, p: scene_logic.ResultSession(core.scene, v, s, p))
    assert edited_segments(seg) == ["RCA"]
    table, _ = scene_logic.result_tables(core.scene, seg)
    assert scores_of(table) == pytest.approx(expected_scores(ct, np.where(labels == ARTERY_TO_LABEL["RCA"], 0, labels)),
                                             rel=1e-12)
    sessions[0].close()


def test_segmentations_that_are_not_recognised_as_results(tmp_path):
    """Not taken for a result: a file without the AI's tags (a reader's labels), a result whose
    grid two CTs share when neither is named like it, and one whose CT has its result already."""
    from CoronaryCalciumDINOLib.io.segfile import write_seg_nrrd

    ct, labels = study()
    plain = write_seg_nrrd(labels, ct, tmp_path / "reader.seg.nrrd")
    tagged = write_seg_nrrd(labels, ct, tmp_path / "study.seg.nrrd", ai_result=True)
    core = scene_logic.create_core_scene()
    ct_to_volume_node(core.scene, ct, "scan A")
    ct_to_volume_node(core.scene, ct, "scan B")
    load_segmentation_file(core, plain)
    load_segmentation_file(core, tagged)
    assert scene_logic.recognise_loaded_results(core.scene) == []
    assert scene_logic.tagged_results(core.scene) == []

    computed = scene_logic.create_core_scene()  # the CT has its result: a copy of its segments is no second one
    volume = ct_to_volume_node(computed.scene, ct, "CT")
    out = scene_logic.compute(computed.scene, volume, segment_fn=lambda c: Result(c, labels))
    copy = load_segmentation_file(computed, tagged)
    assert scene_logic.recognise_loaded_results(computed.scene) == [] and not copy.GetAttribute(RESULT_ATTRIBUTE)
    assert [f.segmentation_node for f in scene_logic.tagged_results(computed.scene)] == [out.segmentation_node]

    named = scene_logic.create_core_scene()  # two CTs on the grid: the one the result is named after
    ct_to_volume_node(named.scene, ct, "scan")
    b = ct_to_volume_node(named.scene, ct, "scan B")
    seg = load_segmentation_file(named, tagged)
    seg.SetName("scan B calcium")
    assert scene_logic.recognise_loaded_results(named.scene) == [seg]
    assert seg.GetAttribute(RESULT_ATTRIBUTE) == b.GetID()


def test_module_logic_tracks_a_segmentation_file_loaded_alone(tmp_path, monkeypatch):
    from CoronaryCalciumDINOLib.io.segfile import write_seg_nrrd

    ct, labels = study()
    path = write_seg_nrrd(labels, ct, tmp_path / "study.seg.nrrd", ai_result=True)
    core = scene_logic.create_core_scene()
    module, _app = load_module(monkeypatch, core)
    logic = module.CoronaryCalciumDINOLogic()
    reports = []
    logic.onRescored = reports.append
    logic.observeScene()
    try:
        seg = load_segmentation_file(core, path)  # before its CT: nothing to tie it to yet
        assert logic._loadTimer.active
        logic._loadTimer.active = False
        for callback in logic._loadTimer.callbacks:  # the timer fires once the loading is over
            callback()
        assert logic._sessions == {} and reports == []
        volume = ct_to_volume_node(core.scene, ct, "CT")  # the CT is loaded: the result is found
        assert logic._loadTimer.active
        for callback in logic._loadTimer.callbacks:
            callback()
        assert list(logic._sessions) == [seg.GetID()] and logic._sessions[seg.GetID()].volume_node is volume
        assert len(reports) == 1 and reports[0]["total"]["agatston"] == pytest.approx(
            expected_scores(ct, labels)["total"], rel=1e-12)
        lad = labels == ARTERY_TO_LABEL["LAD"]
        lad[3] = False
        write_segment_mask(seg, "LAD", lad, volume)
        logic.flushEditChecks()
        assert len(reports) == 2 and edited_segments(seg) == ["LAD"]
        table, _ = logic.resultTables(seg)
        edited = np.where((labels == ARTERY_TO_LABEL["LAD"]) & ~lad, 0, labels)
        assert scores_of(table) == pytest.approx(expected_scores(ct, edited), rel=1e-12)
    finally:
        logic.stopObservingScene()
        logic.closeSessions()
