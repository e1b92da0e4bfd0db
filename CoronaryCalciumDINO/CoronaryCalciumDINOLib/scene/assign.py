"""Click-to-assign correction: a click on a lesion gives it to an artery or removes it.

The reading workflow of clinical calcium-scoring tools: the scan's calcium candidates are
shown, and the reader clicks a lesion to assign it to LM, LAD, LCX or RCA, or to drop it.
:class:`LesionAssigner` does this on a result segmentation, given a point in RAS:

* The **candidate** under the point is the 2D region of HU >= the result's scoring
  threshold (the kVp-adapted one when the result used it) in that axial slice, with the
  in-plane 8-connectivity of the score's lesions (:mod:`..scoring.agatston`), that is one
  of the pipeline's candidates (:func:`..pipeline.candidate_area.candidate_mask`: at least
  the minimum lesion area, in the heart region the pipeline looks in) or that a segment
  already labels (a lesion a reader drew by hand can be moved or dropped too). A point
  within :data:`SNAP_MM` of a candidate voxel in its slice takes that candidate.
* **Assigning** moves exactly that region's voxels: removed from every artery segment that
  held any of them and added to the target (or only removed); every other voxel of every
  segment stays as it was. A changed segment is written box-sized (its own box and the
  region's) with ``SetBinaryLabelmapToSegment`` in replace mode, as the AI's result is.
* The scores follow at once through the edit tracking of :mod:`.edits` (the session's
  tracker flags the changed segments as edited and rescores), or :func:`.logic.rescore`
  without a session.
* **Undo** takes back the last assignment exactly (the region's previous voxels in every
  artery), when that region is still as the assignment left it; otherwise it refuses and
  changes nothing (Slicer has no scene undo for scripted segment changes; Segment Editor's
  undo covers only its own effects).
* A point outside the CT or on no candidate changes nothing; the outcome's ``message``
  says why in one line.

:func:`show_candidates` shows the candidates as their own segmentation node
(``<CT> calcium candidates``, one segment ``Candidates``), linked to the result by the node
attribute ``CoronaryCalciumDINO.Candidates``: never part of the result's segments, so never
scored, exported or tracked as an edit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from ..constants import ARTERIES
from ..errors import InputError
from ..pipeline.candidate_area import CandidateMask, candidate_mask, component_at
from ..scoring import ScoringParams
from . import table as table_glue
from .edits import flag_unrecorded_edits
from .logic import CANDIDATES_REF, SCORE_TABLE_REF, params_from_report, rescore, scoring_params_for
from .segmentation import place_in_hierarchy, read_segment_boxes, segment_id_by_name
from .volume import image_array_view, node_ijk_to_ras, numpy_to_matrix, volume_node_to_ct

#: The target that removes a lesion from every artery.
REMOVE = "Remove"
#: The targets, in the order the panel offers them.
TARGETS: tuple[str, ...] = (*ARTERIES, REMOVE)
#: A click this close (mm, in its slice) to a candidate voxel takes that candidate.
SNAP_MM = 1.0
#: Undo keeps at most this many assignments.
UNDO_DEPTH = 200
#: Name and colour of the candidates segment.
CANDIDATES_SEGMENT = "Candidates"
CANDIDATES_COLOR = (1.0, 0.92, 0.23)


def normalise_target(target: str) -> str:
    """An artery name (LM, LAD, LCX, RCA) or :data:`REMOVE`; InputError for anything else."""
    text = str(target).strip()
    for name in TARGETS:
        if text.lower() == name.lower():
            return name
    if text.lower() in ("none", "background", "drop"):
        return REMOVE
    raise InputError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")


def ras_to_voxel(volume_node, ras) -> tuple[int, int, int] | None:
    """CT voxel (z, y, x) holding the RAS point, None when it lies outside the CT."""
    ijk = np.linalg.solve(node_ijk_to_ras(volume_node), np.array([*map(float, ras[:3]), 1.0]))[:3]
    i, j, k = (int(np.floor(v + 0.5)) for v in ijk)
    nx, ny, nz = volume_node.GetImageData().GetDimensions()
    if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
        return None
    return k, j, i


def write_segment_box(segmentation_node, segment_id: str, mask: np.ndarray, offset, volume_node) -> None:
    """Make a segment exactly ``mask`` (bool (z, y, x), its first voxel at CT voxel
    ``offset``; nothing outside that box), written as Slicer's own writers do
    (``SetBinaryLabelmapToSegment``, replace mode), box-sized: never a CT-sized array."""
    import slicer
    import vtk
    from vtk.util import numpy_support as ns

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.size == 0:
        mask, offset = np.zeros((1, 1, 1), dtype=np.uint8), (0, 0, 0)
    z0, y0, x0 = (int(v) for v in offset)
    nz, ny, nx = mask.shape
    image = slicer.vtkOrientedImageData()
    image.SetExtent(x0, x0 + nx - 1, y0, y0 + ny - 1, z0, z0 + nz - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ns.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
    image.SetImageToWorldMatrix(numpy_to_matrix(node_ijk_to_ras(volume_node)))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE, image.GetExtent()):
        raise InputError(f"cannot write segment {segment_id} of '{segmentation_node.GetName()}'")


def replace_in_box(segmentation_node, segment_id: str, part: np.ndarray, offset, volume_node) -> None:
    """Replace a segment's voxels inside one box of the CT grid by ``part`` (bool, its first
    voxel at CT voxel ``offset``); the segment outside the box stays as it is. Reads and
    writes the union of the segment's own box and this one (the size of the calcium)."""
    box = read_segment_boxes(segmentation_node, volume_node, [segment_id])[segment_id]
    part = np.asarray(part, dtype=bool)
    if box.empty:
        lo, hi = np.array(offset), np.array(offset) + part.shape
    else:
        lo = np.minimum(box.offset, offset)
        hi = np.maximum(np.add(box.offset, box.mask.shape), np.add(offset, part.shape))
    full = np.zeros(tuple(int(v) for v in hi - lo), dtype=bool)
    if not box.empty:
        full[tuple(slice(int(o - b), int(o - b) + n) for o, b, n in zip(box.offset, lo, box.mask.shape))] = box.mask
    full[tuple(slice(int(o - b), int(o - b) + n) for o, b, n in zip(offset, lo, part.shape))] = part
    write_segment_box(segmentation_node, segment_id, full, tuple(int(v) for v in lo), volume_node)


