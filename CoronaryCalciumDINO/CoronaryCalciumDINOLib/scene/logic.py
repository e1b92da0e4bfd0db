"""Compute and rescore on an MRML scene (the logic behind the Slicer module).

Everything takes the scene (or nodes) explicitly and uses no Qt and no ``slicer.mrmlScene``
global, so the same code runs inside Slicer, in ``PythonSlicer`` and on the ``slicer-core``
PyPI package. :func:`create_core_scene` builds a scene with the module logics the glue
needs when there is no Slicer application (tests, headless scripts).

Outputs of :func:`compute` for a CT volume node named ``V``:

* segmentation ``V calcium`` (segments LM, LAD, LCX, RCA; one node per CT, reused by later
  runs; placed under the CT's study in subject hierarchy),
* table ``V calcium scores`` (see :mod:`.table`),
* table ``V slice probabilities`` and plot chart ``V slice probability``,
* scalar volume ``V attention`` when attention maps were computed.

Checks of the CT that invalidate the scores (today: a contrast-enhanced CT, see
:mod:`..pipeline.contrast`) run on every compute and rescore; their warnings go into the
report's ``warnings`` (kept on the score table) and :func:`warnings_text` gives the text the
module panel shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from ..constants import ARTERIES
from ..errors import InputError
from ..pipeline import run_pipeline
from ..pipeline.contrast import check_contrast
from ..report.flags import flags_text, rescored_flags
from ..scoring import ScoringOptions, ScoringParams, score
from . import attention as attention_glue
from . import table as table_glue
from .edits import HASH_TAG, EditTracker, _get_tag, edited_segments, flag_unrecorded_edits
from .segmentation import (
    RESULT_ATTRIBUTE,
    create_result_segmentation,
    ensure_artery_segments,
    find_result_segmentation,
    place_in_hierarchy,
    read_labels_box,
    write_labels,
)
from .volume import nodes_by_class, shares_voxel_grid, volume_kvp, volume_node_to_ct

#: Node attribute linking a result segmentation to its score / slice tables.
SCORE_TABLE_REF = "CoronaryCalciumDINO.ScoreTable"
SLICE_TABLE_REF = "CoronaryCalciumDINO.SliceTable"
ATTENTION_REF = "CoronaryCalciumDINO.Attention"
#: Node attribute linking a result segmentation to its candidates segmentation (:mod:`.assign`).
CANDIDATES_REF = "CoronaryCalciumDINO.Candidates"

#: What to do with user-edited segments when computing again: "keep", "replace", or a
#: callable(list of edited artery names) -> "keep" | "replace" | iterable of names to replace.
ConflictPolicy = Union[str, Callable[[list], object]]


@dataclass
class CoreScene:
    """A scene with the module logics registered on an application logic (no Qt)."""

    scene: object
    app_logic: object
    segmentations_logic: object
    subject_hierarchy_logic: object
    terminologies_logic: object


def create_core_scene() -> CoreScene:
    """A vtkMRMLScene with Colors, Terminologies, Segmentations and Subject hierarchy logics."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    logics = {}
    for key, cls in (
        ("Terminologies", slicer.vtkSlicerTerminologiesModuleLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(key, logic)
        logics[key] = logic
    return CoreScene(scene, app, logics["Segmentations"], logics["SubjectHierarchy"], logics["Terminologies"])


@dataclass
class ComputeOutcome:
    """What :func:`compute` wrote and decided."""

    segmentation_node: object
    score_table_node: object
    slice_table_node: object | None
    attention_node: object | None
    report: dict
    #: edited segments that were kept (not overwritten by the AI)
    kept: list[str] = field(default_factory=list)
    #: segments the AI wrote in this run
    written: list[str] = field(default_factory=list)
    pipeline_result: object | None = None
    #: True when this run created the result segmentation (the first compute for the CT)
    created: bool = False


#: Contrast check results by (volume node ID, image data MTime): rescoring after every edit
#: does not measure the same unchanged volume again.
_CONTRAST_CACHE: dict[tuple[str, int], str | None] = {}
_CONTRAST_CACHE_SIZE = 16


def check_volume(volume_node, ct) -> list[str]:
    """Run the CT checks (contrast) on ``ct``, the CTVolume of ``volume_node``; new warnings
    are appended to ``ct.warnings``, which is returned. Cached per unchanged volume."""
    image = volume_node.GetImageData() if volume_node is not None else None
    key = (volume_node.GetID(), int(image.GetMTime())) if image is not None else None
    if key is not None and key in _CONTRAST_CACHE and "contrast_warning" not in ct.meta:
        ct.meta["contrast_warning"] = _CONTRAST_CACHE[key]
    message = check_contrast(ct)
    if key is not None:
        if len(_CONTRAST_CACHE) >= _CONTRAST_CACHE_SIZE:
            _CONTRAST_CACHE.clear()
        _CONTRAST_CACHE[key] = message
    return ct.warnings


def warnings_text(report: dict | None) -> str:
    """Text of the panel's warning banner for a report: one "Warning: ..." line per report
    warning, '' when there is none."""
    items = (report or {}).get("warnings") or []
    return "\n".join(f"Warning: {w}" for w in items)


def review_text(report: dict | None) -> str:
    """Text of the panel's review-flags label for a report: one "Review: ..." line per flag
    (:mod:`..report.flags`), '' when there is none."""
    return flags_text(report)


def scoring_params_for(volume_node, params: ScoringParams | ScoringOptions | None) -> ScoringParams:
    """``params`` if given as :class:`ScoringParams`; else the options (default: the volume's
    own kVp, the classic definition when it has none) resolved for the volume's kVp."""
    if isinstance(params, ScoringParams):
        return params
    options = params if params is not None else ScoringOptions(kvp="auto", auto_kvp_required=False)
    return options.resolve(volume_kvp(volume_node))


def _linked(scene, node, attribute: str):
    node_id = node.GetAttribute(attribute)
    return scene.GetNodeByID(node_id) if node_id else None


def _resolve_conflict(policy: ConflictPolicy, edited: list[str]) -> set[str]:
    """Names of edited segments to replace."""
    if not edited:
        return set()
    decision = policy(list(edited)) if callable(policy) else policy
    if decision == "keep" or decision is None or decision is False:
        return set()
    if decision == "replace" or decision is True:
        return set(edited)
    if isinstance(decision, str):
        raise InputError(f"on_conflict must be 'keep', 'replace' or a callable, got {decision!r}")
    chosen = set(decision)
    unknown = chosen - set(edited)
    if unknown:
        raise InputError(f"cannot replace {', '.join(sorted(unknown))}: not an edited segment")
    return chosen


class ResultSession:
    """The result nodes of one CT volume plus the edit tracker that rescores on edits.

    ``on_rescored(report)`` is called after each automatic rescoring (e.g. to refresh a
    view); ``auto_rescore=False`` only flags edits; ``defer`` postpones the edit check
    (see :class:`~.edits.EditTracker`).
    """

    def __init__(self, scene, volume_node, segmentation_node, params: ScoringParams | None = None,
                 auto_rescore: bool = True, on_rescored: Callable[[dict], None] | None = None,
                 defer: Callable[[Callable[[], None]], None] | None = None):
        self.scene = scene
        self.volume_node = volume_node
        self.segmentation_node = segmentation_node
        self.params = params
        self.auto_rescore = auto_rescore
        self.on_rescored = on_rescored
        self.last_error: Exception | None = None
        self.tracker = EditTracker(segmentation_node, volume_node, on_edit=self._on_edit, defer=defer)

    def rescore_edits(self, arteries: list[str]) -> None:
        """Rescore after ``arteries`` were edited (what the tracker does on an edit)."""
        self._on_edit(list(arteries))

    def _on_edit(self, arteries: list[str]) -> None:
        if not self.auto_rescore:
            return
        try:
            report = rescore(self.segmentation_node, self.volume_node, self.params)
            self.last_error = None
        except InputError as exc:  # e.g. a segment was deleted: keep the last table
            self.last_error = exc
            return
        if self.on_rescored is not None:
            self.on_rescored(report)

    def close(self) -> None:
        """Remove the observers (call on module cleanup or scene close)."""
        self.tracker.stop()


def compute(
    scene,
    volume_node,
    bundle=None,
    device: str = "auto",
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    params: ScoringParams | None = None,
    attention: bool = True,
    on_conflict: ConflictPolicy = "keep",
    segment_fn: Callable | None = None,
    session: ResultSession | None = None,
) -> ComputeOutcome:
    """Run the pipeline on ``volume_node`` and write segmentation, tables and attention.

    ``bundle``: a loaded ModelBundle, a bundle path, or None for the default bundle.
    ``segment_fn(ct) -> PipelineResult-like`` replaces the pipeline (tests, other models).
    Segments marked as user-edited are kept unless ``on_conflict`` says otherwise; the
    other artery segments are replaced. The score table always reflects the segments
    as they are after writing (kept edits included). Pass the volume's ``session`` (if
    one is open) so that the AI's own writing is not taken for a user edit.
    """
    params = scoring_params_for(volume_node, params)
    ct = volume_node_to_ct(volume_node)
    result = run_segmentation(ct, bundle, device, params, attention, progress, cancel, segment_fn)
    return write_result(scene, volume_node, ct, result, params, on_conflict, session)


#: Whether PyTorch sees a CUDA GPU; found once where the pipeline runs (None: not known yet).
_CUDA_AVAILABLE: bool | None = None


def cuda_available() -> bool | None:
    """Whether a CUDA GPU is available, as found by the last pipeline run; None before the
    first run. Never imports torch (the module panel calls it)."""
    return _CUDA_AVAILABLE


def probe_cuda() -> bool | None:
    """Find (once) whether PyTorch sees a CUDA GPU; None when torch is not installed.
    Imports torch: call it only where the pipeline runs (the compute thread)."""
    global _CUDA_AVAILABLE
    if _CUDA_AVAILABLE is None:
        try:
            import torch
        except ImportError:
            return None
        _CUDA_AVAILABLE = bool(torch.cuda.is_available())
    return _CUDA_AVAILABLE


def device_warning(device: str, torch_installed: bool) -> str:
    """Warning text for the device choice ('' when none). Uses only what is known without
    importing torch: whether it is installed, and the CUDA check of the last pipeline run."""
    if not torch_installed:
        return "PyTorch is not installed yet; it will be installed on first Compute."
    cuda = cuda_available()
    if cuda is None or cuda:
        return ""  # not known before the first Compute
    if device == "cuda":
        return "No CUDA GPU found: Compute will fail with device 'cuda'. Use 'auto' or 'cpu'."
    return "No GPU found: running on CPU (slower)."


def run_segmentation(ct, bundle=None, device="auto", params=None, attention=True, progress=None, cancel=None, segment_fn=None):
    """The pipeline (or ``segment_fn``) on a CTVolume; touches no MRML node (thread-safe).

    The pipeline's checks of the CT (contrast) add their warnings to ``ct.warnings``;
    :func:`write_result` reports them (and runs them, cached, when ``segment_fn`` did not).
    Running the pipeline also does the CUDA check of :func:`cuda_available` (once).
    """
    if segment_fn is not None:
        return segment_fn(ct)
    probe_cuda()
    return run_pipeline(ct, bundle, device=device, params=params, attention=attention, progress=progress, cancel=cancel)


def write_result(scene, volume_node, ct, result, params: ScoringParams | None = None,
                 on_conflict: ConflictPolicy = "keep", session: ResultSession | None = None) -> ComputeOutcome:
    """Write a pipeline result for ``volume_node`` into the scene (main thread only).

    See :func:`compute` for what is written and how edited segments are handled.
    """
    params = scoring_params_for(volume_node, params)
    labels = np.asarray(result.labels)
    if labels.shape != ct.shape:
        raise InputError(f"pipeline labels {labels.shape} do not match the CT grid {ct.shape}")

    seg = find_result_segmentation(scene, volume_node)
    created = seg is None
    if seg is None:
        seg = create_result_segmentation(scene, volume_node)
        kept: list[str] = []
    else:
        ensure_artery_segments(seg)
        edited = flag_unrecorded_edits(seg, volume_node)
        replace = _resolve_conflict(on_conflict, edited)
        kept = [a for a in edited if a not in replace]
    to_write = [a for a in ARTERIES if a not in kept]

    own_tracker = session is None or session.segmentation_node is not seg
    tracker = EditTracker(seg, volume_node) if own_tracker else session.tracker
    try:
        with tracker.suppressed():
            write_labels(seg, labels, volume_node, to_write)
        tracker.record_ai_content(to_write)
    finally:
        if own_tracker:
            tracker.stop()

    score_table = _linked(scene, seg, SCORE_TABLE_REF)
    if score_table is None:
        score_table = table_glue.new_table(scene, f"{seg.GetName()} scores")
        seg.SetAttribute(SCORE_TABLE_REF, score_table.GetID())
        place_in_hierarchy(scene, score_table, volume_node)
    extra = result.report_extra() if hasattr(result, "report_extra") else {}
    check_volume(volume_node, ct)  # usually done already by the pipeline (cached on ct.meta)
    run_warnings = list(getattr(result, "warnings", None) or [])
    if kept:
        current, offset, warnings = read_labels_box(seg, volume_node)
        score_result = score_box(ct.hu, current, offset, ct.spacing, params)
        extra["kept_user_edits"] = list(kept)
    else:
        score_result, warnings = result.score, []
    report = table_glue.update_score_table(
        score_table, score_result, volume_node.GetName(), warnings=list(ct.warnings) + run_warnings + warnings, **extra
    )

    slice_table = None
    probabilities = getattr(result, "slice_probabilities", None)
    if probabilities is not None:
        slice_table = _linked(scene, seg, SLICE_TABLE_REF)
        if slice_table is None:
            slice_table = table_glue.new_table(scene, f"{volume_node.GetName()} slice probabilities")
            seg.SetAttribute(SLICE_TABLE_REF, slice_table.GetID())
            place_in_hierarchy(scene, slice_table, volume_node)
        table_glue.update_slice_table(slice_table, probabilities, result.selected)
        table_glue.ensure_probability_plot(scene, slice_table, volume_node.GetName())

    attention_node = None
    maps = getattr(result, "attention", None)
    if maps is not None:
        attention_node = attention_glue.show_attention_head(scene, volume_node, maps, 0, _linked(scene, seg, ATTENTION_REF))
        seg.SetAttribute(ATTENTION_REF, attention_node.GetID())
        place_in_hierarchy(scene, attention_node, volume_node)

    return ComputeOutcome(seg, score_table, slice_table, attention_node, report, kept, to_write, result, created)


def edited_result_segments(scene, volume_node) -> list[str]:
    """The artery segments of ``volume_node``'s result segmentation that the user edited
    (flagging edits no tracker saw, e.g. made before the scene was reloaded); [] when there
    is no result yet. What writing a new result would ask about, so that the question can be
    asked before the writing starts (and its wait cursor with it)."""
    seg = find_result_segmentation(scene, volume_node)
    if seg is None:
        return []
    return flag_unrecorded_edits(seg, volume_node)


def remove_result(scene, segmentation_node) -> None:
    """Remove a result segmentation and the nodes written with it: score and slice tables,
    the probability plot (chart and series), the attention volume and the candidates
    segmentation (:func:`.assign.show_candidates`), each with its display
    and storage nodes (removing a node from a scene does not remove those)."""
    score_table, slice_table = result_tables(scene, segmentation_node)
    linked = [linked_attention_node(scene, segmentation_node), _linked(scene, segmentation_node, CANDIDATES_REF), score_table]
    if slice_table is not None:
        chart = _linked(scene, slice_table, table_glue.PLOT_CHART_REF)
        if chart is not None:
            linked += [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
            linked.append(chart)
        linked.append(slice_table)
    for node in [*linked, segmentation_node]:
        if node is None or not scene.IsNodePresent(node):
            continue
        owned = []
        for kind in ("Display", "Storage"):
            if hasattr(node, f"GetNumberOf{kind}Nodes"):
                count = getattr(node, f"GetNumberOf{kind}Nodes")()
                owned += [getattr(node, f"GetNth{kind}Node")(i) for i in range(count)]
        scene.RemoveNode(node)
        for other in owned:
            if other is not None and scene.IsNodePresent(other):
                scene.RemoveNode(other)


def rescore(segmentation_node, volume_node, params: ScoringParams | None = None, table_node=None) -> dict:
    """Score the CURRENT artery segments of any segmentation (by name) and update its table.

    Works on AI results and on hand-made segmentations alike; the segments LM, LAD, LCX
    and RCA must all exist (InputError naming the missing ones otherwise). The table is
    ``table_node``, else the one linked to the segmentation, else a new one.
    """
    scene = volume_node.GetScene()
    params = scoring_params_for(volume_node, params)
    ct = volume_node_to_ct(volume_node, copy=False)  # a view of the stored voxels
    check_volume(volume_node, ct)
    labels, offset, warnings = read_labels_box(segmentation_node, volume_node)
    result = score_box(ct.hu, labels, offset, ct.spacing, params)
    if table_node is None:
        table_node = _linked(scene, segmentation_node, SCORE_TABLE_REF)
    if table_node is None:
        table_node = table_glue.new_table(scene, f"{segmentation_node.GetName()} scores")
        segmentation_node.SetAttribute(SCORE_TABLE_REF, table_node.GetID())
        place_in_hierarchy(scene, table_node, volume_node)
    previous = table_glue.report_from_table(table_node)
    extra = {k: previous[k] for k in ("slices", "model") if k in previous}
    edited = edited_segments(segmentation_node)
    if "review_flags" in previous:  # the image's flags stay; coverage is found again (report.flags)
        extra["review_flags"] = rescored_flags(previous, result.to_dict(), ct.shape[0], edited=bool(edited))
    return table_glue.update_score_table(
        table_node, result, volume_node.GetName(), warnings=list(ct.warnings) + warnings,
        rescored=True, user_edited=edited, **extra,
    )


def score_box(hu: np.ndarray, labels: np.ndarray, offset, spacing, params: ScoringParams | None = None):
    """:func:`~..scoring.score` of a label map given on a box of the CT grid (``labels``,
    its first voxel at CT voxel ``offset`` (z, y, x)); only that box of ``hu`` is read.

    The result equals scoring the whole grid with those labels (zero elsewhere): lesions
    are 2D components inside one slice, and every labelled voxel lies in the box; lesion
    slices are CT slice numbers.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        labels, offset = np.zeros((1, 1, 1), dtype=np.uint8), (0, 0, 0)
    where = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, labels.shape))
    result = score(np.ascontiguousarray(hu[where]), labels, spacing, params)
    for lesion in result.lesions:
        lesion.slice += int(offset[0])
    return result


def result_tables(scene, segmentation_node) -> tuple[object | None, object | None]:
    """(score table, slice table) linked to a result segmentation."""
    return _linked(scene, segmentation_node, SCORE_TABLE_REF), _linked(scene, segmentation_node, SLICE_TABLE_REF)


def linked_attention_node(scene, segmentation_node):
    return _linked(scene, segmentation_node, ATTENTION_REF)



def params_from_report(report: dict) -> ScoringParams | None:
    """The :class:`ScoringParams` a stored report was scored with; None when the report does
    not hold them (or holds impossible values)."""
    try:
        spacing = report["spacing_mm"]
        factor = float(report["slice_factor"])
        slice_correction = not (factor == 1.0 and abs(float(spacing[0]) - 3.0) > 1e-9)
        return ScoringParams(
            threshold_hu=float(report["threshold_hu"]),
            band_edges_hu=tuple(float(e) for e in report["band_edges_hu"]),  # type: ignore[arg-type]
            min_area_mm2=float(report["min_area_mm2"]),
            slice_correction=slice_correction,
            calibration_factor=None if report.get("calibration_factor") is None else float(report["calibration_factor"]),
            kvp=None if report.get("kvp") is None else float(report["kvp"]),
        )
    except (KeyError, TypeError, ValueError, IndexError, InputError):
        return None


@dataclass
class TaggedResult:
    """A result segmentation found in a scene, with what its session needs."""

    segmentation_node: object
    volume_node: object
    #: the scoring parameters of its stored score table (None: the volume's default)
    params: ScoringParams | None
    #: segments found edited by :func:`flag_unrecorded_edits` that were not flagged before
    newly_flagged: list[str] = field(default_factory=list)


def _result_volume(scene, segmentation_node):
    """The CT of a tagged result: the segmentation's reference-geometry volume (a node
    reference, which MRML renames with the nodes when a scene is imported), else the node
    whose ID the tag holds."""
    candidates = []
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    if role:
        candidates.append(segmentation_node.GetNodeReference(role))
    candidates.append(scene.GetNodeByID(segmentation_node.GetAttribute(RESULT_ATTRIBUTE) or ""))
    for node in candidates:
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            return node
    return None


def _ai_layer(segmentation_node):
    """The labelmap of the first artery segment that carries the AI's fingerprint
    (:data:`~.edits.HASH_TAG`), when every artery segment is present; else None."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    segments = [segmentation.GetSegment(a) for a in ARTERIES]
    if any(segment is None for segment in segments):
        return None
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    for segment in segments:
        layer = segment.GetRepresentation(name)
        if layer is not None and _get_tag(segment, HASH_TAG) is not None:
            return layer
    return None


def _grid_volumes(scene, layer) -> list:
    """The CT-like volumes of ``scene`` whose voxel grid holds ``layer``: scalar volumes (no
    label maps, no attention overlays) with the layer's IJK->RAS matrix, the layer's extent
    inside their voxels."""
    extent = layer.GetExtent()
    found = []
    for volume in nodes_by_class(scene, "vtkMRMLScalarVolumeNode"):
        image = volume.GetImageData()
        if volume.IsA("vtkMRMLLabelMapVolumeNode") or image is None or volume.GetAttribute(attention_glue.HEAD_ATTRIBUTE):
            continue
        dims = image.GetDimensions()
        inside = layer.IsEmpty() or all(0 <= extent[2 * a] and extent[2 * a + 1] < dims[a] for a in range(3))
        if inside and shares_voxel_grid(layer, volume):
            found.append(volume)
    return found


def recognise_loaded_results(scene) -> list:
    """Result segmentations loaded without the scene they were saved with (a ``.seg.nrrd``
    of ``ccdino score --out`` or of a saved scene, loaded on its own): the file keeps no node
    attributes, but its segments keep their tags. A segmentation with the four artery
    segments, the AI's fingerprint on at least one (:data:`~.edits.HASH_TAG`) and no
    ``ResultOf`` attribute is taken for a result of the CT of the scene on whose voxel grid
    it lies (a volume named like the segmentation when several share the grid; none when
    that does not decide), unless that CT has a result already (e.g. the segments were
    copied from it into another segmentation): it gets the attribute and the CT as its
    reference geometry. Returns the segmentations recognised now."""
    recognised = []
    for seg in nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        if seg.GetAttribute(RESULT_ATTRIBUTE):
            continue
        layer = _ai_layer(seg)
        if layer is None:
            continue
        volumes = [v for v in _grid_volumes(scene, layer) if find_result_segmentation(scene, v) is None]
        if len(volumes) > 1:
            name = seg.GetName() or ""
            volumes = [v for v in volumes if v.GetName() and name.startswith(v.GetName())]
            volumes = [v for v in volumes if len(v.GetName()) == max(len(w.GetName()) for w in volumes)]
        if len(volumes) != 1:
            continue
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volumes[0])
        seg.SetAttribute(RESULT_ATTRIBUTE, volumes[0].GetID())
        recognised.append(seg)
    return recognised


def tagged_results(scene) -> list[TaggedResult]:
    """The result segmentations of ``scene`` (node attribute ``CoronaryCalciumDINO.ResultOf``)
    whose CT is in the scene, e.g. after a saved scene was loaded again.

    For each: the tag is set to the CT's current ID (node IDs can change when a scene is
    imported), edits made while no session tracked them are flagged
    (:func:`~.edits.flag_unrecorded_edits`), and the scoring parameters are read back from
    the stored score table. Results loaded without their scene are recognised first
    (:func:`recognise_loaded_results`).
    """
    recognise_loaded_results(scene)
    found = []
    for seg in nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        if not seg.GetAttribute(RESULT_ATTRIBUTE):
            continue
        volume = _result_volume(scene, seg)
        if volume is None:
            continue
        if seg.GetAttribute(RESULT_ATTRIBUTE) != volume.GetID():
            seg.SetAttribute(RESULT_ATTRIBUTE, volume.GetID())
        before = set(edited_segments(seg))
        newly = [a for a in flag_unrecorded_edits(seg, volume) if a not in before]
        table = _linked(scene, seg, SCORE_TABLE_REF)
        params = params_from_report(table_glue.report_from_table(table)) if table is not None else None
        found.append(TaggedResult(seg, volume, params, newly))
    return found


def reopen_sessions(scene, open_session: Callable[[object, object, ScoringParams | None], ResultSession]) -> list[ResultSession]:
    """Open edit tracking again on every result segmentation of ``scene`` (call after a
    saved scene is loaded or restored): ``open_session(segmentation_node, volume_node,
    params)`` opens (or returns the already open) session of one result, with the scoring
    parameters of its stored table. A result whose segments were edited while nobody
    tracked them, or that has no score table (a segmentation file loaded on its own), is
    rescored at once. Returns the sessions."""
    sessions = []
    for found in tagged_results(scene):
        session = open_session(found.segmentation_node, found.volume_node, found.params)
        if found.newly_flagged or _linked(scene, found.segmentation_node, SCORE_TABLE_REF) is None:
            session.rescore_edits(found.newly_flagged)
        sessions.append(session)
    return sessions
