"""Reconstruct 3D: a 3D MRI volume from one or a few 2D slices, in 3D Slicer (the XDiffusion extension); and
'Upsample to isotropic' for a thick-slice stack (every slice an input, `xdiffusion upsample`).

The only module file at the top of the module folder (Slicer loads each one there as a module): the Module, Widget,
Logic and Test. Everything below the widgets lives in the `XDiffusionModuleLib` subpackage, which needs neither Qt nor
the `xdiffusion` library, and is tested outside Slicer against slicer-core. The library runs only in child
processes, through its CLI.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from XDiffusionModuleLib import bundle, cli, dependencies, grid, tumour, views
from XDiffusionModuleLib.childprocess import python_command
from XDiffusionModuleLib.jobs import CANCELLED, CANCELLING, DONE
from XDiffusionModuleLib.runs import (CompareRequest, ComparisonRun, ModelInfoQuery, ReconstructionRun, RunRequest,
                                      UpsampleRequest, UpsampleRun, model_key)
from XDiffusionModuleLib.scene import GENERATED_ATTRIBUTE, GENERATED_NOTE, NO_TUMOUR_LABELS, uncertainty_caption

MODULE_DIR = pathlib.Path(__file__).resolve().parent
SAMPLE_NAMES = ("XDiffusionSampleT1", "XDiffusionSampleT1Labels")
# parameters whose widget is wired by hand, not by the parameterNodeWrapper: the slice slider's maximum depends on
# the input volume and plane, and the wrapper only binds a slider with fixed bounds
HAND_WIRED_PARAMETERS = {"sliceIndex": "sliceIndexSlider"}


class XDiffusion(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Reconstruct 3D (XDiffusion)")
        self.parent.categories = [_("Neuroimaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["XDiffusion contributors"]
        self.parent.helpText = _(
            "Reconstructs a 3D MRI volume, an uncertainty map and, where the model segments tumours, BraTS tumour "
            "labels from one or a few 2D slices with a cross-sectional diffusion model. <b>Research tool: every output "
            "is generated, not measured, and must not be used for diagnosis.</b> See the "
            '<a href="https://github.com/xdiffusion/xdiffusion/blob/main/docs/slicer.md">user guide</a>.')
        self.parent.acknowledgementText = _(
            "The model follows X-Diffusion (cross-sectional diffusion for MRI volumes). The module's structure follows "
            "Slicer's scripted-module template, its process handling SlicerMONAIAuto3DSeg and its dependency "
            "installation SlicerTotalSegmentator.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The shipped T1 volume and its BraTS labels, in the Sample Data module (local files: nothing is downloaded)."""
    import SampleData

    files = bundle.sample_data_files(MODULE_DIR)
    if files is None:
        logging.warning("XDiffusion: sample data files are missing from this installation; not registering them")
        return
    icon = str(MODULE_DIR / "Resources" / "Icons" / "XDiffusion.png")
    for name, path, labelmap in ((SAMPLE_NAMES[0], files[0], False), (SAMPLE_NAMES[1], files[1], True)):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="XDiffusion", sampleName=name, thumbnailFileName=icon, uris=path.as_uri(), fileNames=path.name,
            nodeNames=name, loadFileType="VolumeFile", loadFileProperties={"labelmap": labelmap})


@parameterNodeWrapper
class XDiffusionParameterNode:
    """Everything the panel shows, in one typed parameter node (saved with the scene)."""

    inputVolume: vtkMRMLScalarVolumeNode
    plane: Annotated[str, Choice(["axial", "coronal", "sagittal"])] = "axial"
    sliceIndex: Annotated[int, Minimum(0)] = 0
    slicePosition: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    inputSegmentation: vtkMRMLSegmentationNode  # the tumour drawn on the input slice(s): tapered into 3D labels
    followSliceView: bool = True
    inputSliceCount: Annotated[int, WithinRange(1, 4)] = 1
    sliceSpread: Annotated[str, Choice(["even", "neighbours"])] = "even"
    quality: Annotated[str, Choice(["fast", "balanced", "best"])] = "balanced"
    device: Annotated[str, Choice(["auto", "gpu", "cpu"])] = "auto"
    modelSource: Annotated[str, Choice(["bundled", "folder"])] = "bundled"
    modelFolder: pathlib.Path
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputUncertainty: vtkMRMLScalarVolumeNode
    groundTruthVolume: vtkMRMLScalarVolumeNode
    groundTruthLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]


class XDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and polls the module's jobs from one QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[XDiffusionLogic] = None
        self._parameterNode: Optional[XDiffusionParameterNode] = None
        self._parameterNodeGuiTag = None
        self.follower: Optional[views.SliceViewFollower] = None
        self.run: Optional[Union[ReconstructionRun, UpsampleRun]] = None  # one run at a time, either kind
        self.comparison: Optional[ComparisonRun] = None
        self.install: Optional[dependencies.InstallJob] = None
        self.modelQuery: Optional[ModelInfoQuery] = None
        self._deviceQueried = False
        self._dependenciesReady = False
        self._unreadModelCards: set = set()  # models whose card could not be read: not asked again
        self._updatingSlider = False
        self.timer = qt.QTimer()
        self.timer.setInterval(200)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XDiffusionLogic()
        self.follower = views.SliceViewFollower(slicer.mrmlScene, self.onSliceViewMoved)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.upsampleButton.connect("clicked(bool)", self.onUpsampleButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.useCurrentSliceButton.connect("clicked(bool)", self.onUseCurrentSlice)
        self.ui.drawInputTumourButton.connect("clicked(bool)", self.onDrawInputTumour)
        self.ui.sliceIndexSlider.connect("valueChanged(double)", self.onSliceSliderMoved)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.showUncertaintyButton.connect("clicked(bool)", self.onShowUncertainty)
        self.ui.volumeRenderingButton.connect("clicked(bool)", self.onVolumeRendering)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.timer.connect("timeout()", self.onPoll)
        for widget in (self.ui.progressBar, self.ui.showLogButton, self.ui.warningsLabel, self.ui.installDependenciesButton):
            widget.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        for job in (self.run, self.comparison, self.install, self.modelQuery):
            if job is not None:
                job.abandon()  # the process tree is killed at once, without waiting; temporary files removed
        self.timer.stop()
        if self.follower is not None:
            self.follower.detach()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.follower.attach()
        self.refreshDependencies()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self.follower.detach()  # no more slice-view observers: nothing rewrites the parameter node elsewhere

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)  # the running jobs cancel themselves on the same event

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[XDiffusionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    # --- the panel follows the parameter node ---------------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        volume = parameters.inputVolume if parameters else None
        single = grid.is_single_slice(volume)
        self.follower.volume_node = volume
        self.follower.enabled = bool(parameters and parameters.followSliceView)
        for widget in (self.ui.planeComboBox, self.ui.sliceIndexSlider, self.ui.useCurrentSliceButton,
                       self.ui.followSliceViewCheckBox, self.ui.inputSliceCountSpinBox, self.ui.sliceSpreadComboBox):
            widget.enabled = not single
        self.ui.slicePositionSliderWidget.setVisible(single)
        self.ui.slicePositionLabel.setVisible(single)
        if single:
            self.ui.inputKindLabel.text = _("A single 2D slice ({plane}): the volume is built around it; choose where "
                                            "it sits in the output's depth.").format(plane=grid.plane_of_single_slice(volume))
        else:
            self.ui.inputKindLabel.text = ""
        self._updateSliceSlider()
        self.ui.modelFolderPathLineEdit.enabled = bool(parameters and parameters.modelSource == "folder")
        if self._dependenciesReady:
            self._queryModelCard()
        self._updateModelCardLabel()
        self._updateRunGui()
        self.ui.compareButton.enabled = bool(parameters and parameters.groundTruthVolume and parameters.outputVolume
                                             and not (self.comparison and self.comparison.active))

    def _updateSliceSlider(self) -> None:
        """The hand-wired slider: its range follows the volume and plane, its value the parameter node."""
        parameters = self._parameterNode
        self._updatingSlider = True
        try:
            slider = self.ui.sliceIndexSlider
            volume = parameters.inputVolume if parameters else None
            if volume is None or volume.GetImageData() is None or grid.is_single_slice(volume):
                slider.enabled = False
                return
            try:
                slider.maximum = grid.slice_count(volume, parameters.plane) - 1
                slider.toolTip = _("Raw 0-based index of the input slice along the plane's axis.")
            except ValueError as error:  # the plane is ambiguous on this oblique grid
                slider.enabled = False
                slider.toolTip = str(error)
                return
            slider.value = min(parameters.sliceIndex, slider.maximum)
        finally:
            self._updatingSlider = False

    def _updateRunGui(self) -> None:
        parameters = self._parameterNode
        run = self.run
        running = run is not None and run.active
        upsampling = running and isinstance(run, UpsampleRun)
        idle = not running and not (self.install and self.install.active)
        self.ui.applyButton.text = _("Cancel") if running and not upsampling else _("Reconstruct 3D")
        self.ui.applyButton.enabled = (running and not upsampling and run.state != CANCELLING) or (
            idle and bool(parameters and parameters.inputVolume))
        thick = bool(parameters and grid.is_thick_stack(parameters.inputVolume))
        self.ui.upsampleButton.text = _("Cancel") if upsampling else _("Upsample to isotropic")
        self.ui.upsampleButton.enabled = (upsampling and run.state != CANCELLING) or (idle and thick)
        self.ui.upsampleButton.toolTip = _(
            "Every thick slice is an input: an isotropic volume at the in-plane spacing, on a new grid spanning the "
            "slabs (xdiffusion upsample).") if thick else _(
            "For a thick-slice stack: slice spacing more than {ratio}x the in-plane spacing.").format(ratio=grid.NEAR_ISOTROPIC_RATIO)
        self.ui.progressBar.setVisible(running)

    # --- slice views <-> slice index ------------------------------------------------------------------------------

    def onSliceViewMoved(self, plane: str, index: int) -> None:
        """A slice view moved while 'follow' is on: its plane and slice become the input's."""
        parameters = self._parameterNode
        if parameters is None or (parameters.plane == plane and parameters.sliceIndex == index):
            return
        with slicer.util.NodeModify(parameters):
            parameters.plane = plane
            parameters.sliceIndex = index

    def onSliceSliderMoved(self, value: float) -> None:
        if self._updatingSlider or self._parameterNode is None:
            return
        index = int(round(value))
        self._parameterNode.sliceIndex = index
        if self._parameterNode.followSliceView:
            self.follower.show_slice(self._parameterNode.plane, index)

    def onDrawInputTumour(self) -> None:
        """The Segment Editor on the input volume and the input segmentation (a new one with the BraTS segments)."""
        parameters = self._parameterNode
        if not parameters or not parameters.inputVolume:
            return
        if not parameters.inputSegmentation:
            parameters.inputSegmentation = tumour.new_input_segmentation(slicer.mrmlScene, parameters.inputVolume)
        segmentation, volume = parameters.inputSegmentation, parameters.inputVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)

    def onUseCurrentSlice(self) -> None:
        parameters = self._parameterNode
        if not parameters or not parameters.inputVolume:
            return
        index = self.follower.current(parameters.plane)
        if index is None:
            slicer.util.warningDisplay(_("No slice view shows the {plane} plane.").format(plane=parameters.plane))
            return
        parameters.sliceIndex = index

    # --- dependencies and device ----------------------------------------------------------------------------------

    def refreshDependencies(self) -> Optional[dependencies.Report]:
        try:
            report = self.logic.checkDependencies()
        except Exception as error:
            self.ui.dependenciesLabel.text = str(error)
            return None
        self._dependenciesReady = report.ready
        self.ui.dependenciesLabel.text = report.summary()
        if report.torch_needed:
            self.ui.deviceLabel.text = _("PyTorch is not installed yet: click Install dependencies.")
        self.ui.installDependenciesButton.setVisible(not report.ready)
        self.ui.installDependenciesButton.enabled = not (self.install and self.install.active)
        if report.ready and not self._deviceQueried:
            self.detectDevice()
        if report.ready:
            self._queryModelCard()
        return report

    def onInstallDependencies(self) -> None:
        def showStatus(text):
            self.ui.dependenciesLabel.text = text
            slicer.app.processEvents()

        with slicer.util.tryWithErrorDisplay(_("The installation failed."), waitCursor=False):
            self.install = self.logic.installDependencies(askConfirmation=True, showStatus=showStatus)
            if self.install is not None and self.install.active:
                self.ui.installDependenciesButton.enabled = False
                self.timer.start()
            else:
                self._onInstallEnded()

    def _onInstallEnded(self) -> None:
        self._unreadModelCards.clear()  # a new library may read them
        job = self.install
        if job is not None and job.state not in (DONE,):
            self.ui.dependenciesLabel.text = job.error or job.status
            return
        if self.logic.restartNeeded():
            if slicer.util.confirmOkCancelDisplay(_("XDiffusion's Python packages were updated while an older version was "
                                                    "loaded. Restart Slicer now to use them?")):
                slicer.util.restart()
        self._deviceQueried = False
        self.refreshDependencies()  # also names the device again: the new torch may see the GPU

    def detectDevice(self) -> None:
        """Name the GPU (or say why there is none) without blocking the GUI: a thread asks a child interpreter."""
        self._deviceQueried = True
        self.ui.deviceLabel.text = _("Detecting the compute device…")
        found: dict = {}
        threading.Thread(target=lambda: found.update(dependencies.detect_compute_device(python_command())), daemon=True).start()

        def show():
            if not found:
                qt.QTimer.singleShot(500, show)
                return
            self.ui.deviceLabel.text = found["note"]

        qt.QTimer.singleShot(500, show)

    def _queryModelCard(self) -> None:
        parameters = self._parameterNode
        if parameters is None or (self.modelQuery and self.modelQuery.active):
            return
        try:
            modelDir = self.logic.modelDirectory(parameters)
        except ValueError:
            return
        if model_key(modelDir) in self.logic.modelCards or model_key(modelDir) in self._unreadModelCards:
            return
        self.modelQuery = self.logic.queryModelCard(modelDir)
        self.timer.start()

    def _updateModelCardLabel(self) -> None:
        parameters = self._parameterNode
        try:
            card = self.logic.modelCards.get(model_key(self.logic.modelDirectory(parameters))) if parameters else None
        except ValueError:
            card = None
        segments = (card or {}).get("segments_tumours")  # None: not read yet, or a card that predates the field
        drawn = bool(parameters) and bool(parameters.inputSegmentation)
        self.ui.outputSegmentationSelector.enabled = segments is not False or drawn
        noLabels = segments is False and not drawn
        self.ui.tumourLabelsNoteLabel.text = NO_TUMOUR_LABELS if noLabels else ""
        self.ui.tumourLabelsNoteLabel.setVisible(noLabels)
        self.ui.showUncertaintyButton.toolTip = uncertainty_caption(card)
        self.ui.uncertaintyNoteLabel.text = uncertainty_caption(card) if card else ""
        self.ui.inputSegmentationSelector.toolTip = _(
            "Optional: the tumour drawn on the input slice(s). Every method turns it into 3D tumour labels, your "
            "outline tapered away from its slice (a shape prior, not read from the image); a label-conditioned model "
            "also draws the tumour into the image from it. Segments named necrotic/NCR/1, oedema/edema/ED/2 and "
            "enhancing/ET/3 become BraTS labels 1, 2, 3; other segments take the labels left, in order.")

    # --- reconstruction --------------------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.run is not None and self.run.active:
            self.run.cancel()  # returns at once: "Cancelling…" until the process tree is gone
            self.ui.statusLabel.text = self.run.status
            self._updateRunGui()
            return
        self._startRun(self.logic.startReconstruction, _("Could not start the reconstruction."))

    def onUpsampleButton(self) -> None:
        if self.run is not None and self.run.active:
            if isinstance(self.run, UpsampleRun):
                self.run.cancel()
                self.ui.statusLabel.text = self.run.status
            self._updateRunGui()
            return
        self._startRun(self.logic.startUpsampling, _("Could not start the upsampling."))

    def _startRun(self, start, failure: str) -> None:
        """Start a child-process run (reconstruction or upsampling) once the dependencies are ready."""
        self.ui.errorLabel.text = ""
        self.ui.warningsLabel.setVisible(False)
        self.ui.showLogButton.setVisible(False)
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=False):
            report = self.refreshDependencies()
            if report is None or not report.ready:
                self.ui.statusLabel.text = _("Install the dependencies first (Install dependencies, above).")
                return
            self.run = start(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self.run.status
            self.timer.start()
        self._updateRunGui()

    def onPoll(self) -> None:
        for job, ended in ((self.run, self._onRunEnded), (self.comparison, self._onComparisonEnded),
                           (self.install, self._onInstallEnded), (self.modelQuery, self._onModelQueryEnded)):
            if job is None or not job.active:
                continue
            job.poll()
            if job is self.run and job.active:
                self.ui.progressBar.value = int(round((job.fraction or 0.0) * 100))
                self.ui.statusLabel.text = job.status
                self._showWarnings(job.warnings)
            if job is self.install and job.active:
                self.ui.dependenciesLabel.text = job.status
            if not job.active:
                ended()
        if not any(job is not None and job.active for job in (self.run, self.comparison, self.install, self.modelQuery)):
            self.timer.stop()
        self._updateRunGui()

    def _showWarnings(self, warnings) -> None:
        self.ui.warningsLabel.text = _("Warnings: ") + " ".join(warnings) if warnings else ""
        self.ui.warningsLabel.setVisible(bool(warnings))

    def _onRunEnded(self) -> None:
        run = self.run
        self.ui.statusLabel.text = run.status
        self._showWarnings(run.warnings)
        if run.state == DONE:
            if self._parameterNode is not None and isinstance(run, ReconstructionRun):
                self.logic.keepOutputs(run, self._parameterNode)
                if run.table is not None:  # the reconstructed tumour's volumes
                    self.ui.metricsTableView.setMRMLTableNode(run.table)
            self.logic.showResults(run.outputs)
        elif run.state != CANCELLED:
            self.ui.statusLabel.text = ""
            self.ui.errorLabel.text = run.error
            self.ui.showLogButton.setVisible(bool(run.log))
        self._updateModelCardLabel()

    def _onModelQueryEnded(self) -> None:
        query = self.modelQuery
        if query.state == DONE:
            self.logic.modelCards[model_key(query.model_dir)] = query.info
        else:
            self._unreadModelCards.add(model_key(query.model_dir))
            logging.warning("XDiffusion: could not read the model card: %s", query.error)
        self._updateModelCardLabel()

    def onShowLog(self) -> None:
        if self.run is not None:
            slicer.util.infoDisplay(self.ui.errorLabel.text, windowTitle=_("XDiffusion log"), detailedText=self.run.log_text)

    # --- results ---------------------------------------------------------------------------------------------------

    def onShowUncertainty(self) -> None:
        parameters = self._parameterNode
        if parameters.outputVolume and parameters.outputUncertainty:
            views.show_uncertainty_overlay(slicer.mrmlScene, parameters.outputVolume, parameters.outputUncertainty)

    def onVolumeRendering(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Volume rendering failed."), waitCursor=True):
            self.logic.showVolumeRendering(self._parameterNode)

    def onCompare(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The comparison failed."), waitCursor=False):
            self.comparison = self.logic.startComparison(self._parameterNode)
            self.ui.compareStatusLabel.text = self.comparison.status
            self.ui.compareButton.enabled = False
            self.timer.start()

    def _onComparisonEnded(self) -> None:
        comparison = self.comparison
        if comparison.state == DONE:
            self.ui.metricsTableView.setMRMLTableNode(comparison.table)
            self.ui.compareStatusLabel.text = comparison.status
        else:
            self.ui.compareStatusLabel.text = comparison.error or comparison.status
        self._onParameterNodeModified()


class XDiffusionLogic(ScriptedLoadableModuleLogic):
    """The module's work, usable from Slicer's Python console without the panel: jobs that take and make nodes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.modelCards: dict = {}  # model -> its card summary (`xdiffusion model-info --json`), read once
        self._installer: Optional[dependencies.Installer] = None

    def getParameterNode(self) -> XDiffusionParameterNode:
        return XDiffusionParameterNode(super().getParameterNode())

    @staticmethod
    def cliPrefix() -> list[str]:
        return cli.cli_command(python_command())

    @staticmethod
    def temporaryFolder() -> str:
        return slicer.app.temporaryPath

    # dependencies
    @staticmethod
    def bundledLibrary() -> pathlib.Path:
        folder = bundle.library_folder(MODULE_DIR)
        if folder is None:
            raise RuntimeError(_("The XDiffusionLib folder is missing from this installation ({folder}); reinstall the "
                                 "extension.").format(folder=MODULE_DIR))
        return folder

    @property
    def installer(self) -> dependencies.Installer:
        if self._installer is None:
            self._installer = dependencies.Installer(self.bundledLibrary(), python_command(), self.temporaryFolder())
        return self._installer

    def checkDependencies(self) -> dependencies.Report:
        return self.installer.check()

    def installDependencies(self, askConfirmation: bool = True, showStatus=logging.info) -> Optional[dependencies.InstallJob]:
        """Torch through PyTorchUtils (blocking: its own dialog and log), then a job that runs pip in child processes
        (the panel polls it). Returns None when nothing is left to install or the user declined."""

        def confirm(report: dependencies.Report) -> bool:
            return not askConfirmation or slicer.util.confirmOkCancelDisplay(
                _("XDiffusion needs these Python packages in Slicer's Python (once; a few minutes). The model weights ship "
                  "with the extension: nothing is downloaded from a model hub."), windowTitle=_("Install XDiffusion"),
                detailedText="\n".join(check.describe() for check in report.missing))

        def installTorch(requirement: str) -> bool:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(_("XDiffusion needs the PyTorch extension. Install 'PyTorch' from the Extensions "
                                     "Manager, restart Slicer, then try again.")) from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                                  torchVersionRequirement=requirement)
            return torch is not None

        return self.installer.start(confirm, installTorch, showStatus)

    def restartNeeded(self) -> bool:
        return self.installer.restart_needed()

    # model
    def modelDirectory(self, parameters: XDiffusionParameterNode) -> Optional[str]:
        if parameters.modelSource == "bundled":
            return None
        folder = pathlib.Path(parameters.modelFolder)
        if not (folder / "model_index.json").is_file():
            raise ValueError(_("{folder} is not an XDiffusion model folder (it has no model_index.json).").format(folder=folder))
        return str(folder)

    def queryModelCard(self, modelDir: Optional[str]) -> ModelInfoQuery:
        return ModelInfoQuery(self.cliPrefix(), modelDir).start()

    # reconstruction
    def startReconstruction(self, parameters: XDiffusionParameterNode, method: str = "xdiffusion") -> ReconstructionRun:
        """Freeze the parameters into a request, write the input and start the CLI; returns at once."""
        labels = parameters.inputSegmentation
        request = RunRequest.from_parameters(parameters, self.modelDirectory(parameters), method, labels.GetID() if labels else None)
        logging.info("XDiffusion: reconstructing from %s", request.describe())
        return ReconstructionRun(slicer.mrmlScene, request, self.cliPrefix(), self.modelCards, self.temporaryFolder()).start()

    @staticmethod
    def keepOutputs(run: ReconstructionRun, parameters: XDiffusionParameterNode) -> None:
        """The run's output nodes become the panel's selection (the next run overwrites them unless changed)."""
        with slicer.util.NodeModify(parameters):
            parameters.outputVolume = run.outputs.get("image")
            if "segmentation" in run.outputs:
                parameters.outputSegmentation = run.outputs["segmentation"]
            if "uncertainty" in run.outputs:
                parameters.outputUncertainty = run.outputs["uncertainty"]

    def reconstruct(self, parameters: XDiffusionParameterNode, method: str = "xdiffusion",
                    timeout: Optional[float] = None) -> dict:
        """Blocking run, for scripts and the self-test."""
        run = self.startReconstruction(parameters, method)
        if run.wait(timeout) != DONE:
            raise RuntimeError(run.error or run.status)
        self.keepOutputs(run, parameters)
        return run.outputs

    # upsampling
    def startUpsampling(self, parameters: XDiffusionParameterNode, method: Optional[str] = None) -> UpsampleRun:
        """`xdiffusion upsample` of the thick-slice input (``method`` None: the library's default); returns at once.
        The result is a new node on its own isotropic grid."""
        modelDir = self.modelDirectory(parameters) if method == "xdiffusion" else None
        request = UpsampleRequest.from_parameters(parameters, modelDir, method)
        logging.info("XDiffusion: upsampling %s to isotropic", parameters.inputVolume.GetName())
        return UpsampleRun(slicer.mrmlScene, request, self.cliPrefix(), self.temporaryFolder()).start()

    def upsample(self, parameters: XDiffusionParameterNode, method: Optional[str] = None, timeout: Optional[float] = None):
        """Blocking upsampling, for scripts: the new volume node."""
        run = self.startUpsampling(parameters, method)
        if run.wait(timeout) != DONE:
            raise RuntimeError(run.error or run.status)
        return run.outputs["image"]

    @staticmethod
    def showResults(outputs: dict) -> None:
        slicer.util.setSliceViewerLayers(background=outputs["image"], foreground=None, fit=True)
        if "segmentation" in outputs:
            outputs["segmentation"].GetDisplayNode().SetVisibility(True)

    @staticmethod
    def showVolumeRendering(parameters: XDiffusionParameterNode):
        if not parameters.outputVolume:
            raise ValueError(_("Run a reconstruction first."))
        display = views.show_volume_rendering(slicer.modules.volumerendering.logic(), parameters.outputVolume)
        if parameters.outputSegmentation:  # the tumour as closed surfaces inside a see-through head
            views.show_tumour_in_rendering(display, parameters.outputSegmentation)
        slicer.app.layoutManager().threeDWidget(0).threeDView().resetFocalPoint()
        return display

    # comparison
    def startComparison(self, parameters: XDiffusionParameterNode) -> ComparisonRun:
        """Side-by-side linked views at once; the metrics from `xdiffusion evaluate` in a child process."""
        reference, prediction = parameters.groundTruthVolume, parameters.outputVolume
        if not (reference and prediction):
            raise ValueError(_("Select a ground-truth volume and run a reconstruction first."))
        plane = parameters.plane if not grid.is_single_slice(parameters.inputVolume) else grid.plane_of_single_slice(parameters.inputVolume)
        logics = slicer.app.applicationLogic().GetSliceLogics()
        views.show_side_by_side(slicer.mrmlScene, reference, prediction, plane,
                                [logics.GetItemAsObject(i) for i in range(logics.GetNumberOfItems())])
        try:
            segments = self.modelCards.get(model_key(self.modelDirectory(parameters)), {}).get("segments_tumours")
        except ValueError:
            segments = None
        request = CompareRequest(reference.GetID(), prediction.GetID(),
                                 parameters.groundTruthLabels.GetID() if parameters.groundTruthLabels else None,
                                 parameters.outputSegmentation.GetID() if parameters.outputSegmentation else None,
                                 parameters.outputUncertainty.GetID() if parameters.outputUncertainty else None, segments)
        return ComparisonRun(slicer.mrmlScene, request, self.cliPrefix(), self.temporaryFolder()).start()

    def compare(self, parameters: XDiffusionParameterNode, timeout: Optional[float] = None):
        comparison = self.startComparison(parameters)
        if comparison.wait(timeout) != DONE:
            raise RuntimeError(comparison.error or comparison.status)
        return comparison.table


class XDiffusionTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Reload and Test): the sample through the bundled model, then compare and 3D."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReconstructSample()
        self.setUp()
        self.test_UpsampleThickStack()

    def test_ReconstructSample(self):
        if bundle.sample_data_files(MODULE_DIR) is None:
            self.skipTest("the sample data files are not in this installation")
        import SampleData

        registerSampleData()
        self.delayDisplay("Loading the sample")
        volume = SampleData.downloadSample(SAMPLE_NAMES[0])
        labels = SampleData.downloadSample(SAMPLE_NAMES[1])
        logic = XDiffusionLogic()
        report = logic.checkDependencies()
        if not report.ready:
            self.skipTest(f"XDiffusion's Python packages are not installed: {report.summary()}")
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.plane = "axial"
        parameters.sliceIndex = grid.slice_count(volume, "axial") // 2
        parameters.quality = "fast"
        self.delayDisplay("Reconstructing (fast quality)")
        outputs = logic.reconstruct(parameters, timeout=3600)

        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(inputMatrix)
        outputs["image"].GetIJKToRASMatrix(outputMatrix)
        self.assertEqual([inputMatrix.GetElement(r, c) for r in range(4) for c in range(4)],
                         [outputMatrix.GetElement(r, c) for r in range(4) for c in range(4)])
        self.assertIn("(generated)", outputs["image"].GetName())
        self.assertEqual(outputs["image"].GetAttribute(GENERATED_ATTRIBUTE), "true")
        self.assertIn(GENERATED_NOTE, outputs["image"].GetDescription())
        segments = logic.modelCards[model_key(None)].get("segments_tumours")
        self.assertEqual("segmentation" in outputs, segments is not False)
        self.assertGreaterEqual(slicer.util.arrayFromVolume(outputs["uncertainty"]).min(), 0.0)

        parameters.groundTruthVolume = volume
        parameters.groundTruthLabels = labels
        table = logic.compare(parameters, timeout=600)
        self.assertGreater(table.GetNumberOfRows(), 5)
        self.assertIsNotNone(logic.showVolumeRendering(parameters))
        self.delayDisplay("Test passed")

    def test_UpsampleThickStack(self):
        """A thick-slice stack (slab means of the sample's axial slices, 5 at a time) upsampled to isotropic."""
        if bundle.sample_data_files(MODULE_DIR) is None:
            self.skipTest("the sample data files are not in this installation")
        import numpy as np
        import SampleData

        registerSampleData()
        logic = XDiffusionLogic()
        if not logic.checkDependencies().ready:
            self.skipTest("XDiffusion's Python packages are not installed")
        volume = SampleData.downloadSample(SAMPLE_NAMES[0])
        fine = slicer.util.arrayFromVolume(volume).astype(np.float32)  # (k, j, i)
        slabs = fine.shape[0] // 5
        thick = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Thick stack")
        slicer.util.updateVolumeFromArray(thick, fine[:slabs * 5].reshape(slabs, 5, *fine.shape[1:]).mean(axis=1))
        spacing = list(volume.GetSpacing())
        thick.SetSpacing(spacing[0], spacing[1], spacing[2] * 5)
        thick.SetOrigin(volume.GetOrigin())
        thick.CreateDefaultDisplayNodes()
        self.assertTrue(grid.is_thick_stack(thick))
        parameters = logic.getParameterNode()
        parameters.inputVolume = thick
        self.delayDisplay("Upsampling to isotropic")
        output = logic.upsample(parameters, timeout=600)
        self.assertIn("isotropic (generated)", output.GetName())
        self.assertEqual(output.GetAttribute(GENERATED_ATTRIBUTE), "true")
        self.assertAlmostEqual(output.GetSpacing()[2], spacing[0], places=4)
        self.assertEqual(output.GetImageData().GetDimensions()[2], int(round(slabs * spacing[2] * 5 / spacing[0])))
        self.delayDisplay("Test passed")