@dataclass
class AssignOutcome:
    """What one assignment (or undo) did."""

    changed: bool
    #: one line for the reader
    message: str
    #: CT slice of the lesion (None when no lesion was found)
    slice: int | None = None
    voxels: int = 0
    area_mm2: float = 0.0
    target: str | None = None
    #: artery -> voxels of the lesion it held before
    previous: dict[str, int] = field(default_factory=dict)
    #: the score report after the change (None when nothing changed)
    report: dict | None = None


@dataclass
class _Step:
    """One assignment, for undo: the lesion's box in its slice and every artery's voxels there
    before and after."""

    offset: tuple[int, int, int]
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    description: str


class LesionAssigner:
    """Click-to-assign on one result segmentation (see the module docstring).

    ``params``: the scoring parameters of the result (default: those stored in its score
    table, else the volume's defaults). ``session``: the result's
    :class:`~.logic.ResultSession`, whose tracker flags and rescores the change; without
    one, the change is rescored with :func:`~.logic.rescore` and flagged by fingerprint.
    """

    def __init__(self, segmentation_node, volume_node, params: ScoringParams | None = None, session=None,
                 snap_mm: float = SNAP_MM):
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        self._params = params
        self.session = session
        self.snap_mm = float(snap_mm)
        self._undo: list[_Step] = []
        self._candidates: CandidateMask | None = None
        self._candidates_key = None

    # -- parameters and candidates

    @property
    def params(self) -> ScoringParams:
        """The scoring parameters the result was scored with."""
        if self._params is not None:
            return self._params
        if self.session is not None and self.session.params is not None:
            return self.session.params
        table = self._score_table()
        stored = params_from_report(table_glue.report_from_table(table)) if table is not None else None
        return stored if stored is not None else scoring_params_for(self.volume_node, None)

    def _score_table(self):
        node_id = self.segmentation_node.GetAttribute(SCORE_TABLE_REF)
        scene = self.segmentation_node.GetScene()
        return scene.GetNodeByID(node_id) if node_id and scene is not None else None

    def candidates(self) -> CandidateMask:
        """The pipeline's candidates of the CT at the result's threshold (computed once per
        unchanged CT and parameters)."""
        params = self.params
        image = self.volume_node.GetImageData()
        key = (self.volume_node.GetID(), int(image.GetMTime()) if image is not None else 0,
               params.threshold_hu, params.min_area_mm2)
        if self._candidates is None or self._candidates_key != key:
            ct = volume_node_to_ct(self.volume_node)
            self._candidates = candidate_mask(ct, params)
            self._candidates_key = key
        return self._candidates

    # -- assign and undo

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def _artery_ids(self) -> dict[str, str]:
        return {a: segment_id_by_name(self.segmentation_node, a) for a in ARTERIES}

    def _read_box(self, ids: dict[str, str], offset, shape) -> dict[str, np.ndarray]:
        """Every artery's voxels inside a box of the CT grid."""
        boxes = read_segment_boxes(self.segmentation_node, self.volume_node, list(dict.fromkeys(ids.values())))
        out = {}
        for artery, segment_id in ids.items():
            box = boxes[segment_id]
            part = np.zeros(shape, dtype=bool)
            if not box.empty:
                lo = [max(o, b) for o, b in zip(offset, box.offset)]
                hi = [min(o + n, b + m) for o, n, b, m in zip(offset, shape, box.offset, box.mask.shape)]
                if all(h > low for low, h in zip(lo, hi)):
                    src = tuple(slice(low - b, h - b) for low, h, b in zip(lo, hi, box.offset))
                    dst = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, offset))
                    part[dst] = box.mask[src]
            out[artery] = part
        return out

    def _labelled_slice(self, ids: dict[str, str], k: int) -> np.ndarray:
        _, ny, nx = self.candidates().shape
        parts = self._read_box(ids, (k, 0, 0), (1, ny, nx))
        return np.logical_or.reduce([p[0] for p in parts.values()])

    def find_lesion(self, ras) -> tuple[int, np.ndarray] | str:
        """(slice, bool (y, x) mask of the candidate under ``ras``), or the one-line reason
        why there is none."""
        voxel = ras_to_voxel(self.volume_node, ras)
        if voxel is None:
            return "The point is outside the CT; nothing changed."
        k, j, i = voxel
        params = self.params
        hu = np.asarray(image_array_view(self.volume_node.GetImageData())[k], dtype=np.float32)  # one slice, read in place
        ids = self._artery_ids()
        allowed = self.candidates().slice(k) | (self._labelled_slice(ids, k) & (hu >= params.threshold_hu))
        point = (j, i)
        if not allowed[j, i]:
            point = self._snap(allowed, j, i, self._spacing())
        if point is None:
            value = float(hu[j, i])
            if value < params.threshold_hu:
                why = f"{value:.0f} HU, below the {params.threshold_hu:g} HU threshold"
            else:
                why = f"{value:.0f} HU, but not a candidate (smaller than {params.min_area_mm2:g} mm^2 or outside the heart region)"
            return f"No calcium candidate at this point (slice {k}: {why}); nothing changed."
        region = component_at(hu, params.threshold_hu, *point)
        return k, region

    def _spacing(self) -> tuple[float, float, float]:
        """(dz, dy, dx) mm of the CT's voxels."""
        x, y, z = self.volume_node.GetSpacing()
        return float(z), float(y), float(x)

    def _snap(self, allowed: np.ndarray, j: int, i: int, spacing) -> tuple[int, int] | None:
        if self.snap_mm <= 0:
            return None
        dy, dx = float(spacing[1]), float(spacing[2])
        ry, rx = int(np.floor(self.snap_mm / dy)), int(np.floor(self.snap_mm / dx))
        y0, y1 = max(0, j - ry), min(allowed.shape[0], j + ry + 1)
        x0, x1 = max(0, i - rx), min(allowed.shape[1], i + rx + 1)
        yy, xx = np.nonzero(allowed[y0:y1, x0:x1])
        if yy.size == 0:
            return None
        d2 = ((yy + y0 - j) * dy) ** 2 + ((xx + x0 - i) * dx) ** 2
        best = int(np.argmin(d2))
        if d2[best] > self.snap_mm ** 2 + 1e-9:
            return None
        return int(yy[best] + y0), int(xx[best] + x0)

    def assign(self, ras, target: str) -> AssignOutcome:
        """Give the candidate under ``ras`` to ``target`` (an artery or :data:`REMOVE`)."""
        target = normalise_target(target)
        found = self.find_lesion(ras)
        if isinstance(found, str):
            return AssignOutcome(False, found, target=target)
        k, region = found
        ys, xs = np.nonzero(region)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        offset = (k, y0, x0)
        lesion = region[y0:y1, x0:x1][None]
        ids = self._artery_ids()
        before = self._read_box(ids, offset, lesion.shape)
        after = {}
        for artery in ARTERIES:
            after[artery] = before[artery] & ~lesion
            if artery == target:
                after[artery] |= lesion
        spacing = self._spacing()
        voxels = int(lesion.sum())
        area = voxels * float(spacing[1]) * float(spacing[2])
        held = {a: int(np.count_nonzero(before[a] & lesion)) for a in ARTERIES if np.any(before[a] & lesion)}
        was = ", ".join(f"{a}" if n == voxels else f"{a} ({n} of {voxels} voxels)" for a, n in held.items()) or "no artery"
        what = f"Lesion on slice {k} ({area:.1f} mm^2, {voxels} voxels)"
        if all(np.array_equal(before[a], after[a]) for a in ARTERIES):
            where = "in no artery" if target == REMOVE else f"all {target}"
            return AssignOutcome(False, f"{what} is already {where}; nothing changed.", k, voxels, area, target, held)
        done = "removed" if target == REMOVE else f"assigned to {target}"
        description = f"{what} {done} (was {was})"
        self._write(ids, offset, before, after)
        self._undo.append(_Step(offset, before, after, description))
        del self._undo[:-UNDO_DEPTH]
        report = self._rescore()
        return AssignOutcome(True, description + self._total_text(report) + ".", k, voxels, area, target, held, report)

    def undo(self) -> AssignOutcome:
        """Take back the last assignment (see the module docstring)."""
        if not self._undo:
            return AssignOutcome(False, "Nothing to undo.")
        step = self._undo[-1]
        ids = self._artery_ids()
        shape = next(iter(step.after.values())).shape
        now = self._read_box(ids, step.offset, shape)
        if not all(np.array_equal(now[a], step.after[a]) for a in ARTERIES):
            return AssignOutcome(False, f"Cannot undo \"{step.description}\": that lesion's voxels were changed since; "
                                        "nothing changed.", step.offset[0])
        self._undo.pop()
        self._write(ids, step.offset, step.after, step.before)
        report = self._rescore()
        return AssignOutcome(True, f"Undone: {step.description}{self._total_text(report)}.", step.offset[0], report=report)

    def clear_undo(self) -> None:
        self._undo = []

    # -- writing and rescoring

    def _write(self, ids: dict[str, str], offset, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> None:
        tracker = self.session.tracker if self.session is not None else None
        with tracker.suppressed() if tracker is not None else contextlib.nullcontext():
            for artery in ARTERIES:
                if not np.array_equal(old[artery], new[artery]):
                    replace_in_box(self.segmentation_node, ids[artery], new[artery], offset, self.volume_node)

    def _rescore(self) -> dict | None:
        if self.session is not None:
            self.session.tracker.check_now()  # flags the segments and rescores (the session's path)
            table = self._score_table()
            return table_glue.report_from_table(table) if table is not None else None
        flag_unrecorded_edits(self.segmentation_node, self.volume_node)
        return rescore(self.segmentation_node, self.volume_node, self.params)

    @staticmethod
    def _total_text(report: dict | None) -> str:
        if not report or "total" not in report:
            return ""
        return f"; total Agatston now {report['total']['agatston']:.1f} ({report.get('risk_category', '?')})"


def candidates_node(scene, segmentation_node):
    """The candidates segmentation shown for a result (None when not shown yet)."""
    node_id = segmentation_node.GetAttribute(CANDIDATES_REF)
    return scene.GetNodeByID(node_id) if node_id else None


def show_candidates(scene, segmentation_node, volume_node, mask: CandidateMask | None, visible: bool = True):
    """Show (or hide, ``visible=False``) the candidates of a result as their own segmentation
    node (see the module docstring); ``mask`` is needed the first time. Returns the node."""
    import slicer

    node = candidates_node(scene, segmentation_node)
    if node is None:
        if not visible:
            return None
        if mask is None:
            raise InputError("no candidates to show")
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(f"{volume_node.GetName()} calcium candidates")
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation_node.SetAttribute(CANDIDATES_REF, node.GetID())
        place_in_hierarchy(scene, node, volume_node)
    segmentation = node.GetSegmentation()
    if mask is not None and node.GetAttribute("CoronaryCalciumDINO.CandidatesOf") != _mask_key(mask, volume_node):
        if segmentation.GetSegment(CANDIDATES_SEGMENT) is not None:
            segmentation.RemoveSegment(CANDIDATES_SEGMENT)
        segmentation.AddEmptySegment(CANDIDATES_SEGMENT, CANDIDATES_SEGMENT, list(CANDIDATES_COLOR))
        found = mask.box()
        if found is not None:
            offset, box = found
            write_segment_box(node, CANDIDATES_SEGMENT, box, offset, volume_node)
        node.SetAttribute("CoronaryCalciumDINO.CandidatesOf", _mask_key(mask, volume_node))
    display = node.GetDisplayNode()
    if display is not None:
        display.SetVisibility(bool(visible))
        display.SetOpacity2DFill(0.25)
        display.SetOpacity2DOutline(0.9)
        display.SetOpacity3D(0.3)
    return node


def _mask_key(mask: CandidateMask, volume_node) -> str:
    import hashlib

    digest = hashlib.sha1(mask.packed.tobytes()).hexdigest()[:16]
    return f"{volume_node.GetID()}:{mask.threshold_hu:g}:{mask.min_area_mm2:g}:{digest}"
