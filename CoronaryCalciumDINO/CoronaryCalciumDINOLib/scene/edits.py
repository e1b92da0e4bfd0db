"""Tracking of user edits on the result segmentation.

When the AI writes a segment, the tracker stores a fingerprint of its voxels (segment tag
``CoronaryCalciumDINO.AIHash``; :meth:`.segmentation.SegmentBox.fingerprint`, or the
whole-grid fingerprint of earlier versions, still understood). The tracker observes the segmentation
(``vtkSegmentation.SegmentModified`` and ``SourceRepresentationModified``) and its labelmap
layers (``ModifiedEvent``: an editor replacing a segment by an empty labelmap sends nothing
else). On each event the artery segments' voxels are compared with what was last seen; a
segment whose content changed is marked as user-edited (tag
``CoronaryCalciumDINO.UserEdited`` = ``1``; ``0`` again if it is back to exactly the AI's
content) and ``on_edit`` is called. Colour, name or tag changes do not change the content,
so they do not count as edits. The tags are saved with the scene.

While the AI writes, call inside ``with tracker.suppressed():`` so its own changes are
ignored.

Segments are read as bounding boxes on the CT grid (:func:`.segmentation.read_segment_boxes`):
a check reads the labelmap layers in place and copies only their non-zero boxes, so its
cost follows the calcium, not the CT's size.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import numpy as np

from ..constants import ARTERIES
from ..io.segfile import AI_FINGERPRINT_TAG, USER_EDITED_TAG
from .segmentation import SegmentBox, box_from_mask, full_mask_fingerprint, read_segment_boxes

EDITED_TAG = USER_EDITED_TAG
HASH_TAG = AI_FINGERPRINT_TAG


def mask_fingerprint(mask: np.ndarray) -> str:
    """Fingerprint of a boolean (z, y, x) mask on the CT grid, as stored in the AI tag
    (equal to the :class:`SegmentBox` fingerprint of the same voxels)."""
    mask = np.asarray(mask, dtype=bool)
    return box_from_mask(mask, (0, 0, 0), mask.shape).fingerprint()


def matches_fingerprint(stored: str | None, box: SegmentBox) -> bool:
    """Whether ``box`` holds the voxels a stored fingerprint was made of (either format)."""
    if stored is None:
        return False
    if stored.startswith("2:"):
        return stored == box.fingerprint()
    return stored == full_mask_fingerprint(box.full())  # a scene saved by an earlier version


def _artery_boxes(segmentation_node, volume_node, arteries=ARTERIES) -> dict[str, SegmentBox]:
    """The artery segments (those present among ``arteries``) as boxes on the CT grid."""
    segmentation = segmentation_node.GetSegmentation()
    present = [a for a in arteries if segmentation.GetSegment(a) is not None]
    return read_segment_boxes(segmentation_node, volume_node, present) if present else {}


def is_edited(segmentation_node, artery: str) -> bool:
    segment = segmentation_node.GetSegmentation().GetSegment(artery)
    return segment is not None and _get_tag(segment, EDITED_TAG) == "1"


def edited_segments(segmentation_node) -> list[str]:
    """Artery segments marked as user-edited."""
    return [a for a in ARTERIES if is_edited(segmentation_node, a)]


def flag_unrecorded_edits(segmentation_node, volume_node) -> list[str]:
    """Flag segments whose content differs from the AI's fingerprint though no tracker saw
    the change (e.g. edited after the scene was reloaded); returns all edited segments."""
    segmentation = segmentation_node.GetSegmentation()
    unflagged = [a for a in ARTERIES if segmentation.GetSegment(a) is not None and not is_edited(segmentation_node, a)]
    boxes = _artery_boxes(segmentation_node, volume_node, unflagged) if unflagged else {}
    for artery, box in boxes.items():
        segment = segmentation.GetSegment(artery)
        stored = _get_tag(segment, HASH_TAG)
        if stored is not None and not matches_fingerprint(stored, box):
            segment.SetTag(EDITED_TAG, "1")
    return edited_segments(segmentation_node)


def _get_tag(segment, key: str) -> str | None:
    import vtk

    value = vtk.reference("")
    if segment.GetTag(key, value):
        return str(value)
    return None


def _layer_consistent(image) -> bool:
    """False while a labelmap is mid-update (its extent and scalars disagree)."""
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return image.GetNumberOfPoints() == 0
    return scalars.GetNumberOfTuples() == image.GetNumberOfPoints()


class EditTracker:
    """Observe a result segmentation and flag segments whose content the user changed.

    ``on_edit(names)`` is called with the artery names whose content just changed, after
    their tags are set. Call :meth:`stop` to remove the observers.
    """

    def __init__(self, segmentation_node, volume_node, on_edit: Callable[[list[str]], None] | None = None,
                 defer: Callable[[Callable[[], None]], None] | None = None):
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        self.on_edit = on_edit
        #: ``defer(check)`` postpones the content check (e.g. a restartable Qt timer, so one
        #: paint stroke is checked once); None checks at once.
        self.defer = defer
        self._suppress = 0
        #: artery -> fingerprint of the content last seen
        self._last: dict[str, str] = {}
        #: (old-format AI fingerprint, box fingerprint) -> whether they are the same content
        self._legacy: dict[tuple[str, str], bool] = {}
        self._observed = None
        self._tags: list[int] = []
        self._layer_tags: list = []
        self.start()

    def start(self) -> None:
        import slicer

        if self._tags:
            return
        self._observed = self.segmentation_node.GetSegmentation()
        # Content changes arrive as SourceRepresentationModified, other changes of a segment
        # as SegmentModified; both are checked against the stored content.
        for event in (slicer.vtkSegmentation.SourceRepresentationModified, slicer.vtkSegmentation.SegmentModified):
            self._tags.append(self._observed.AddObserver(event, self._on_segment_modified))
        self._observe_layers()
        with self.suppressed():
            for artery, box in _artery_boxes(self.segmentation_node, self.volume_node).items():
                self._last[artery] = box.fingerprint()

    def stop(self) -> None:
        if self._observed is not None:
            for tag in self._tags:
                self._observed.RemoveObserver(tag)
        self._tags = []
        self._observed = None
        self._unobserve_layers()

    def _unobserve_layers(self) -> None:
        for image, tag in self._layer_tags:
            image.RemoveObserver(tag)
        self._layer_tags = []

    def _observe_layers(self) -> None:
        """Observe the labelmap layers themselves: replacing a segment's content by an empty
        labelmap modifies its layer without any vtkSegmentation event."""
        import slicer
        import vtk

        self._unobserve_layers()
        name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        seen = set()
        for artery in ARTERIES:
            segment = self.segmentation_node.GetSegmentation().GetSegment(artery)
            layer = segment.GetRepresentation(name) if segment is not None else None
            if layer is None or layer.GetAddressAsString("vtkObject") in seen:
                continue
            seen.add(layer.GetAddressAsString("vtkObject"))
            self._layer_tags.append((layer, layer.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_segment_modified)))

    @contextlib.contextmanager
    def suppressed(self):
        """Ignore segment changes made inside the block (the AI writing)."""
        self._suppress += 1
        try:
            yield
        finally:
            self._suppress -= 1

    def record_ai_content(self, arteries: Iterable[str]) -> None:
        """Store the fingerprint of the segments the AI just wrote and clear their edit flag."""
        with self.suppressed():
            segmentation = self.segmentation_node.GetSegmentation()
            arteries = list(arteries)
            boxes = read_segment_boxes(self.segmentation_node, self.volume_node, arteries) if arteries else {}
            for artery in arteries:
                fingerprint = boxes[artery].fingerprint()
                segment = segmentation.GetSegment(artery)
                segment.SetTag(HASH_TAG, fingerprint)
                segment.SetTag(EDITED_TAG, "0")
                self._last[artery] = fingerprint
        self._observe_layers()

    def refresh(self) -> list[str]:
        """Compare the segments with their last seen content; return the arteries that changed.

        A changed segment is flagged as user-edited unless its content is back to exactly
        what the AI wrote. A segment without an AI fingerprint counts as edited.
        """
        import slicer

        changed = []
        segmentation = self.segmentation_node.GetSegmentation()
        name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        present = [a for a in ARTERIES
                   if segmentation.GetSegment(a) is not None and segmentation.GetSegment(a).GetRepresentation(name) is not None]
        with self.suppressed():
            boxes = read_segment_boxes(self.segmentation_node, self.volume_node, present) if present else {}
            for artery, box in boxes.items():
                segment = segmentation.GetSegment(artery)
                fingerprint = box.fingerprint()
                if self._last.get(artery) == fingerprint:
                    continue
                self._last[artery] = fingerprint
                changed.append(artery)
                segment.SetTag(EDITED_TAG, "0" if self._is_ai_content(artery, _get_tag(segment, HASH_TAG), box) else "1")
        return changed

    def _is_ai_content(self, artery: str, stored: str | None, box: SegmentBox) -> bool:
        """Whether ``box`` is what the AI wrote; an old-format fingerprint (whole grid) is
        compared once per content and remembered, so later checks stay box-sized."""
        if stored is None or stored.startswith("2:"):
            return stored is not None and stored == box.fingerprint()
        key = (stored, box.fingerprint())
        if key not in self._legacy:
            self._legacy[key] = matches_fingerprint(stored, box)
        return self._legacy[key]

    def _on_segment_modified(self, caller=None, event=None) -> None:
        if self._suppress:
            return
        if self.defer is not None:
            self.defer(self._check)
        else:
            self._check()

    def check_now(self) -> None:
        """Check the segments at once (not deferred), e.g. after changes made inside
        :meth:`suppressed` that are the user's (click-to-assign): changed segments are
        flagged and ``on_edit`` is called."""
        self._check()

    def _check(self) -> None:
        if self._tags == [] or self._suppress:
            return  # stopped meanwhile, or the AI is writing
        if not all(_layer_consistent(image) for image, _ in self._layer_tags):
            return  # a layer is being reallocated; its final Modified event follows
        # Segments may share one labelmap, so one event can stand for several segments.
        changed = self.refresh()
        self._observe_layers()
        if changed and self.on_edit is not None:
            self.on_edit(changed)


class IntensityMask:
    """The Segment Editor's intensity mask set for correcting one result segmentation, and
    restored afterwards.

    The Segment Editor node is shared by every segmentation the user edits, so a mask left
    on would limit their later segmentations too. The mask (on, ``low``..``high``) is set
    now; the settings it replaced come back as soon as the editor node's segmentation is
    another one, or on :meth:`restore` (module cleanup, scene close). Settings the user
    changed in the meantime are theirs and stay.
    """

    def __init__(self, editor_node, segmentation_node, low: float, high: float = 1.0e5):
        import vtk

        self.editor_node = editor_node
        self.segmentation_node = segmentation_node
        self.previous = (bool(editor_node.GetSourceVolumeIntensityMask()), tuple(editor_node.GetSourceVolumeIntensityMaskRange()))
        self.applied = (True, (float(low), float(high)))
        editor_node.SetSourceVolumeIntensityMaskRange(*self.applied[1])
        editor_node.SetSourceVolumeIntensityMask(True)
        self._tag = editor_node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_modified)

    @property
    def active(self) -> bool:
        return self._tag is not None

    def _current(self):
        node = self.editor_node
        return bool(node.GetSourceVolumeIntensityMask()), tuple(node.GetSourceVolumeIntensityMaskRange())

    def _on_modified(self, caller=None, event=None) -> None:
        if self.editor_node.GetSegmentationNode() is not self.segmentation_node:
            self.restore()

    def restore(self) -> bool:
        """Stop watching and put the replaced settings back unless the user changed the mask;
        returns whether they were put back."""
        if self._tag is None:
            return False
        self.editor_node.RemoveObserver(self._tag)
        self._tag = None
        if self._current() != self.applied:
            return False
        enabled, (low, high) = self.previous
        self.editor_node.SetSourceVolumeIntensityMaskRange(low, high)
        self.editor_node.SetSourceVolumeIntensityMask(enabled)
        return True
