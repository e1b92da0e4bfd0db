"""The result segmentation: four artery segments (LM, LAD, LCX, RCA) on the CT grid.

Segment IDs and names are exactly the artery names; colours come from
:data:`~CoronaryCalciumDINOLib.constants.ARTERY_COLORS`; every segment carries a
``TerminologyEntry`` tag (calcification of the artery, the string of
:func:`CoronaryCalciumDINOLib.io.segfile.terminology_entry`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..constants import ARTERIES, ARTERY_COLORS, ARTERY_TO_LABEL
from ..errors import InputError
from ..io.segfile import box_fingerprint, terminology_entry
from .volume import (
    array_from_oriented_image,
    image_array_view,
    node_ijk_to_ras,
    nodes_by_class,
    oriented_image_from_array,
    reference_oriented_image,
    shares_voxel_grid,
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


@dataclass
class SegmentBox:
    """A segment on the CT grid, kept as its bounding box: ``mask`` (bool) is the box,
    ``offset`` the (z, y, x) CT voxel of ``mask[0, 0, 0]``, ``grid`` the CT's shape. An
    empty segment has a (0, 0, 0) mask. Calcium is a small part of the CT, so a box is a
    small part of the grid; nothing here is CT-sized."""

    grid: tuple[int, int, int]
    offset: tuple[int, int, int]
    mask: np.ndarray

    @property
    def empty(self) -> bool:
        return self.mask.size == 0

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Where the box lies on the CT grid."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))  # type: ignore[return-value]

    def full(self) -> np.ndarray:
        """The mask on the whole CT grid (a CT-sized array: for tests and old fingerprints)."""
        out = np.zeros(self.grid, dtype=bool)
        if not self.empty:
            out[self.slices] = self.mask
        return out

    def fingerprint(self) -> str:
        """Fingerprint of the voxels (grid, box and packed mask): equal for equal content.
        Prefixed ``2:`` (older scenes hold :func:`full_mask_fingerprint` values)."""
        return box_fingerprint(self.grid, self.offset, self.mask)


def full_mask_fingerprint(mask: np.ndarray) -> str:
    """Fingerprint of a boolean mask on the whole grid (the format of earlier versions)."""
    digest = hashlib.sha1(repr(tuple(mask.shape)).encode())
    digest.update(np.packbits(np.asarray(mask, dtype=bool), axis=None).tobytes())
    return digest.hexdigest()


def _nonzero_box(array: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the non-zero voxels of a (z, y, x) array; None when all are zero.
    Reductions by ``max`` (fast on integers) over ever smaller parts: no array of the
    input's size is made."""
    if array.size == 0:
        return None
    if array.dtype == bool:
        array = array.view(np.uint8)
    z = np.flatnonzero(array.max(axis=(1, 2)))
    if z.size == 0:
        return None
    slab = array[z[0]: z[-1] + 1]
    y = np.flatnonzero(slab.max(axis=(0, 2)))
    x = np.flatnonzero(slab[:, y[0]: y[-1] + 1].max(axis=(0, 1)))
    return slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1)


