"""The result segmentation: four artery segments (LM, LAD, LCX, RCA) on the CT grid.

Segment IDs and names are exactly the artery names; colours come from
:data:`~CoronaryCalciumDINOLib.constants.ARTERY_COLORS`; every segment carries a
``TerminologyEntry`` tag (calcification of the artery, the string of
:func:`CoronaryCalciumDINOLib.io.segfile.terminology_entry`).
"""

from __future__ import annotations

import numpy as np

from ..constants import ARTERIES, ARTERY_COLORS, ARTERY_TO_LABEL
from ..errors import InputError
from ..io.segfile import terminology_entry
from .volume import (
    array_from_oriented_image,
    node_ijk_to_ras,
    nodes_by_class,
    oriented_image_from_array,
    reference_oriented_image,
)

#: Node attribute marking a segmentation written by this module (value: the CT node ID).
RESULT_ATTRIBUTE = "CoronaryCalciumDINO.ResultOf"


def result_name(volume_node) -> str:
    """Name of the result segmentation of a volume, e.g. ``"CT 1 calcium"``."""
    return f"{volume_node.GetName()} calcium"


def find_result_segmentation(scene, volume_node):
    """The result segmentation this module wrote for ``volume_node``, or None."""
    found = None
    for node in nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        if node.GetAttribute(RESULT_ATTRIBUTE) == volume_node.GetID():
            found = node
    return found


def place_in_hierarchy(scene, node, volume_node) -> None:
    """Put ``node`` under the subject-hierarchy parent (study) of ``volume_node``.

    Slicer's application creates subject-hierarchy items for new nodes; a bare MRML scene
    (slicer-core) does not, so missing items are created here.
    """
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    vol_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetItemParent(vol_item) if vol_item else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if not item:
        sh.CreateItem(parent, node)
    elif sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)


def create_result_segmentation(scene, volume_node):
    """New segmentation node for ``volume_node`` with the four empty, tagged artery segments."""
    import slicer

    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(result_name(volume_node))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAttribute(RESULT_ATTRIBUTE, volume_node.GetID())
    ensure_artery_segments(node)
    place_in_hierarchy(scene, node, volume_node)
    return node


def ensure_artery_segments(segmentation_node) -> None:
    """Add any missing artery segment (ID = name = artery) with its colour and terminology."""
    segmentation = segmentation_node.GetSegmentation()
    for artery in ARTERIES:
        if segmentation.GetSegment(artery) is None:
            segmentation.AddEmptySegment(artery, artery, list(ARTERY_COLORS[artery]))
        segment = segmentation.GetSegment(artery)
        segment.SetTag("TerminologyEntry", terminology_entry(artery))


def segment_id_by_name(segmentation_node, name: str) -> str:
    """Segment ID of the segment called ``name`` (exact; ID = name also accepted)."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(name) is not None:
        return name
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    if not segment_id:
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' has no segment named {name}; "
            f"expected segments {', '.join(ARTERIES)}"
        )
    return segment_id


def write_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace a segment's content by a boolean (z, y, x) mask on ``volume_node``'s grid."""
    import slicer

    image = oriented_image_from_array(np.asarray(mask, dtype=bool).astype(np.uint8), node_ijk_to_ras(volume_node))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE, image.GetExtent()):
        raise InputError(f"cannot write segment {segment_id} of '{segmentation_node.GetName()}'")


def read_segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """Boolean (z, y, x) mask of a segment resampled (nearest) onto ``volume_node``'s grid.

    Segments may share one labelmap layer; a segment is the voxels of its layer equal to
    its label value.
    """
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment {segment_id}")
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(name) and not segmentation.CreateRepresentation(name):
        raise InputError(f"cannot convert segmentation '{segmentation_node.GetName()}' to a binary labelmap")
    layer = segment.GetRepresentation(name)
    return array_from_oriented_image(layer, reference_oriented_image(volume_node)) == segment.GetLabelValue()


def write_labels(segmentation_node, labels: np.ndarray, volume_node, arteries=ARTERIES) -> None:
    """Write the label map (0..4) into the artery segments named in ``arteries``."""
    ext = volume_node.GetImageData().GetDimensions()
    if tuple(labels.shape) != (ext[2], ext[1], ext[0]):
        raise InputError(f"label map shape {labels.shape} does not match the CT grid {(ext[2], ext[1], ext[0])}")
    for artery in arteries:
        write_segment_mask(segmentation_node, artery, labels == ARTERY_TO_LABEL[artery], volume_node)


def read_labels(segmentation_node, volume_node) -> tuple[np.ndarray, list[str]]:
    """Label map (uint8 0..4, z, y, x) of the four artery segments on the CT grid.

    Segments are found by name (LM, LAD, LCX, RCA), so any segmentation holding them works,
    including hand-made ones. A voxel claimed by two segments takes the later artery in
    label order; such overlaps are reported in the returned warnings.
    """
    if segmentation_node is None:
        raise InputError("no segmentation selected")
    missing = [a for a in ARTERIES if not _has_segment(segmentation_node, a)]
    if missing:
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' is missing segment(s) {', '.join(missing)}; "
            f"expected segments named {', '.join(ARTERIES)}"
        )
    dims = volume_node.GetImageData().GetDimensions()
    labels = np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint8)
    claimed = np.zeros(labels.shape, dtype=np.uint8)
    for artery in ARTERIES:
        mask = read_segment_mask(segmentation_node, segment_id_by_name(segmentation_node, artery), volume_node)
        labels[mask] = ARTERY_TO_LABEL[artery]
        claimed += mask
    warnings = []
    overlap = int(np.count_nonzero(claimed > 1))
    if overlap:
        warnings.append(f"{overlap} voxel(s) belong to more than one artery segment; the later artery in {'/'.join(ARTERIES)} order was used")
    return labels, warnings


def _has_segment(segmentation_node, name: str) -> bool:
    segmentation = segmentation_node.GetSegmentation()
    return segmentation.GetSegment(name) is not None or bool(segmentation.GetSegmentIdBySegmentName(name))
