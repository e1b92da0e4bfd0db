"""CoronaryCalciumDINO: coronary artery calcium scoring on CT (Slicer scripted module).

The module is thin: the widget collects parameters and shows results, the logic runs the
library's pipeline (``CoronaryCalciumDINOLib.pipeline``) and writes its output with the
scene glue (``CoronaryCalciumDINOLib.scene``), which is plain MRML code tested outside
Slicer on the ``slicer-core`` package.

Compute runs the library's own command, ``ccdino score``, in a separate process (as
SlicerTotalSegmentator runs its command): the CT is written to a temporary folder (NRRD),
the command is started with ``slicer.util.launchConsoleProcess`` (``PythonSlicer -m
CoronaryCalciumDINOLib.cli score ... --progress-lines``), and a QTimer on the main thread
reads what it printed so far without waiting (its ``PROGRESS <fraction> <message>`` lines
drive the progress bar). When it ends, the main thread reads its result files (labels,
JSON report with the slice probabilities, attention maps) and writes them into the scene
with the scene glue; the temporary folder is then removed. Cancel terminates the process
(and kills it after ``_CANCEL_GRACE_S``). A crash or an out-of-memory kill of the AI ends
only that process: the module reports it in one line and the scene is untouched. Slicer's
own process never imports torch. (Slicer's main thread holds Python's GIL while it idles in
the Qt event loop, so a Python worker thread would only run while the GUI waits on it.)
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _requirements():
    """The library's one list of requirements (:mod:`CoronaryCalciumDINOLib.requirements`,
    which needs nothing installed): PyTorch (``TORCH_VERSION``) comes through the PyTorch extension
    (PyTorchUtils), the other missing packages through pip."""
    import CoronaryCalciumDINOLib.requirements

    return CoronaryCalciumDINOLib.requirements


@contextlib.contextmanager
def _waitCursor():
    """A wait cursor for the duration of the block (never around a question to the user)."""
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


#: The compute process is polled (its output read, its end checked; never waited on) every
#: _POLL_INTERVAL_MS by a QTimer on the main thread.
_POLL_INTERVAL_MS = 100
#: Cancel asks the compute process to end (terminate) and kills it after this many seconds.
_CANCEL_GRACE_S = 5.0


def _lib():
    """The library with the subpackages the module uses, imported on first use (keeps
    module discovery fast; torch is imported only when the pipeline runs)."""
    import CoronaryCalciumDINOLib
    import CoronaryCalciumDINOLib.cli.progress
    import CoronaryCalciumDINOLib.constants
    import CoronaryCalciumDINOLib.errors
    import CoronaryCalciumDINOLib.io
    import CoronaryCalciumDINOLib.io.volume
    import CoronaryCalciumDINOLib.scene.assign
    import CoronaryCalciumDINOLib.scene.attention
    import CoronaryCalciumDINOLib.scene.dicom_export
    import CoronaryCalciumDINOLib.scene.edits
    import CoronaryCalciumDINOLib.scene.logic
    import CoronaryCalciumDINOLib.scene.segmentation
    import CoronaryCalciumDINOLib.scene.table
    import CoronaryCalciumDINOLib.scene.volume
    import CoronaryCalciumDINOLib.scoring  # noqa: F401

    return CoronaryCalciumDINOLib


#
# CoronaryCalciumDINO
#


class CoronaryCalciumDINO(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Coronary Calcium DINO")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = ["Segmentations", "Terminologies"]
        self.parent.contributors = ["CoronaryCalciumDINO contributors"]
        self.parent.helpText = _(
            "Coronary artery calcium scoring on non-contrast CT: a self-supervised vision "
            "transformer (DINO-LG) looks at every calcium candidate (>= 130 HU) at native "
            "pixel size and picks the calcified slices, a UNET segments calcium per artery "
            "(LM, LAD, LCX, RCA), and Agatston / volume / mass scores are computed. "
            "Correct the segments in Segment Editor; the scores follow your edits."
        )
        self.parent.acknowledgementText = _(
            "Research use only; not a medical device. The default model is trained on "
            "synthetic studies and has not been validated on patient data."
        )
        slicer.app.connect("startupCompleted()", self._loadTerminology)

    def _loadTerminology(self):
        """Register the calcification category/type used by the result segments."""
        path = os.path.join(os.path.dirname(__file__), "Resources", "CoronaryCalciumDINO.term.json")
        try:
            contextName = slicer.modules.terminologies.logic().LoadTerminologyFromFile(path)
        except AttributeError:  # Terminologies module not loaded (e.g. minimal launcher)
            logging.warning("CoronaryCalciumDINO: terminology not loaded (no Terminologies module)")
            return
        if not contextName:  # the logic returns the context name, "" on failure
            logging.warning(f"CoronaryCalciumDINO: terminology file could not be loaded: {path}")


#
# Parameters
#


@parameterNodeWrapper
class CoronaryCalciumDINOParameterNode:
    """Module parameters, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    resultSegmentation: vtkMRMLSegmentationNode
    useDefaultBundle: bool = True
    bundlePath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    computeAttention: bool = True
    showAttention: bool = False
    attentionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    attentionHead: int = 0
    #: tube voltage; 0 = from the volume (DICOM) or 120 kVp
    kvp: Annotated[float, WithinRange(0.0, 200.0)] = 0.0
    #: mass calibration factor (mg HA/cm3 per HU); 0 = no mass
    calibrationFactor: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    minAreaMm2: Annotated[float, WithinRange(0.0, 10.0)] = 1.0


#
# Widget
#


class CoronaryCalciumDINOWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, Compute/Cancel with progress, results and corrections."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(_POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CoronaryCalciumDINO.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CoronaryCalciumDINOLogic()
        self.logic.onRescored = self._onRescored
        self.ui.disclaimerLabel.text = _lib().constants.DISCLAIMER
        self.ui.progressBar.setValue(0)
        self.ui.cancelButton.enabled = False
        self._showWarnings(None)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # Results of a loaded scene are tracked again (now, and whenever a scene is loaded).
        self.logic.observeScene()
        self.logic._onSceneLoaded()

        self.ui.computeButton.connect("clicked(bool)", self.onCompute)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.rescoreButton.connect("clicked(bool)", self.onRescore)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrect)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlot)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.attentionHeadComboBox.connect("currentIndexChanged(int)", self.onAttentionHead)
        self.ui.showAttentionCheckBox.connect("toggled(bool)", self.onShowAttention)
        self.ui.attentionOpacitySlider.connect("valueChanged(double)", self.onAttentionOpacity)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._updateDeviceWarning)
        self.ui.bundlePathLineEdit.connect("currentPathChanged(QString)", self.onBundlePath)
        self._setupAssign()

        self.initializeParameterNode()
        self._updateDeviceWarning()

    def cleanup(self) -> None:
        """Stop background work and remove every observer."""
        self._timer.stop()
        if self._job is not None:
            self._job.close()  # ends the process and removes its temporary folder
            self._job = None
        self._stopClickObservers()
        if self.logic is not None:
            self.logic.stopObservingScene()
            self.logic.closeSessions()
            self.logic.restoreSegmentEditorMask()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # A running job belongs to the closing scene: end its process and drop its result.
        self.ui.assignButton.checked = False  # ends the assign mode
        self._timer.stop()
        if self._job is not None:
            self._job.close()
            self._job = None
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = ""
        self._showWarnings(None)
        self.logic.closeSessions()
        self.logic.restoreSegmentEditorMask()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[CoronaryCalciumDINOParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.bundlePathLineEdit.currentPath = self._parameterNode.bundlePath
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        busy = self._job is not None
        p = self._parameterNode
        self.ui.computeButton.enabled = bool(p and p.inputVolume) and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.rescoreButton.enabled = bool(p and p.inputVolume and p.resultSegmentation) and not busy
        self.ui.correctButton.enabled = bool(p and p.resultSegmentation) and not busy
        canAssign = bool(p and p.inputVolume and p.resultSegmentation) and not busy
        for widget in (self.ui.assignButton, self.ui.showCandidatesCheckBox, self.ui.assignTargetComboBox):
            widget.enabled = canAssign
        if not canAssign and self.ui.assignButton.checked:
            self.ui.assignButton.checked = False
        self.ui.undoAssignButton.enabled = canAssign and self.logic.canUndoAssign(p.resultSegmentation)
        self.ui.exportDicomButton.enabled = bool(p and p.inputVolume and p.resultSegmentation) and not busy
        self.ui.bundlePathLineEdit.enabled = bool(p) and not p.useDefaultBundle

    def _updateDeviceWarning(self, *args) -> None:
        text = self.logic.deviceWarning(self.ui.deviceComboBox.currentText)
        self.ui.deviceWarningLabel.text = text
        self.ui.deviceWarningLabel.visible = bool(text)

    def onBundlePath(self, path: str) -> None:
        if self._parameterNode:
            self._parameterNode.bundlePath = path

    # -- compute

    def onCompute(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Compute failed."), waitCursor=False):
            if not self.logic.ensureDependencies(interactive=True):
                return
            self._job = self.logic.startCompute(
                p.inputVolume,
                bundlePath=None if p.useDefaultBundle else p.bundlePath,
                device=p.device,
                attention=p.computeAttention,
                params=self.logic.scoringParams(p),
            )
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Starting...")
            self._showWarnings(None)
            self._updateButtons()
            self._timer.start()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        running = job.poll()  # reads what the process printed so far; never waits
        self.ui.progressBar.setValue(int(round(100 * job.fraction)))
        self.ui.statusLabel.text = job.message
        if running:
            return
        self._timer.stop()
        self._job = None
        self._updateButtons()
        if getattr(job, "cuda", None) is not None:
            self.logic.noteCudaAvailable(job.cuda)  # what the process's PyTorch found
        self._updateDeviceWarning()
        if job.error is not None:
            self.ui.progressBar.setValue(0)
            expected = isinstance(job.error, _lib().errors.CCDinoError)
            message = str(job.error) if expected else repr(job.error)
            self.ui.statusLabel.text = message
            if not expected:  # keep the traceback of unexpected errors in the log
                logging.error("CoronaryCalciumDINO compute failed", exc_info=job.error)
            if not isinstance(job.error, _lib().errors.Cancelled):
                slicer.util.errorDisplay(_("Compute failed: ") + message)
            return
        # The edited-segments question comes first; the wait cursor only covers the writing.
        with slicer.util.tryWithErrorDisplay(_("Writing the result failed."), waitCursor=False):
            outcome = self.logic.finishCompute(job, on_conflict=self._askConflict, busy=_waitCursor)
            self._parameterNode.resultSegmentation = outcome.segmentation_node
            self._showOutcome(outcome)
            kept = f" (kept your edits of {', '.join(outcome.kept)})" if outcome.kept else ""
            warned = _(" - see the warnings below") if outcome.report.get("warnings") else ""
            self.ui.statusLabel.text = _("Done") + kept + warned
            self.ui.progressBar.setValue(100)

    def _askConflict(self, edited):
        """Ask whether to replace segments the user edited; default keeps them."""
        replace = slicer.util.confirmYesNoDisplay(
            _("You edited segment(s) {names}. Replace them with the new AI result?").format(names=", ".join(edited)),
            windowTitle=_("Edited segments"),
        )
        return "replace" if replace else "keep"

    def _showWarnings(self, report) -> None:
        """The warning banner under the status line: the report's warnings (e.g. a
        contrast-enhanced CT), hidden when there are none."""
        text = _lib().scene.logic.warnings_text(report)
        self.ui.warningLabel.text = text
        self.ui.warningLabel.visible = bool(text)
        review = _lib().scene.logic.review_text(report)  # the report's review flags
        self.ui.reviewFlagsLabel.text = review
        self.ui.reviewFlagsLabel.visible = bool(review)

    def _showOutcome(self, outcome) -> None:
        self._showWarnings(outcome.report)
        self.ui.resultsTableView.setMRMLTableNode(outcome.score_table_node)
        self.logic.showResult(outcome)
        self.ui.attentionHeadComboBox.clear()
        maps = getattr(outcome.pipeline_result, "attention", None)
        if maps is not None:
            self.ui.attentionHeadComboBox.addItem(_("mean of heads"))
            for h in range(1, maps.shape[0]):
                self.ui.attentionHeadComboBox.addItem(_("head {n}").format(n=h))
        if self.ui.showAttentionCheckBox.checked:
            self.onShowAttention(True)

    def _onRescored(self, report) -> None:
        p = self._parameterNode
        if p and p.resultSegmentation:
            table, _slices = self.logic.resultTables(p.resultSegmentation)
            self.ui.resultsTableView.setMRMLTableNode(table)
        self._showWarnings(report)
        self.ui.statusLabel.text = _("Rescored after your edit")

    # -- results

    def onRescore(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Rescoring failed."), waitCursor=True):
            table = self.logic.rescore(p.resultSegmentation, p.inputVolume, self.logic.scoringParams(p))
            self.ui.resultsTableView.setMRMLTableNode(table)
            self.logic.showTableInLayout(table)  # the current layout: rescoring never switches it
            self._showWarnings(_lib().scene.table.report_from_table(table) if table is not None else None)
            self.ui.statusLabel.text = _("Rescored")

    def onCorrect(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot open Segment Editor."), waitCursor=False):
            self.logic.openSegmentEditor(p.resultSegmentation, p.inputVolume, self.logic.scoringParams(p).threshold_hu)

    def onExportDicom(self) -> None:
        """Ask for a folder (and whether to replace files there); the logic writes SEG + SR."""
        p = self._parameterNode
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the DICOM SEG and SR"))
        if not folder:
            return
        overwrite = False
        existing = [str(f) for f in self.logic.dicomExportPaths(folder, p.inputVolume) if os.path.exists(f)]
        if existing:
            if not slicer.util.confirmOkCancelDisplay(_("Replace {files}?").format(files=", ".join(existing))):
                return
            overwrite = True
        with slicer.util.tryWithErrorDisplay(_("DICOM export failed."), waitCursor=True):
            written = self.logic.exportDicom(p.resultSegmentation, p.inputVolume, folder, overwrite=overwrite)
            names = [os.path.basename(str(f)) for f in (written.seg, written.sr) if f is not None]
            self.ui.statusLabel.text = _("Exported {files}").format(files=", ".join(names + written.notes))

    def onShowPlot(self) -> None:
        p = self._parameterNode
        if p and p.resultSegmentation:
            self.logic.showPlotInLayout(p.resultSegmentation)

    def onAttentionHead(self, index: int) -> None:
        if index < 0 or not self._parameterNode:
            return
        self._parameterNode.attentionHead = index
        with slicer.util.tryWithErrorDisplay(_("Cannot show attention."), waitCursor=False):
            self.logic.selectAttentionHead(self._parameterNode.inputVolume, index)  # same node, new content

    def onShowAttention(self, show: bool) -> None:
        """Show or hide the overlay (the slice views' foreground only)."""
        p = self._parameterNode
        if p and p.inputVolume:
            self.logic.setAttentionOverlay(p.inputVolume, bool(show), self.ui.attentionOpacitySlider.value)

    def onAttentionOpacity(self, opacity: float) -> None:
        """Opacity of the views that show the overlay; nothing while it is hidden."""
        p = self._parameterNode
        if p and p.inputVolume:
            self.logic.setAttentionOpacity(p.inputVolume, opacity)

    # -- click-to-assign: the widget binds the click; CoronaryCalciumDINOLib.scene.assign does the work

    def _setupAssign(self) -> None:
        self._clickObservations = []  # (interactor, observer tag) while the assign mode is on
        self._pressed = None  # (slice view, event position) of the last left-button press
        for target in _lib().scene.assign.TARGETS:
            self.ui.assignTargetComboBox.addItem(target)
        self.ui.assignButton.connect("toggled(bool)", self.onAssignMode)
        self.ui.undoAssignButton.connect("clicked(bool)", self.onUndoAssign)
        self.ui.showCandidatesCheckBox.connect("toggled(bool)", self.onShowCandidates)

    def onAssignMode(self, on: bool) -> None:
        """While on, a left click (press and release without a drag) in a slice view assigns
        the lesion under it; drags keep their usual meaning (window/level, panning)."""
        self._stopClickObservers()
        layoutManager = slicer.app.layoutManager()
        p = self._parameterNode
        if not on or layoutManager is None or not (p and p.inputVolume and p.resultSegmentation):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot find the calcium candidates."), waitCursor=True):
            self.logic.lesionAssigner(p.resultSegmentation, p.inputVolume).candidates()  # once per CT: clicks are quick
        for name in layoutManager.sliceViewNames():
            view = layoutManager.sliceWidget(name).sliceView()
            interactor = view.interactor()
            for event in ("LeftButtonPressEvent", "LeftButtonReleaseEvent"):
                tag = interactor.AddObserver(event, lambda caller, ev, view=view: self._onSliceClick(view, caller, ev), 1.0)
                self._clickObservations.append((interactor, tag))
        self.ui.statusLabel.text = _("Click a lesion in a slice view to assign it to {target}.").format(
            target=self.ui.assignTargetComboBox.currentText)

    def _stopClickObservers(self) -> None:
        for interactor, tag in getattr(self, "_clickObservations", []):
            interactor.RemoveObserver(tag)
        self._clickObservations = []
        self._pressed = None

    def _onSliceClick(self, view, interactor, event) -> None:
        position = tuple(interactor.GetEventPosition())
        if event == "LeftButtonPressEvent":
            self._pressed = (view, position)
            return
        pressed, self._pressed = self._pressed, None
        if pressed is None or pressed[0] is not view or max(abs(a - b) for a, b in zip(pressed[1], position)) > 3:
            return  # a drag, not a click
        ras = view.convertXYZToRAS(view.convertDeviceToXYZ(list(position)))
        self.assignAt([float(v) for v in ras])

    def assignAt(self, ras) -> None:
        """Assign the lesion under the RAS point to the chosen target (what a click does)."""
        p = self._parameterNode
        if not (p and p.inputVolume and p.resultSegmentation):
            self.ui.statusLabel.text = _("Select the CT and its result segmentation first.")
            return
        with slicer.util.tryWithErrorDisplay(_("Assigning the lesion failed."), waitCursor=True):
            outcome = self.logic.assignLesion(p.resultSegmentation, p.inputVolume, ras, self.ui.assignTargetComboBox.currentText)
            self.ui.statusLabel.text = outcome.message
        self._updateButtons()

    def onUndoAssign(self) -> None:
        p = self._parameterNode
        if not (p and p.inputVolume and p.resultSegmentation):
            return
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.undoAssign(p.resultSegmentation, p.inputVolume).message
        self._updateButtons()

    def onShowCandidates(self, show: bool) -> None:
        p = self._parameterNode
        if not (p and p.inputVolume and p.resultSegmentation):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot show the candidates."), waitCursor=True):
            self.logic.showCandidates(p.resultSegmentation, p.inputVolume, bool(show))


#
# Logic
#


class _OutputLines:
    """The lines a process prints on its stdout pipe, read without ever waiting.

    The pipe is set non-blocking (POSIX; Windows from Python 3.12); elsewhere a reader
    thread waits on it and hands over what it read, so the main thread never waits."""

    def __init__(self, stream):
        import codecs

        self._stream = stream
        self._fd = stream.fileno()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._queue = None
        self._thread = None
        self.ended = False  # the pipe reached its end (the process closed it)
        try:
            os.set_blocking(self._fd, False)
        except (AttributeError, OSError):
            import queue
            import threading

            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._readAll, daemon=True)
            self._thread.start()

    def _readAll(self):
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                chunk = b""
            self._queue.put(chunk)
            if not chunk:
                return

    def _chunks(self):
        import queue

        while not self.ended:
            if self._queue is not None:
                try:
                    chunk = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                try:
                    chunk = os.read(self._fd, 65536)
                except BlockingIOError:
                    return
                except OSError:
                    chunk = b""
            if not chunk:
                self.ended = True
                return
            yield chunk

    def read(self, final: bool = False) -> list:
        """The complete lines printed since the last call (``final``: the rest as well)."""
        if final and self._thread is not None:
            self._thread.join(1.0)  # the process ended: the thread sees the pipe's end
        text = self._partial + "".join(self._decoder.decode(chunk) for chunk in self._chunks())
        if final:
            text += self._decoder.decode(b"", final=True)
        lines = text.split("\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = ""
        return [line.rstrip("\r") for line in lines]


class _ProcessResult:
    """The result files of the compute process, as the scene glue's ``write_result`` takes a
    pipeline result: labels, score, slice probabilities, attention, warnings, report keys."""

    def __init__(self, ct, params, report, labels, attention, runWarnings):
        lib = _lib()
        self.report = report
        self.labels = labels
        self.attention = attention
        self.warnings = list(runWarnings)
        slices = report.get("slices") or []
        self.slice_probabilities = np.array([s["probability"] for s in slices], dtype=np.float32)
        self.selected = np.array([bool(s["selected"]) for s in slices], dtype=bool)
        # The score of the labels on the scene's CT (what rescoring gives); it must be the
        # command's own score, else the files do not belong to this CT and parameters.
        self.score = lib.scoring.score(ct.hu, labels, ct.spacing, params)
        ours, theirs = self.score.total.agatston, float(report["total"]["agatston"])
        if abs(ours - theirs) > 1e-6 * max(1.0, abs(theirs)) or self.score.total.lesions != report["total"]["lesions"]:
            raise lib.errors.CCDinoError(
                f"the result of the compute process does not match the CT (Agatston {theirs:g} there, {ours:g} here)"
            )

    def report_extra(self) -> dict:
        extra = {key: self.report[key] for key in ("slices", "model", "review_flags") if key in self.report}
        lesions = self.report.get("lesions") or []
        if lesions and all("confidence" in lesion for lesion in lesions):
            extra["lesion_confidence"] = [dict(lesion["confidence"]) for lesion in lesions]
        return extra


class _FinishedJob:
    """A job done at once on the main thread: ``segmentFn`` instead of the AI (tests,
    other models); the same interface as :class:`_ComputeProcess`."""

    def __init__(self, volumeNode, ct, params, run):
        self.volumeNode, self.ct, self.params = volumeNode, ct, params
        self.fraction, self.message = 1.0, _("Done")
        self.result, self.error = None, None
        try:
            self.result = run(ct)
        except Exception as exc:  # reported like a failed process
            self.error = exc

    def poll(self):
        return False

    def is_alive(self):
        return False

    def wait(self, timeout=None):
        pass

    def cancel(self):
        pass

    def loadResult(self, checkVolume=None):
        return self.result

    def cleanup(self):
        pass

    def close(self):
        pass


class _ComputeProcess:
    """One Compute in its own process: the library's command ``ccdino score`` on the CT
    written to ``folder``; results come back as files in ``folder/out``.

    :meth:`poll` (main thread, from a QTimer) reads the process's output without waiting:
    ``PROGRESS`` lines set ``fraction`` and ``message``, ``CUDA 0|1`` tells whether it found
    a GPU, other lines are kept for the log and the error message. When the process has
    ended, ``error`` is None (success: :meth:`loadResult` reads the files) or a one-line
    :class:`~CoronaryCalciumDINOLib.errors.CCDinoError` (:class:`Cancelled` after
    :meth:`cancel`)."""

    #: the CT file's name: the command names its outputs after it (volume.json, ...)
    STEM = "volume"
    #: output lines kept for the log and the error message
    KEEP_LINES = 200

    def __init__(self, volumeNode, ct, params, attention, folder, launch, args, graceSeconds=_CANCEL_GRACE_S):
        import collections

        self.volumeNode, self.ct, self.params = volumeNode, ct, params
        self.attention = bool(attention)
        self.folder = folder
        self.args = list(args)
        self.graceSeconds = float(graceSeconds)
        self.fraction, self.message = 0.0, _("Starting...")
        self.result, self.error, self.cuda, self.returncode = None, None, None, None
        self.output = collections.deque(maxlen=self.KEEP_LINES)
        self._cancelled, self._killAt, self._ended, self._cleaned = False, None, False, False
        self.process = launch(self.args)
        try:
            self._lines = _OutputLines(self.process.stdout)
        except BaseException:  # the process must not outlive a job that failed to start
            self.process.kill()
            self.process.wait()
            raise

    @property
    def outDir(self):
        return os.path.join(self.folder, "out")

    def _take(self, lines):
        progress = _lib().cli.progress
        for line in lines:
            parsed = progress.parse_progress_line(line)
            if parsed is not None:
                self.fraction, self.message = parsed
                continue
            cuda = progress.parse_cuda_line(line)
            if cuda is not None:
                self.cuda = cuda
                continue
            if line.strip():
                self.output.append(line)
                logging.info(f"CoronaryCalciumDINO compute: {line}")

    def poll(self) -> bool:
        """Read what the process printed since the last call and see whether it ended
        (never waits); True while it runs. Kills a cancelled process after the grace period.
        If following the process fails (its output cannot be read), the process is killed
        and the run ends with a one-line error; the scene is not touched."""
        if self._ended:
            return False
        try:
            return self._poll()
        except Exception as exc:
            try:
                self.process.kill()
                self.process.wait()
            except OSError:
                pass
            self._ended = True
            self.error = _lib().errors.CCDinoError(
                f"the AI process could not be followed ({type(exc).__name__}: {exc}); the scene is unchanged")
            logging.error("CoronaryCalciumDINO compute: following the process failed", exc_info=exc)
            self.cleanup()
            return False

    def _poll(self) -> bool:
        self._take(self._lines.read())
        code = self.process.poll()
        if code is None:
            if self._killAt is not None and time.monotonic() >= self._killAt:
                self.process.kill()
                self._killAt = None
            return True
        self._take(self._lines.read(final=True))
        self._ended, self.returncode = True, code
        if self._cancelled:
            self.error = _lib().errors.Cancelled("cancelled by the user")
        elif code != 0:
            self.error = self._failure(code)
        if self.error is not None:
            self.cleanup()
        return False

    def _failure(self, code):
        """The one-line error of a process that ended with ``code`` (its output is logged)."""
        lines = list(self.output)
        if lines:
            logging.error("CoronaryCalciumDINO compute process output (last lines):\n" + "\n".join(lines[-40:]))
        for line in reversed(lines):
            if line.startswith("ccdino: error: "):  # the command's own one-line error
                return _lib().errors.CCDinoError(line[len("ccdino: error: "):].strip())
        if code < 0:  # ended by a signal (POSIX)
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = " (out of memory?)" if name == "SIGKILL" else ""
            return _lib().errors.CCDinoError(
                f"the AI process was ended by {name}{why}; the scene is unchanged"
            )
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        if len(last) > 300:
            last = last[:297] + "..."
        detail = f": {last}" if last else ""
        return _lib().errors.CCDinoError(f"the AI process failed (exit code {code}){detail}; the scene is unchanged")

    def is_alive(self) -> bool:
        return not self._ended and self.process.poll() is None

    def wait(self, timeout=None):
        """Poll until the process ends (at most ``timeout`` seconds): blocking use (tests,
        scripts); the panel polls from its timer instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.poll():
                if deadline is not None and time.monotonic() >= deadline:
                    return
                time.sleep(0.02)
        except BaseException:
            self.close()
            raise

    def cancel(self):
        """Ask the process to end (terminate); :meth:`poll` kills it after the grace period."""
        if self._ended or self._cancelled:
            return
        self._cancelled = True
        self.message = _("Cancelling...")
        try:
            self.process.terminate()
        except OSError:  # ended meanwhile
            pass
        self._killAt = time.monotonic() + self.graceSeconds

    def close(self):
        """End the process (terminate, kill after the grace period), wait for it and remove
        the temporary folder (module cleanup, scene close)."""
        self.cancel()
        self.wait(self.graceSeconds + 2.0)
        if not self._ended:
            self.process.kill()
            self.wait(5.0)
        self.cleanup()

    def cleanup(self):
        """Remove the temporary folder (CT and result files)."""
        if self._cleaned:
            return
        self._cleaned = True
        if self.process.stdout is not None:
            try:
                self.process.stdout.close()
            except OSError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def loadResult(self, checkVolume=None):
        """Read the result files of a process that ended well (main thread); sets and
        returns ``result``. ``checkVolume(ct)`` runs the CT checks on the scene's CT first,
        so that their warnings are not counted twice."""
        if self.result is not None:
            return self.result
        if self.error is not None:
            raise self.error
        if not self._ended:
            raise RuntimeError("the compute process has not ended")
        import json

        lib = _lib()
        out = self.outDir
        try:
            with open(os.path.join(out, f"{self.STEM}.json"), encoding="utf-8") as f:
                report = json.load(f)
            labels = lib.io.volume.read_label_file(os.path.join(out, f"{self.STEM}.labels.nrrd"), self.ct)
            attention = self._readAttention() if self.attention else None
        except (OSError, ValueError, lib.errors.InputError) as exc:
            raise lib.errors.CCDinoError(f"the compute process left no readable result: {exc}") from None
        if checkVolume is not None:
            checkVolume(self.ct)
        runWarnings = [w for w in report.get("warnings") or [] if w not in self.ct.warnings]
        self.result = _ProcessResult(self.ct, self.params, report, labels.astype(np.uint8), attention, runWarnings)
        return self.result

    def _readAttention(self):
        """The attention maps the command wrote, already quantised as they are kept
        (``scene.attention.AttentionMaps``: at most a few hundred MB, whatever the CT)."""
        return _lib().scene.attention.AttentionMaps.load(os.path.join(self.outDir, "attention.npz"), grid=self.ct.shape)


class CoronaryCalciumDINOLogic(ScriptedLoadableModuleLogic):
    """Compute, rescore and display; usable without the widget (tests, batch).

    The scene work is done by ``CoronaryCalciumDINOLib.scene`` with ``slicer.mrmlScene``
    passed explicitly.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._sessions = {}  # segmentation node ID -> ResultSession
        self._attention = {}  # volume node ID -> scene.attention.AttentionMaps (quantised)
        self._assigners = {}  # segmentation node ID -> scene.assign.LesionAssigner (click-to-assign, undo)
        self._sceneObservations = []  # (scene, tag) of observeScene
        self._intensityMask = None  # the Segment Editor mask set by openSegmentEditor
        self.onRescored = None
        # Segment edits are checked once the editing pauses (one check per paint stroke).
        self._pendingChecks = []
        self._editTimer = qt.QTimer()
        self._editTimer.setSingleShot(True)
        self._editTimer.setInterval(300)
        self._editTimer.connect("timeout()", self.flushEditChecks)
        # A segmentation or CT loaded on its own (not with a scene): its results are looked
        # for once the loading is over (the node is added before its file is read).
        self._loadTimer = qt.QTimer()
        self._loadTimer.setSingleShot(True)
        self._loadTimer.setInterval(0)
        self._loadTimer.connect("timeout()", self._onNodesLoaded)

    def getParameterNode(self):
        return CoronaryCalciumDINOParameterNode(super().getParameterNode())

    # -- environment

    @staticmethod
    def missingPackages():
        """Import names of every package the first Compute needs that is not installed
        (the library's one list, :mod:`CoronaryCalciumDINOLib.requirements`)."""
        return _requirements().missing(ai=True)

    @staticmethod
    def packageNames(missing):
        """pip package names of import names (``skimage`` -> ``scikit-image``), torch included."""
        table = {**_requirements().CORE, **_requirements().AI}
        names = []
        for name in missing:
            requirement = table.get(name, name)
            for i, char in enumerate(requirement):
                if char in "<>=!~;[ ":
                    requirement = requirement[:i]
                    break
            names.append(requirement)
        return names

    def ensureDependencies(self, interactive: bool = True) -> bool:
        """Install torch (through PyTorchUtils) then the other missing packages with the
        installed torch pinned as a pip constraint, after asking once; returns False when
        the user declines."""
        missing = self.missingPackages()
        if not missing:
            return True
        requirements = _requirements().pip_requirements(missing)
        names = ", ".join(self.packageNames(missing))
        if interactive and not slicer.util.confirmOkCancelDisplay(
            _("CoronaryCalciumDINO needs Python packages that are not installed yet: {names}. "
              "Install them now? This downloads several hundred MB and may take minutes.").format(names=names),
            detailedText=_("PyTorch is installed by the PyTorch extension (it picks the build for your GPU); "
                           "then, with that PyTorch kept: {reqs}.").format(reqs=", ".join(requirements)),
        ):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(_("This module needs the PyTorch extension: install it from the Extensions Manager.")) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=_requirements().TORCH_VERSION) is None:
                    raise RuntimeError(_("PyTorch could not be installed."))
        if requirements:
            self._pipInstall(requirements, _requirements().torch_constraints())
        importlib.invalidate_caches()  # let find_spec see the packages just installed
        still = self.missingPackages()
        if still:
            raise RuntimeError(_("Missing Python packages after installation: {names}").format(names=", ".join(self.packageNames(still))))
        return True

    @staticmethod
    def _pipInstall(requirements, constraints):
        """pip-install ``requirements`` with the ``constraints`` lines as a constraints file."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            constraintsFile = os.path.join(folder, "constraints.txt")
            with open(constraintsFile, "w") as f:
                f.write("".join(line + "\n" for line in constraints))
            try:
                from slicer import packaging  # Slicer >= 5.12
            except ImportError:
                packaging = None
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                # installs what is missing, offers a restart if needed
                packaging.pip_ensure(requirements, constraints=constraintsFile, prompt_install=False, requester="CoronaryCalciumDINO")
            else:
                slicer.util.pip_install([*requirements, "-c", constraintsFile])

    @staticmethod
    def deviceWarning(device: str) -> str:
        """Warning text for the device choice ('' when none). Never imports torch: the CUDA
        check is done (once) by the first Compute, until then only a missing PyTorch is told."""
        text = _lib().scene.logic.device_warning(device, torch_installed=importlib.util.find_spec("torch") is not None)
        return _(text) if text else ""

    def scoringParams(self, parameterNode):
        """ScoringParams from the panel (kVp-adapted threshold, calibration, minimum area);
        kVp 0 means the volume's own kVp (the classic definition when it has none)."""
        lib = _lib()
        options = lib.scoring.ScoringOptions(
            kvp=parameterNode.kvp or "auto",
            auto_kvp_required=False,
            calibration_factor=parameterNode.calibrationFactor or None,
            min_area_mm2=parameterNode.minAreaMm2,
        )
        return options.resolve(lib.scene.volume.volume_kvp(parameterNode.inputVolume))

    # -- compute

    #: seconds between terminating a cancelled compute process and killing it
    cancelGraceSeconds = _CANCEL_GRACE_S

    def startCompute(self, volumeNode, bundlePath=None, device="auto", attention=True, params=None, segmentFn=None):
        """Start the AI on ``volumeNode`` in its own process (the library's command
        ``ccdino score``); returns the job: call its ``poll()`` from a timer (it never
        waits; ``fraction``/``message`` follow the run), then :meth:`finishCompute`.

        ``segmentFn(ct)`` replaces the AI (tests, other models): it runs at once, here."""
        lib = _lib()
        scene_logic = lib.scene.logic
        if volumeNode is None:
            raise ValueError(_("Select an input CT volume."))
        ct = lib.scene.volume.volume_node_to_ct(volumeNode)
        params = scene_logic.scoring_params_for(volumeNode, params)
        if segmentFn is not None:
            return _FinishedJob(volumeNode, ct, params, segmentFn)
        scoringArgs = self.scoringArguments(params)  # before anything is written
        if bundlePath:
            bundlePath = os.path.abspath(bundlePath)
            if not os.path.exists(bundlePath):
                raise lib.errors.InputError(_("Model bundle not found: {path}").format(path=bundlePath))
        import tempfile

        folder = tempfile.mkdtemp(prefix="ccdino-")
        try:
            inputPath = os.path.join(folder, f"{_ComputeProcess.STEM}.nrrd")
            self.writeInput(ct, inputPath)
            outDir = os.path.join(folder, "out")
            args = [
                *self.pythonCommand(), "score", inputPath, "--out", outDir, "--quiet", "--progress-lines",
                "--device", str(device or "auto"), *scoringArgs,
            ]
            if bundlePath:
                args += ["--bundle", bundlePath]
            if attention:  # quantised by the command: this thread never holds the float maps
                args += ["--attention-codes", os.path.join(outDir, "attention.npz")]
            return _ComputeProcess(volumeNode, ct, params, attention, folder, self.launchProcess, args, self.cancelGraceSeconds)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @staticmethod
    def pythonCommand():
        """The command line before the subcommand: Slicer's Python (``PythonSlicer``, which
        sets up Slicer's environment: found on the PATH as SlicerTotalSegmentator finds it,
        else in Slicer's ``bin`` folder; this Python outside Slicer, e.g. on slicer-core)
        running the library's command module."""
        python = shutil.which("PythonSlicer")
        home = getattr(slicer.app, "slicerHome", None)
        if python is None and home:
            name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
            inHome = os.path.join(home, "bin", name)
            python = inHome if os.path.isfile(inHome) else None
            if python is None:  # never sys.executable inside Slicer: that may be the application
                raise RuntimeError(_("Slicer's Python (PythonSlicer) was not found in {folder}").format(folder=os.path.join(home, "bin")))
        return [python or sys.executable, "-m", "CoronaryCalciumDINOLib.cli"]

    @staticmethod
    def launchProcess(args):
        """Start ``args`` with ``slicer.util.launchConsoleProcess`` (stdout and stderr in one
        pipe, no console window) in the folder that holds the library, so that ``-m`` finds
        the same library the module uses. ``PythonSlicer`` gets Slicer's startup environment
        (as an extension's command does); another Python this process's environment."""
        libraryParent = os.path.dirname(os.path.dirname(os.path.abspath(_lib().__file__)))
        startup = os.path.basename(args[0]).lower().startswith("pythonslicer")
        return slicer.util.launchConsoleProcess(
            args,
            useStartupEnvironment=startup,
            updateEnvironment={"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"},
            cwd=libraryParent,
        )

    @staticmethod
    def writeInput(ct, path):
        """The CT as the command's input file (NRRD, uncompressed; int16 when every value is
        an integer in range, as for a DICOM CT, else float32: the values are kept exactly)."""
        hu = np.asarray(ct.hu)
        stored = hu.astype(np.int16)
        if not np.array_equal(stored, hu):
            stored = hu.astype(np.float32)
        _lib().io.volume.write_volume(stored, ct, path, compress=False)

    @staticmethod
    def scoringArguments(params):
        """``ccdino score`` options giving exactly ``params`` (kVp-adapted thresholds, minimum
        area, slice correction, calibration); InputError for parameters they cannot express."""
        lib = _lib()
        args = []
        if params.kvp is not None:
            args += ["--kvp", repr(float(params.kvp))]
        args += ["--min-area", repr(float(params.min_area_mm2))]
        if not params.slice_correction:
            args.append("--no-slice-correction")
        if params.calibration_factor is not None:
            args += ["--calibration-factor", repr(float(params.calibration_factor))]
        options = lib.scoring.ScoringOptions(
            kvp=params.kvp, min_area_mm2=params.min_area_mm2, slice_correction=params.slice_correction,
            calibration_factor=params.calibration_factor,
        )
        if options.resolve(None) != params:
            raise lib.errors.InputError(
                f"these scoring parameters cannot be given to the scoring command (threshold {params.threshold_hu:g} HU, "
                f"bands {tuple(params.band_edges_hu)}): use the kVp, minimum area and calibration settings"
            )
        return args

    def finishCompute(self, job, on_conflict="keep", busy=None):
        """Write a finished job's result into the scene (main thread); returns the outcome.

        ``on_conflict``: "keep", "replace" or a callable asked with the edited segments; it
        is asked before the writing starts, and only the writing runs inside the ``busy()``
        context (e.g. a wait cursor), so a question never appears under a wait cursor.
        The result files of a compute process are read here, under ``busy()``; its
        temporary folder is removed whatever happens.
        """
        try:
            if job.error is not None:
                raise job.error
            scene_logic = _lib().scene.logic
            volumeNode = job.volumeNode
            if not slicer.mrmlScene.IsNodePresent(volumeNode):
                raise _lib().errors.InputError(_("The input volume was removed from the scene during the computation."))
            if getattr(job, "cuda", None) is not None:
                self.noteCudaAvailable(job.cuda)
            if callable(on_conflict):
                edited = scene_logic.edited_result_segments(slicer.mrmlScene, volumeNode)
                on_conflict = on_conflict(list(edited)) if edited else "keep"
            existing = _lib().scene.segmentation.find_result_segmentation(slicer.mrmlScene, volumeNode)
            session = self._sessions.get(existing.GetID()) if existing is not None else None
            with busy() if busy is not None else contextlib.nullcontext():
                result = job.loadResult(lambda ct: scene_logic.check_volume(volumeNode, ct))
                outcome = scene_logic.write_result(slicer.mrmlScene, volumeNode, job.ct, result, job.params, on_conflict, session)
        finally:
            job.cleanup()
        maps = getattr(job.result, "attention", None)
        if maps is not None:  # a compute process's maps come quantised; others are quantised here
            kept = _lib().scene.attention.AttentionMaps
            self._attention[volumeNode.GetID()] = maps if isinstance(maps, kept) else kept(maps)
        self.openSession(outcome.segmentation_node, volumeNode, job.params)
        return outcome

    def compute(self, volumeNode, bundlePath=None, device="auto", attention=True, params=None, on_conflict="keep", segmentFn=None):
        """Blocking compute (tests, batch): start, wait, write."""
        job = self.startCompute(volumeNode, bundlePath, device, attention, params, segmentFn)
        job.wait()
        return self.finishCompute(job, on_conflict)

    @staticmethod
    def noteCudaAvailable(available: bool):
        """Keep what the compute process found (``CUDA 0|1``) for :meth:`deviceWarning`: the
        scene glue's CUDA check, which this process never does (it never imports torch)."""
        _lib().scene.logic._CUDA_AVAILABLE = bool(available)

    # -- edits and rescoring

    def openSession(self, segmentationNode, volumeNode, params=None):
        """Track user edits of a result segmentation and rescore automatically."""
        key = segmentationNode.GetID()
        if key in self._sessions and self._sessions[key].segmentation_node is not segmentationNode:
            self._sessions.pop(key).close()  # another node under a reused ID (scene cleared)
        if key not in self._sessions:
            self._sessions[key] = _lib().scene.logic.ResultSession(
                slicer.mrmlScene, volumeNode, segmentationNode, params, on_rescored=self._rescored, defer=self._deferEditCheck
            )
        return self._sessions[key]

    def _deferEditCheck(self, check):
        if check not in self._pendingChecks:
            self._pendingChecks.append(check)
        self._editTimer.start()  # restarts while edits keep coming

    def flushEditChecks(self):
        """Run the pending edit checks now (rescoring edited results)."""
        self._editTimer.stop()
        checks, self._pendingChecks = self._pendingChecks, []
        for check in checks:
            check()

    def _rescored(self, report):
        if self.onRescored is not None:
            self.onRescored(report)

    def restoreSessions(self):
        """Open edit tracking on every result segmentation of the scene that has none (after
        a saved scene was loaded); results edited while untracked are rescored. Returns the
        number of sessions opened."""
        before = len(self._sessions)
        _lib().scene.logic.reopen_sessions(slicer.mrmlScene, self.openSession)
        return len(self._sessions) - before

    def observeScene(self):
        """Reopen edit tracking whenever a scene is loaded (imported) or restored, and when a
        segmentation or a CT is loaded on its own (a result's ``.seg.nrrd`` is recognised by
        its segments' tags: ``scene.logic.recognise_loaded_results``)."""
        if self._sceneObservations:
            return
        scene = slicer.mrmlScene
        for event in (scene.EndImportEvent, scene.EndRestoreEvent):
            self._sceneObservations.append((scene, scene.AddObserver(event, self._onSceneLoaded)))
        self._sceneObservations.append((scene, scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded)))

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, caller, event, node):
        if caller.IsImporting() or caller.IsRestoring() or node is None:
            return  # a scene being loaded: its end event follows
        if node.IsA("vtkMRMLSegmentationNode") or (node.IsA("vtkMRMLScalarVolumeNode")
                                                   and not node.IsA("vtkMRMLLabelMapVolumeNode")):
            self._loadTimer.start()

    def _onNodesLoaded(self):
        scene = slicer.mrmlScene
        tracked = {s.segmentation_node.GetID() for s in self._sessions.values()}
        segmentations = _lib().scene.volume.nodes_by_class(scene, "vtkMRMLSegmentationNode")
        if all(node.GetID() in tracked for node in segmentations):
            return
        self._onSceneLoaded()

    def stopObservingScene(self):
        for scene, tag in self._sceneObservations:
            scene.RemoveObserver(tag)
        self._sceneObservations = []

    def _onSceneLoaded(self, caller=None, event=None):
        try:
            self.restoreSessions()
        except Exception:  # a damaged result must not break loading the scene
            logging.exception("Coronary Calcium DINO: cannot track edits of the loaded results")

    def closeSessions(self):
        self._editTimer.stop()
        self._loadTimer.stop()
        self._pendingChecks = []
        for session in self._sessions.values():
            session.close()
        self._sessions = {}
        self._attention = {}
        self._assigners = {}

    # -- click-to-assign (scene.assign)

    def lesionAssigner(self, segmentationNode, volumeNode):
        """The click-to-assign helper of a result (``scene.assign.LesionAssigner``: one per
        segmentation, with its undo history), tied to the result's edit-tracking session."""
        key = segmentationNode.GetID()
        assigner = self._assigners.get(key)
        if assigner is None or assigner.segmentation_node is not segmentationNode or assigner.volume_node is not volumeNode:
            assigner = _lib().scene.assign.LesionAssigner(segmentationNode, volumeNode)
            self._assigners[key] = assigner
        session = self._sessions.get(key)
        assigner.session = session if session is not None and session.segmentation_node is segmentationNode else None
        return assigner

    def assignLesion(self, segmentationNode, volumeNode, ras, target):
        """Give the calcium candidate under the RAS point to ``target`` (LM, LAD, LCX, RCA or
        Remove) and rescore; returns the outcome (its ``message`` says what happened)."""
        self.flushEditChecks()  # an edit not checked yet is rescored first
        assigner = self.lesionAssigner(segmentationNode, volumeNode)
        outcome = assigner.assign(ras, target)
        if outcome.changed and assigner.session is None:
            self._rescored(outcome.report)  # a tracked result was rescored by its session
        return outcome

    def undoAssign(self, segmentationNode, volumeNode):
        """Take back the last assignment on this result; returns the outcome."""
        self.flushEditChecks()
        assigner = self.lesionAssigner(segmentationNode, volumeNode)
        outcome = assigner.undo()
        if outcome.changed and assigner.session is None:
            self._rescored(outcome.report)
        return outcome

    def canUndoAssign(self, segmentationNode):
        assigner = self._assigners.get(segmentationNode.GetID()) if segmentationNode is not None else None
        return bool(assigner is not None and assigner.can_undo)

    def showCandidates(self, segmentationNode, volumeNode, show=True):
        """Show (or hide) the CT's calcium candidates as their own, never scored segmentation;
        returns that node (None when hidden before it was ever shown)."""
        mask = self.lesionAssigner(segmentationNode, volumeNode).candidates() if show else None
        return _lib().scene.assign.show_candidates(slicer.mrmlScene, segmentationNode, volumeNode, mask, bool(show))

    def rescore(self, segmentationNode, volumeNode, params=None):
        """Score the current segments LM/LAD/LCX/RCA of any segmentation; returns the table node."""
        scene_logic = _lib().scene.logic
        scene_logic.rescore(segmentationNode, volumeNode, params)
        table, _slices = scene_logic.result_tables(slicer.mrmlScene, segmentationNode)
        return table

    @staticmethod
    def dicomExportPaths(folder, volumeNode):
        return _lib().scene.dicom_export.export_paths(folder, volumeNode)

    def exportDicom(self, segmentationNode, volumeNode, folder, overwrite=False):
        """Write the result as DICOM SEG + SR into ``folder`` (scene.dicom_export); the CT must
        come from Slicer's DICOM database. Returns what was written."""
        self.flushEditChecks()  # an edit not checked yet is rescored before the export reads the table
        database = getattr(slicer, "dicomDatabase", None)
        fileForInstance = database.fileForInstance if database is not None else None
        return _lib().scene.dicom_export.export_dicom(segmentationNode, volumeNode, folder, fileForInstance, overwrite)

    def resultTables(self, segmentationNode):
        return _lib().scene.logic.result_tables(slicer.mrmlScene, segmentationNode)

    # -- display

    def showResult(self, outcome):
        """Show a compute's score table: the layout switches to one with a table view only
        when the compute created the result (the first one for this CT); later computes
        keep the user's layout."""
        self.showTableInLayout(outcome.score_table_node, switchLayout=outcome.created)

    def showTableInLayout(self, tableNode, switchLayout: bool = False):
        """Make ``tableNode`` the active table (shown by the table views of the layout);
        ``switchLayout`` also switches to the Four-Up Table layout."""
        if tableNode is None or slicer.app.layoutManager() is None:
            return
        if switchLayout:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def showPlotInLayout(self, segmentationNode):
        _table, slices = self.resultTables(segmentationNode)
        if slices is None or slicer.app.layoutManager() is None:
            return
        chart = _lib().scene.table.ensure_probability_plot(slicer.mrmlScene, slices, segmentationNode.GetName())
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
        slicer.app.applicationLogic().GetSelectionNode().SetActivePlotChartID(chart.GetID())
        slicer.app.applicationLogic().PropagatePlotChartSelection()

    def selectAttentionHead(self, volumeNode, head: int):
        """Refill the attention volume with map ``head`` (0 = mean) of the last compute."""
        maps = self._attention.get(volumeNode.GetID())
        if maps is None:
            return None
        scene = _lib().scene
        seg = scene.segmentation.find_result_segmentation(slicer.mrmlScene, volumeNode)
        node = scene.logic.linked_attention_node(slicer.mrmlScene, seg) if seg is not None else None
        return scene.attention.show_attention_head(slicer.mrmlScene, volumeNode, maps, head, node)

    def _attentionNode(self, volumeNode):
        scene = _lib().scene
        seg = scene.segmentation.find_result_segmentation(slicer.mrmlScene, volumeNode)
        return scene.logic.linked_attention_node(slicer.mrmlScene, seg) if seg is not None else None

    def setAttentionOverlay(self, volumeNode, show: bool, opacity: float):
        """Show or hide the attention of ``volumeNode``'s result as the slice views'
        foreground (their background is never changed); returns the number of views changed."""
        return _lib().scene.attention.set_overlay(slicer.mrmlScene, self._attentionNode(volumeNode), show, opacity)

    def setAttentionOpacity(self, volumeNode, opacity: float):
        """Opacity of the views showing the attention; returns their number."""
        return _lib().scene.attention.set_overlay_opacity(slicer.mrmlScene, self._attentionNode(volumeNode), opacity)

    def openSegmentEditor(self, segmentationNode, volumeNode, thresholdHu: float = 130.0):
        """Open Segment Editor on the result, painting limited to voxels >= the threshold.

        The intensity mask is set on the editor node shared by all segmentations; it is put
        back as it was once the editor works on another segmentation (or on
        :meth:`restoreSegmentEditorMask`)."""
        slicer.util.selectModule("SegmentEditor")
        editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editorWidget.setSegmentationNode(segmentationNode)
        editorWidget.setSourceVolumeNode(volumeNode)
        self.setSegmentEditorMask(editorWidget.mrmlSegmentEditorNode(), segmentationNode, thresholdHu)

    def setSegmentEditorMask(self, editorNode, segmentationNode, thresholdHu: float):
        """Limit the editor to voxels >= ``thresholdHu`` while it edits ``segmentationNode``."""
        self.restoreSegmentEditorMask()
        self._intensityMask = _lib().scene.edits.IntensityMask(editorNode, segmentationNode, float(thresholdHu))
        return self._intensityMask

    def restoreSegmentEditorMask(self):
        """Put the Segment Editor's intensity mask back as it was before openSegmentEditor."""
        if self._intensityMask is not None:
            self._intensityMask.restore()
            self._intensityMask = None


#
# Test
#


class CoronaryCalciumDINOTest(ScriptedLoadableModuleTest):
    """The phantom scenario inside Slicer: compute, check, edit, rescore, compute again."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self, **kwargs):
        """Run the self-test. Without the phantom data it is skipped: logged and shown as
        skipped, not raised (Reload and Test would report any exception as a failure)."""
        import unittest

        self.setUp()
        try:
            self.test_compute_edit_rescore()
        except unittest.SkipTest as exc:
            logging.warning(f"CoronaryCalciumDINO self-test skipped: {exc}")
            self.delayDisplay(f"Self-test skipped: {exc}")

    def _phantomPath(self):
        """The phantom series of the source tree (searched upwards from this file and the
        working folder), or the folder in the CCDINO_TEST_DATA environment variable."""
        import unittest
        from pathlib import Path

        candidates = [Path(os.environ["CCDINO_TEST_DATA"])] if os.environ.get("CCDINO_TEST_DATA") else []
        for start in (Path(__file__).resolve().parent, Path.cwd()):
            candidates += [p / "Testing" / "Data" for p in (start, *start.parents)]
        for data in candidates:
            if (data / "qrm-phantom-canon").is_dir():
                return str(data / "qrm-phantom-canon")
        raise unittest.SkipTest("phantom data not found; set CCDINO_TEST_DATA to the Testing/Data folder")

    def test_compute_edit_rescore(self):
        import numpy as np

        lib = _lib()
        self.delayDisplay("Loading the phantom")
        ct = lib.io.load_ct(self._phantomPath())
        volume = lib.scene.volume.ct_to_volume_node(slicer.mrmlScene, ct, "phantom")
        params = lib.scene.logic.scoring_params_for(volume, None)  # what compute uses (kVp of the CT)

        # Known labels: every voxel >= 130 HU, artery by image quadrant.
        z, y, x = ct.shape
        quadrant = np.zeros((y, x), np.uint8)
        quadrant[: y // 2, : x // 2], quadrant[: y // 2, x // 2:] = 1, 2
        quadrant[y // 2:, : x // 2], quadrant[y // 2:, x // 2:] = 3, 4
        labels = np.where(ct.hu >= 130, quadrant[None], 0).astype(np.uint8)

        class Known:
            def __init__(self, ct, labels):
                self.labels = labels
                self.score = lib.scoring.score(ct.hu, labels, ct.spacing, params)
                self.slice_probabilities = np.zeros(ct.shape[0], np.float32)
                self.selected = np.zeros(ct.shape[0], bool)
                self.attention = None

        logic = CoronaryCalciumDINOLogic()
        segmentFn = None
        import CoronaryCalciumDINOLib.models.bundle

        bundleDir = CoronaryCalciumDINOLib.models.bundle.default_bundle_dir()
        if not ((bundleDir / "manifest.json").is_file() and not logic.missingPackages()):
            segmentFn = lambda c: Known(c, labels)  # noqa: E731
        self.delayDisplay("Compute")
        outcome = logic.compute(volume, device="cpu", attention=False, segmentFn=segmentFn)
        seg = outcome.segmentation_node
        names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, list(lib.constants.ARTERIES))
        aiLabels = np.asarray(outcome.pipeline_result.labels)
        expected = lib.scoring.score(ct.hu, aiLabels, ct.spacing, params)
        report = lib.scene.table.report_from_table(outcome.score_table_node)
        self.assertAlmostEqual(report["total"]["agatston"], expected.total.agatston, places=9)

        # Edit the first artery segment holding calcium (LM with the known quadrant labels).
        present = [a for a in lib.constants.ARTERIES if (aiLabels == lib.constants.ARTERY_TO_LABEL[a]).any()]
        self.assertTrue(present, "no calcium segmented on the phantom")
        artery = present[0]
        self.delayDisplay(f"Edit {artery} (keep only its first slice) and check the automatic rescoring")
        mask = aiLabels == lib.constants.ARTERY_TO_LABEL[artery]
        edited = np.zeros_like(mask)
        first = int(np.flatnonzero(mask.any(axis=(1, 2)))[0])
        edited[first] = mask[first]
        if np.array_equal(edited, mask):  # all on one slice: keep half of it instead
            edited[first] = False
            voxels = np.argwhere(mask)
            edited[tuple(voxels[: max(1, len(voxels) // 2)].T)] = True
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), seg, artery, volume)
        logic.flushEditChecks()  # the panel waits for a pause in editing; the test does not
        self.assertIn(artery, lib.scene.edits.edited_segments(seg))
        editedLabels = np.where(mask & ~edited, 0, aiLabels)
        expectedEdit = lib.scoring.score(ct.hu, editedLabels, ct.spacing, params)
        report = lib.scene.table.report_from_table(outcome.score_table_node)
        self.assertAlmostEqual(report["total"]["agatston"], expectedEdit.total.agatston, places=9)

        self.delayDisplay(f"Compute again keeps the edited {artery}")
        again = logic.compute(volume, device="cpu", attention=False, segmentFn=segmentFn)
        self.assertEqual(again.kept, [artery])
        segmentNow = slicer.util.arrayFromSegmentBinaryLabelmap(seg, artery, volume) > 0
        self.assertTrue(np.array_equal(segmentNow, edited))
        logic.closeSessions()
        self.delayDisplay("Test passed")