def box_from_mask(mask: np.ndarray, offset, grid) -> SegmentBox:
    """The :class:`SegmentBox` of a boolean ``mask`` whose first voxel is CT voxel ``offset``."""
    box = _nonzero_box(mask)
    if box is None:
        return SegmentBox(tuple(grid), (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    origin = tuple(int(o + b.start) for o, b in zip(offset, box))
    return SegmentBox(tuple(grid), origin, np.ascontiguousarray(mask[box]))  # type: ignore[arg-type]


def _binary_labelmap_name(segmentation_node) -> str:
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(name) and not segmentation.CreateRepresentation(name):
        raise InputError(f"cannot convert segmentation '{segmentation_node.GetName()}' to a binary labelmap")
    return name


def _layer_on_grid(layer, volume_node, grid) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(part of the layer on the CT grid, CT voxel of its first element), no copy when the
    layer shares the CT's voxel grid (else resampled, nearest neighbour, onto the grid)."""
    if layer is None or layer.GetPointData().GetScalars() is None or layer.IsEmpty():
        return np.zeros((0, 0, 0), dtype=np.uint8), (0, 0, 0)
    if layer.GetNumberOfScalarComponents() == 1 and shares_voxel_grid(layer, volume_node):
        view = image_array_view(layer)
        ext = layer.GetExtent()
        ref = volume_node.GetImageData().GetExtent()
        lo = [max(ext[2 * a], ref[2 * a]) for a in (2, 1, 0)]  # z, y, x
        hi = [min(ext[2 * a + 1], ref[2 * a + 1]) for a in (2, 1, 0)]
        if view.size == 0 or any(h < low for low, h in zip(lo, hi)):
            return np.zeros((0, 0, 0), dtype=np.uint8), (0, 0, 0)
        first = (ext[4], ext[2], ext[0])
        part = view[tuple(slice(low - f, h - f + 1) for low, h, f in zip(lo, hi, first))]
        return part, tuple(int(low - r) for low, r in zip(lo, (ref[4], ref[2], ref[0])))  # type: ignore[return-value]
    return array_from_oriented_image(layer, reference_oriented_image(volume_node)), (0, 0, 0)


def read_segment_boxes(segmentation_node, volume_node, segment_ids) -> dict[str, SegmentBox]:
    """Segments (by ID) on ``volume_node``'s grid as :class:`SegmentBox` es.

    Segments may share one labelmap layer; a segment is the voxels of its layer equal to its
    label value. A layer on the CT's own voxel grid (the result segmentation's case) is read
    in place: only its non-zero box is copied. Other layers are resampled (nearest
    neighbour) onto the CT grid.
    """
    segmentation = segmentation_node.GetSegmentation()
    dims = volume_node.GetImageData().GetDimensions()
    grid = (dims[2], dims[1], dims[0])
    name = _binary_labelmap_name(segmentation_node)
    layers: dict[str, tuple[np.ndarray, tuple[int, int, int]]] = {}  # each shared layer read once
    boxes: dict[str, SegmentBox] = {}
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment {segment_id}")
        layer = segment.GetRepresentation(name)
        key = layer.GetAddressAsString("vtkObject") if layer is not None else ""
        if key not in layers:
            part, offset = _layer_on_grid(layer, volume_node, grid)
            box = _nonzero_box(part)
            if box is None:
                layers[key] = (np.zeros((0, 0, 0), dtype=np.uint8), (0, 0, 0))
            else:
                layers[key] = (np.array(part[box]), tuple(int(o + b.start) for o, b in zip(offset, box)))
        values, offset = layers[key]
        boxes[segment_id] = box_from_mask(values == segment.GetLabelValue(), offset, grid)
    return boxes


def read_segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """Boolean (z, y, x) mask of a segment on ``volume_node``'s whole grid (see
    :func:`read_segment_boxes`, which avoids the CT-sized array)."""
    return read_segment_boxes(segmentation_node, volume_node, [segment_id])[segment_id].full()


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
    labels, offset, warnings = read_labels_box(segmentation_node, volume_node)
    dims = volume_node.GetImageData().GetDimensions()
    full = np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint8)
    full[tuple(slice(o, o + n) for o, n in zip(offset, labels.shape))] = labels
    return full, warnings


def read_labels_box(segmentation_node, volume_node) -> tuple[np.ndarray, tuple[int, int, int], list[str]]:
    """:func:`read_labels` on the bounding box of the four artery segments only:
    (labels of the box, CT voxel (z, y, x) of its first element, warnings). An empty
    segmentation gives a (0, 0, 0) box."""
    if segmentation_node is None:
        raise InputError("no segmentation selected")
    missing = [a for a in ARTERIES if not _has_segment(segmentation_node, a)]
    if missing:
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' is missing segment(s) {', '.join(missing)}; "
            f"expected segments named {', '.join(ARTERIES)}"
        )
    ids = {a: segment_id_by_name(segmentation_node, a) for a in ARTERIES}
    found = read_segment_boxes(segmentation_node, volume_node, list(dict.fromkeys(ids.values())))
    boxes = [found[ids[a]] for a in ARTERIES]
    used = [b for b in boxes if not b.empty]
    if not used:
        return np.zeros((0, 0, 0), dtype=np.uint8), (0, 0, 0), []
    lo = np.min([b.offset for b in used], axis=0)
    hi = np.max([np.add(b.offset, b.mask.shape) for b in used], axis=0)
    labels = np.zeros(tuple(int(v) for v in hi - lo), dtype=np.uint8)
    claimed = np.zeros(labels.shape, dtype=np.uint8)
    for artery, box in zip(ARTERIES, boxes):
        if box.empty:
            continue
        where = tuple(slice(int(o - low), int(o - low) + n) for o, low, n in zip(box.offset, lo, box.mask.shape))
        labels[where][box.mask] = ARTERY_TO_LABEL[artery]
        claimed[where] += box.mask
    warnings = []
    overlap = int(np.count_nonzero(claimed > 1))
    if overlap:
        warnings.append(f"{overlap} voxel(s) belong to more than one artery segment; the later artery in {'/'.join(ARTERIES)} order was used")
    return labels, tuple(int(v) for v in lo), warnings  # type: ignore[return-value]


def _has_segment(segmentation_node, name: str) -> bool:
    segmentation = segmentation_node.GetSegmentation()
    return segmentation.GetSegment(name) is not None or bool(segmentation.GetSegmentIdBySegmentName(name))
