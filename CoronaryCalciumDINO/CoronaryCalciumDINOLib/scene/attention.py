"""Attention maps as a scalar volume overlay on the CT grid.

The pipeline returns ``attention`` as float32 (heads + 1, z, y, x), index 0 the mean over
heads. One volume node per result holds one map at a time; :func:`show_attention_head`
refills it with another head on demand (no per-head copies in the scene).

The maps kept for that (:class:`~..io.attention.AttentionMaps`) are quantised (8 bits or
fewer per voxel, only where the attention reaches; at most
:data:`~..io.attention.ATTENTION_BUDGET_BYTES`); a head is decoded when it is shown. The
Slicer module's compute process writes them already quantised, so its main thread never
holds the float maps.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.attention import ATTENTION_BUDGET_BYTES, AttentionMaps  # noqa: F401 (kept here: the scene glue's name)
from .volume import _vtk, node_ijk_to_ras, nodes_by_class, numpy_to_matrix

HEAD_ATTRIBUTE = "CoronaryCalciumDINO.AttentionHead"
#: Slice composite node attributes: the view's own foreground (node ID, "" for none) and
#: its opacity while the attention overlay replaces them.
PREVIOUS_FOREGROUND = "CoronaryCalciumDINO.PreviousForeground"
PREVIOUS_OPACITY = "CoronaryCalciumDINO.PreviousForegroundOpacity"


def attention_name(volume_node) -> str:
    return f"{volume_node.GetName()} attention"


def show_attention_head(scene, volume_node, attention: np.ndarray, head: int = 0, node=None):
    """Fill (or create) the attention volume with map ``head`` (0 = mean); returns the node."""
    import slicer

    vtk, ns = _vtk()
    if not isinstance(attention, AttentionMaps):
        attention = np.asarray(attention)
    dims = volume_node.GetImageData().GetDimensions()
    grid = (dims[2], dims[1], dims[0])
    if len(attention.shape) != 4 or tuple(attention.shape[1:]) != grid:
        raise InputError(f"attention maps of shape {tuple(attention.shape)} do not match the CT grid {grid}")
    if not 0 <= int(head) < attention.shape[0]:
        raise InputError(f"attention head {head} out of range 0..{attention.shape[0] - 1} (0 = mean)")
    if node is None:
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(attention_name(volume_node))
        scene.AddNode(node)
    image = vtk.vtkImageData()  # filled in place: no float copy of the map besides the node's own
    image.SetDimensions(dims)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    target = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(grid)
    if isinstance(attention, AttentionMaps):
        attention.head(int(head), out=target)
    else:
        target[...] = attention[int(head)]
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(numpy_to_matrix(node_ijk_to_ras(volume_node)))
    node.SetAttribute(HEAD_ATTRIBUTE, str(int(head)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        color = scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt") or scene.GetNodeByID(
            "vtkMRMLColorTableNodeRainbow"
        )
        if color is not None:
            display.SetAndObserveColorNodeID(color.GetID())
        display.AutoWindowLevelOn()
    return node


def _composites(scene) -> list:
    return nodes_by_class(scene, "vtkMRMLSliceCompositeNode")


def set_overlay(scene, attention_node, show: bool, opacity: float) -> int:
    """Show or hide ``attention_node`` as the foreground layer of every slice view; returns
    the number of views changed.

    Only the foreground layer is touched, and only in views where it changes: showing puts
    the attention into each view that does not show it yet (remembering that view's own
    foreground and opacity); hiding gives each view that shows it back what it had before.
    The background volume is never changed, so calling this with ``show=False`` while the
    overlay is hidden changes nothing. A scene without slice views (headless), or no
    attention node, is left unchanged.
    """
    if attention_node is None:
        return 0
    node_id = attention_node.GetID()
    changed = 0
    for composite in _composites(scene):
        shown = composite.GetForegroundVolumeID() == node_id
        if show and not shown:
            wasModifying = composite.StartModify()
            composite.SetAttribute(PREVIOUS_FOREGROUND, composite.GetForegroundVolumeID() or "")
            composite.SetAttribute(PREVIOUS_OPACITY, repr(float(composite.GetForegroundOpacity())))
            composite.SetForegroundVolumeID(node_id)
            composite.SetForegroundOpacity(_clip(opacity))
            composite.EndModify(wasModifying)
            changed += 1
        elif not show and shown:
            previous = composite.GetAttribute(PREVIOUS_FOREGROUND) or None
            if previous is not None and scene.GetNodeByID(previous) is None:
                previous = None  # the user's foreground was removed meanwhile
            opacity_text = composite.GetAttribute(PREVIOUS_OPACITY)
            wasModifying = composite.StartModify()
            composite.SetForegroundVolumeID(previous)
            if opacity_text is not None:
                composite.SetForegroundOpacity(float(opacity_text))
            composite.RemoveAttribute(PREVIOUS_FOREGROUND)
            composite.RemoveAttribute(PREVIOUS_OPACITY)
            composite.EndModify(wasModifying)
            changed += 1
    return changed


def set_overlay_opacity(scene, attention_node, opacity: float) -> int:
    """Set the foreground opacity of the views that show ``attention_node``; returns their
    number (0 while the overlay is hidden: no view is touched)."""
    if attention_node is None:
        return 0
    changed = 0
    for composite in _composites(scene):
        if composite.GetForegroundVolumeID() == attention_node.GetID():
            composite.SetForegroundOpacity(_clip(opacity))
            changed += 1
    return changed


def _clip(opacity: float) -> float:
    return float(np.clip(opacity, 0.0, 1.0))
