"""Attention maps as a scalar volume overlay on the CT grid.

The pipeline returns ``attention`` as float32 (heads + 1, z, y, x), index 0 the mean over
heads. One volume node per result holds one map at a time; :func:`show_attention_head`
refills it with another head on demand (no per-head copies in the scene).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .volume import _image_from_array, node_ijk_to_ras, numpy_to_matrix

HEAD_ATTRIBUTE = "CoronaryCalciumDINO.AttentionHead"


def attention_name(volume_node) -> str:
    return f"{volume_node.GetName()} attention"


def show_attention_head(scene, volume_node, attention: np.ndarray, head: int = 0, node=None):
    """Fill (or create) the attention volume with map ``head`` (0 = mean); returns the node."""
    import slicer

    attention = np.asarray(attention)
    dims = volume_node.GetImageData().GetDimensions()
    grid = (dims[2], dims[1], dims[0])
    if attention.ndim != 4 or tuple(attention.shape[1:]) != grid:
        raise InputError(f"attention maps of shape {attention.shape} do not match the CT grid {grid}")
    if not 0 <= int(head) < attention.shape[0]:
        raise InputError(f"attention head {head} out of range 0..{attention.shape[0] - 1} (0 = mean)")
    if node is None:
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(attention_name(volume_node))
        scene.AddNode(node)
    node.SetAndObserveImageData(_image_from_array(attention[int(head)].astype(np.float32)))
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


def set_overlay(scene, background_node, foreground_node, opacity: float) -> int:
    """Show ``foreground_node`` over ``background_node`` in every slice view; returns views set.

    ``foreground_node=None`` removes the overlay. A scene without slice views (headless)
    is left unchanged.
    """
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(nodes.GetNumberOfItems()):
        composite = nodes.GetItemAsObject(i)
        if background_node is not None:
            composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
        composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))
    return nodes.GetNumberOfItems()
