"""The scene glue on real MRML (slicer-core): nothing it creates outlives the result, and the
attention overlay leaves the user's slice views alone.

* Every ``GetNodesByClass`` collection is released: a leaked collection keeps a reference
  to each node it held, so the reference counts of the nodes a collection holds count the
  live collections; a removed result segmentation must be destroyed (its ``DeleteEvent``
  fires).
* The attention overlay touches only the foreground layer of the slice views, and only
  when it is shown or hidden; the background volume the user chose is never changed.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.scene import attention as attention_glue  # noqa: E402
from CoronaryCalciumDINOLib.scene import logic as scene_logic  # noqa: E402
from CoronaryCalciumDINOLib.scene.segmentation import find_result_segmentation  # noqa: E402
from CoronaryCalciumDINOLib.scene.volume import ct_to_volume_node, nodes_by_class  # noqa: E402

from result_stand_ins import FakeResult, small_ct  # noqa: E402

VIEWS = ("Red", "Green", "Yellow")


class Result(FakeResult):
    """PipelineResult-like: known labels, their score, slice probabilities and attention."""

    def __init__(self, ct: CTVolume):
        super().__init__(ct)
        self.attention = np.stack([np.full(ct.shape, float(h), np.float32) for h in range(3)])


def add_slice_views(scene):
    """One slice composite node per view, as Slicer's layout creates them."""
    composites = []
    for name in VIEWS:
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        composites.append(composite)
    return composites


def count_segmentation_nodes(scene) -> int:
    return len(nodes_by_class(scene, "vtkMRMLSegmentationNode"))


def test_nodes_by_class_releases_its_collection():
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    before = node.GetReferenceCount()
    for _ in range(5):
        assert nodes_by_class(scene, "vtkMRMLSegmentationNode") == [node]
    gc.collect()
    assert node.GetReferenceCount() == before


def test_compute_attention_and_removal_20_times_leave_nothing_behind():
    core = scene_logic.create_core_scene()
    scene = core.scene
    ct = small_ct()
    volume = ct_to_volume_node(scene, ct, "small")
    composites = add_slice_views(scene)
    for c in composites:
        c.SetBackgroundVolumeID(volume.GetID())

    deleted = []

    def run_once():
        out = scene_logic.compute(scene, volume, segment_fn=Result)
        seg = out.segmentation_node
        seg.AddObserver(vtk.vtkCommand.DeleteEvent, lambda caller, event: deleted.append(1))
        assert find_result_segmentation(scene, volume) is seg
        maps = out.pipeline_result.attention
        for head in (1, 2, 0):
            attention_glue.show_attention_head(scene, volume, maps, head, out.attention_node)
            attention_glue.set_overlay(scene, out.attention_node, True, 0.4)
            attention_glue.set_overlay_opacity(scene, out.attention_node, 0.6)
            attention_glue.set_overlay(scene, out.attention_node, False, 0.6)
        scene_logic.remove_result(scene, seg)
        assert find_result_segmentation(scene, volume) is None

    run_once()  # first use may create shared nodes (colour tables, ...)
    gc.collect()
    nodes = scene.GetNumberOfNodes()
    refs = {"volume": volume.GetReferenceCount(), **{c.GetLayoutName(): c.GetReferenceCount() for c in composites}}
    for _ in range(20):
        run_once()
        gc.collect()
        assert count_segmentation_nodes(scene) == 0
    now = {"volume": volume.GetReferenceCount(), **{c.GetLayoutName(): c.GetReferenceCount() for c in composites}}
    # each live collection holding a node adds one reference to it
    assert now == refs
    assert scene.GetNumberOfNodes() == nodes
    assert len(deleted) == 21  # every removed segmentation (and its labelmaps) was freed
    for c in composites:
        assert c.GetBackgroundVolumeID() == volume.GetID()
        assert c.GetForegroundVolumeID() is None


# ----------------------------------------------------------------------------- attention overlay


def test_attention_overlay_touches_only_the_foreground_and_only_on_show_or_hide():
    core = scene_logic.create_core_scene()
    scene = core.scene
    ct = small_ct()
    volume = ct_to_volume_node(scene, ct, "small")
    other = ct_to_volume_node(scene, ct, "user background")
    user_fg = ct_to_volume_node(scene, ct, "user foreground")
    red, green, yellow = add_slice_views(scene)
    red.SetBackgroundVolumeID(other.GetID())  # the user looks at another volume in Red
    green.SetBackgroundVolumeID(volume.GetID())
    green.SetForegroundVolumeID(user_fg.GetID())  # and has an overlay of their own in Green
    green.SetForegroundOpacity(0.3)
    yellow.SetBackgroundVolumeID(volume.GetID())

    out = scene_logic.compute(scene, volume, segment_fn=Result)
    att = out.attention_node
    modified = []
    for c in (red, green, yellow):
        c.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: modified.append(caller.GetLayoutName()))

    def state():
        return [(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), round(c.GetForegroundOpacity(), 6)) for c in (red, green, yellow)]

    initial = state()
    # hidden: head changes, opacity ticks and "hide" do not touch any view
    attention_glue.show_attention_head(scene, volume, out.pipeline_result.attention, 2, att)
    assert attention_glue.set_overlay_opacity(scene, att, 0.8) == 0
    assert attention_glue.set_overlay(scene, att, False, 0.8) == 0
    assert modified == [] and state() == initial

    # shown: the attention is the foreground of every view; backgrounds unchanged
    assert attention_glue.set_overlay(scene, att, True, 0.5) == 3
    assert [c.GetForegroundVolumeID() for c in (red, green, yellow)] == [att.GetID()] * 3
    assert [c.GetBackgroundVolumeID() for c in (red, green, yellow)] == [other.GetID(), volume.GetID(), volume.GetID()]
    assert all(c.GetForegroundOpacity() == pytest.approx(0.5) for c in (red, green, yellow))
    # showing again changes nothing
    modified.clear()
    assert attention_glue.set_overlay(scene, att, True, 0.5) == 0
    assert modified == []

    # the user puts their own foreground back into Yellow: opacity ticks leave it alone
    yellow.SetForegroundVolumeID(user_fg.GetID())
    yellow.SetForegroundOpacity(0.9)
    assert attention_glue.set_overlay_opacity(scene, att, 0.7) == 2
    assert red.GetForegroundOpacity() == pytest.approx(0.7) and green.GetForegroundOpacity() == pytest.approx(0.7)
    assert yellow.GetForegroundOpacity() == pytest.approx(0.9)

    # hidden: each view showing the attention gets back the foreground it had before
    assert attention_glue.set_overlay(scene, att, False, 0.7) == 2
    assert state() == [
        (other.GetID(), None, initial[0][2]),
        (volume.GetID(), user_fg.GetID(), 0.3),
        (volume.GetID(), user_fg.GetID(), 0.9),
    ]


def test_attention_overlay_without_slice_views_is_a_no_op():
    core = scene_logic.create_core_scene()
    volume = ct_to_volume_node(core.scene, small_ct(), "small")
    out = scene_logic.compute(core.scene, volume, segment_fn=Result)
    assert attention_glue.set_overlay(core.scene, out.attention_node, True, 0.5) == 0
    assert attention_glue.set_overlay(core.scene, None, True, 0.5) == 0
