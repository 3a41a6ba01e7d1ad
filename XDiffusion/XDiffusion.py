"""Reconstruct 3D: a 3D MRI volume from one or a few 2D slices, in 3D Slicer (the XDiffusion extension).

The Widget only binds the GUI and polls the child process; the Logic prepares and loads; scene work lives in
XDiffusionSceneLogic.py and process handling in XDiffusionProcess.py (both Qt-free and tested outside Slicer).
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
import shutil
import tempfile
import threading
import time
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from XDiffusionProcess import (INPUT_NAME, ReconstructionProcess, build_reconstruct_arguments, detect_compute_device,
                               format_eta, python_command)
from XDiffusionSceneLogic import (GENERATED_NOTE, XDiffusionSceneLogic, choose_slice_indices, plane_of_slice_view,
                                  sample_data_files, slice_count, slice_index_at)

MODULE_DIR = pathlib.Path(__file__).resolve().parent
MINIMUM_TORCH = ">=2.1"
SAMPLE_NAMES = ("XDiffusionSampleT1", "XDiffusionSampleT1Labels")


class XDiffusion(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Reconstruct 3D (XDiffusion)")
        self.parent.categories = [_("Neuroimaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["XDiffusion contributors"]
        self.parent.helpText = _(
            "Reconstructs a 3D MRI volume, brain-tumour labels (BraTS) and an uncertainty map from one or a few 2D "
            "slices with a cross-sectional diffusion model. <b>Research tool: every output is generated, not measured, "
            "and must not be used for diagnosis.</b> See the "
            '<a href="https://github.com/xdiffusion/xdiffusion/blob/main/docs/slicer.md">user guide</a>.')
        self.parent.acknowledgementText = _(
            "The model follows X-Diffusion (cross-sectional diffusion for MRI volumes). The module's structure follows "
            "Slicer's scripted-module template.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The shipped T1 volume and its BraTS labels, in the Sample Data module (local files: nothing is downloaded)."""
    import SampleData

    files = sample_data_files(MODULE_DIR)
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
    groundTruthSegmentation: vtkMRMLLabelMapVolumeNode


class XDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and keeps the GUI responsive while the child process runs."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[XDiffusionLogic] = None
        self._parameterNode: Optional[XDiffusionParameterNode] = None
        self._parameterNodeGuiTag = None
        self._lastSliceNode = None
        self._deviceInfo: dict = {}
        self.process: Optional[ReconstructionProcess] = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XDiffusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.useCurrentSliceButton.connect("clicked(bool)", self.onUseCurrentSlice)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.showUncertaintyButton.connect("clicked(bool)", self.onShowUncertainty)
        self.ui.volumeRenderingButton.connect("clicked(bool)", self.onVolumeRendering)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.progressBar.setVisible(False)
        self.ui.showLogButton.setVisible(False)
        self.timer.connect("timeout()", self.onPoll)
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            self.addObserver(layoutManager.sliceWidget(name).mrmlSliceNode(), vtk.vtkCommand.ModifiedEvent, self.onSliceNodeModified)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.process is not None and not self.process.finished:
            self.process.cancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if not self._deviceInfo and self.logic.dependenciesInstalled():
            self.detectDevice()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

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

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        running = self.process is not None and not self.process.finished
        self.ui.applyButton.enabled = running or bool(parameters and parameters.inputVolume)
        self.ui.modelFolderPathLineEdit.enabled = bool(parameters and parameters.modelSource == "folder")
        if parameters and parameters.inputVolume and parameters.inputVolume.GetImageData():
            self.ui.sliceIndexSpinBox.maximum = slice_count(parameters.inputVolume, parameters.plane) - 1
        self.ui.compareButton.enabled = bool(parameters and parameters.groundTruthVolume and parameters.outputVolume)

    # slice views -> plane and slice index
    def onSliceNodeModified(self, sliceNode, event) -> None:
        """The slice view the user last used sets the plane; while 'follow' is on, its position sets the index."""
        plane = plane_of_slice_view(sliceNode.GetOrientation())
        if plane is None or self._parameterNode is None or self.process is not None:
            return
        self._lastSliceNode = sliceNode
        if self._parameterNode.followSliceView and self._parameterNode.inputVolume:
            self._setSliceFrom(sliceNode, plane)

    def onUseCurrentSlice(self) -> None:
        parameters = self._parameterNode
        if not parameters.inputVolume:
            return
        layoutManager = slicer.app.layoutManager()
        candidates = [self._lastSliceNode] + [layoutManager.sliceWidget(n).mrmlSliceNode() for n in layoutManager.sliceViewNames()]
        for sliceNode in candidates:
            if sliceNode is not None and plane_of_slice_view(sliceNode.GetOrientation()) == parameters.plane:
                self._setSliceFrom(sliceNode, parameters.plane)
                return
        slicer.util.warningDisplay(_("No slice view shows the {plane} plane.").format(plane=parameters.plane))

    def _setSliceFrom(self, sliceNode, plane: str) -> None:
        centre = [sliceNode.GetSliceToRAS().GetElement(row, 3) for row in range(3)]
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.plane = plane
            self._parameterNode.sliceIndex = slice_index_at(self._parameterNode.inputVolume, plane, centre)

    # device
    def detectDevice(self) -> None:
        """Name the GPU (or say why there is none) without blocking the GUI: a thread asks a child interpreter."""
        self.ui.deviceLabel.text = _("Detecting the compute device...")
        found: dict = {}
        threading.Thread(target=lambda: found.update(detect_compute_device(python_command())), daemon=True).start()

        def show():
            if not found:
                qt.QTimer.singleShot(500, show)
                return
            self._deviceInfo = found
            self.ui.deviceLabel.text = found["note"]

        qt.QTimer.singleShot(500, show)

    # reconstruction
    def onApplyButton(self) -> None:
        if self.process is not None and not self.process.finished:
            self.ui.statusLabel.text = _("Cancelling...")
            slicer.app.processEvents()
            self.process.cancel()
            self.onPoll()
            return
        self.ui.errorLabel.text = ""
        self.ui.showLogButton.setVisible(False)
        with slicer.util.tryWithErrorDisplay(_("Could not start the reconstruction."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                self.ui.statusLabel.text = _("The required Python packages are not installed; nothing was run.")
                return
            if not self._deviceInfo:
                self.detectDevice()
            self.process = self.logic.startReconstruction(self._parameterNode)
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Starting (loading the model)...")
            self.timer.start()

    def onPoll(self) -> None:
        process = self.process
        events = process.poll()
        elapsed = int(time.monotonic() - process.started_at)
        if events:
            latest = events[-1]
            self.ui.progressBar.value = int(round(latest.fraction * 100))
            self.ui.statusLabel.text = f"{latest.stage}: {format_eta(latest.eta_s)} ({elapsed} s so far)"
        if not process.finished:
            return
        self.timer.stop()
        self.ui.applyButton.text = _("Reconstruct 3D")
        self.ui.progressBar.setVisible(False)
        if process.returncode == 0:
            with slicer.util.tryWithErrorDisplay(_("The reconstruction finished but could not be loaded."), waitCursor=True):
                outputs = self.logic.finishReconstruction(process, self._parameterNode)
                self.logic.showResults(outputs)
                self.ui.statusLabel.text = _("Done in {seconds} s. {note}").format(seconds=elapsed, note=GENERATED_NOTE)
        else:
            process.cleanup()
            self.ui.statusLabel.text = ""
            self.ui.errorLabel.text = process.error_message()
            self.ui.showLogButton.setVisible(bool(process.log))
        self._onParameterNodeModified()

    def onShowLog(self) -> None:
        slicer.util.infoDisplay(self.ui.errorLabel.text, windowTitle=_("XDiffusion log"), detailedText=self.process.log_text)

    # results
    def onShowUncertainty(self) -> None:
        parameters = self._parameterNode
        if parameters.outputVolume and parameters.outputUncertainty:
            self.logic.scene.show_uncertainty_overlay(parameters.outputVolume, parameters.outputUncertainty)

    def onVolumeRendering(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Volume rendering failed."), waitCursor=True):
            self.logic.showVolumeRendering(self._parameterNode)

    def onCompare(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The comparison failed."), waitCursor=True):
            table = self.logic.compare(self._parameterNode)
            self.ui.metricsTableView.setMRMLTableNode(table)


class XDiffusionLogic(ScriptedLoadableModuleLogic):
    """The module's work, usable from Slicer's Python console without the GUI; scene work is delegated to
    `XDiffusionSceneLogic`, the child process to `ReconstructionProcess`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = XDiffusionSceneLogic(slicer.mrmlScene, slicer.modules.volumerendering.logic())

    def getParameterNode(self) -> XDiffusionParameterNode:
        return XDiffusionParameterNode(super().getParameterNode())

    # dependencies
    @staticmethod
    def bundledLibraryPath() -> pathlib.Path:
        """The XDiffusionLib folder the extension ships (beside this file when installed; the repository root in a
        source checkout)."""
        for folder in (MODULE_DIR / "XDiffusionLib", MODULE_DIR.parent / "XDiffusionLib"):
            if (folder / "pyproject.toml").is_file():
                return folder
        raise RuntimeError(f"The XDiffusionLib folder is missing from this installation ({MODULE_DIR}); reinstall the extension.")

    @staticmethod
    def dependenciesInstalled() -> bool:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "xdiffusion"))

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install, on first use and after confirmation, torch (through the PyTorch extension, which picks the build
        that matches the GPU driver) and then the bundled library. Returns False if the user declined."""
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(_("XDiffusion needs the PyTorch extension. Install 'PyTorch' from the Extensions "
                                     "Manager, restart Slicer, then try again.")) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=MINIMUM_TORCH)
                if torch is None:
                    return False
        if importlib.util.find_spec("xdiffusion") is None:
            library = self.bundledLibraryPath()
            message = _("XDiffusion needs its Python library (shipped with the extension) and a few packages from PyPI "
                        "(diffusers, SimpleITK, scikit-image, ...) in Slicer's Python. This is done once and takes a few "
                        "minutes. The model weights ship with the extension: nothing is downloaded from a model hub.\n\n"
                        "Install now?")
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(message, windowTitle=_("Install XDiffusion")):
                return False
            with slicer.util.WaitCursor():
                slicer.util.pip_install([str(library)])
            importlib.invalidate_caches()
            if importlib.util.find_spec("xdiffusion") is None:
                if slicer.util.confirmOkCancelDisplay(_("The installation finished but Slicer must restart to use it. Restart now?")):
                    slicer.util.restart()
                return False
        return True

    # reconstruction
    def sliceIndices(self, parameters: XDiffusionParameterNode) -> list[int]:
        length = slice_count(parameters.inputVolume, parameters.plane)
        return choose_slice_indices(length, parameters.sliceIndex, parameters.inputSliceCount, parameters.sliceSpread)

    def modelDirectory(self, parameters: XDiffusionParameterNode) -> Optional[str]:
        if parameters.modelSource == "bundled":
            return None
        folder = pathlib.Path(parameters.modelFolder)
        if not (folder / "model_index.json").is_file():
            raise ValueError(_("{folder} is not an XDiffusion model folder (it has no model_index.json).").format(folder=folder))
        return str(folder)

    def startReconstruction(self, parameters: XDiffusionParameterNode, method: str = "xdiffusion") -> ReconstructionProcess:
        """Write the input to a private temporary folder and start the CLI on it; returns at once."""
        if not parameters.inputVolume:
            raise ValueError(_("Select an input volume."))
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="XDiffusion-", dir=slicer.app.temporaryPath))
        try:
            self.scene.write_input(parameters.inputVolume, workdir / INPUT_NAME)
            arguments = build_reconstruct_arguments(workdir, parameters.plane, self.sliceIndices(parameters), parameters.quality,
                                                    parameters.device, self.modelDirectory(parameters), method)
            process = ReconstructionProcess(python_command(), arguments, workdir)
            logging.info("XDiffusion: running %s", " ".join(process.command))
            process.start()
        except Exception:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return process

    def finishReconstruction(self, process: ReconstructionProcess, parameters: XDiffusionParameterNode) -> dict:
        """Load a finished run's files into the output nodes (new ones unless chosen) and delete the files."""
        try:
            source = parameters.inputVolume
            method = process.command[process.command.index("--method") + 1]
            outputs = {"image": self.scene.load_volume(process.output_path("image"), source, parameters.outputVolume, method)}
            parameters.outputVolume = outputs["image"]
            if process.output_path("segmentation").is_file():
                outputs["segmentation"] = self.scene.load_segmentation(process.output_path("segmentation"), source, parameters.outputSegmentation)
                parameters.outputSegmentation = outputs["segmentation"]
            if process.output_path("uncertainty").is_file():
                outputs["uncertainty"] = self.scene.load_uncertainty(process.output_path("uncertainty"), source, parameters.outputUncertainty)
                parameters.outputUncertainty = outputs["uncertainty"]
        finally:
            process.cleanup()
        return outputs

    def reconstruct(self, parameters: XDiffusionParameterNode, method: str = "xdiffusion", timeout: Optional[float] = None) -> dict:
        """Blocking run, for scripts and the self-test."""
        process = self.startReconstruction(parameters, method)
        if process.wait(timeout) != 0:
            process.cleanup()
            raise RuntimeError(process.error_message())
        return self.finishReconstruction(process, parameters)

    def showResults(self, outputs: dict) -> None:
        slicer.util.setSliceViewerLayers(background=outputs["image"], foreground=None, fit=True)
        if "segmentation" in outputs:
            outputs["segmentation"].GetDisplayNode().SetVisibility(True)

    def showVolumeRendering(self, parameters: XDiffusionParameterNode):
        if not parameters.outputVolume:
            raise ValueError(_("Run a reconstruction first."))
        display = self.scene.show_volume_rendering(parameters.outputVolume)
        if parameters.outputSegmentation:  # the tumour as closed surfaces inside the rendered head
            parameters.outputSegmentation.GetDisplayNode().SetVisibility3D(True)
        slicer.app.layoutManager().threeDWidget(0).threeDView().resetFocalPoint()
        return display

    def compare(self, parameters: XDiffusionParameterNode):
        """Linked side-by-side views and a metrics table (the library's `evaluate_volumes`)."""
        if not (parameters.groundTruthVolume and parameters.outputVolume):
            raise ValueError(_("Select a ground-truth volume and run a reconstruction first."))
        metrics, table = self.scene.compare(parameters.groundTruthVolume, parameters.outputVolume,
                                            parameters.groundTruthSegmentation, parameters.outputSegmentation)
        self.scene.set_compare_layout(parameters.groundTruthVolume, parameters.outputVolume)
        logging.info("XDiffusion comparison: %s", metrics)
        return table


class XDiffusionTest(ScriptedLoadableModuleTest):
    """Runs in real Slicer (Reload and Test): the sample data through the bundled model, and checks the nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReconstructSample()

    def test_ReconstructSample(self):
        if sample_data_files(MODULE_DIR) is None:
            self.skipTest("the sample data files are not in this installation")
        import SampleData

        registerSampleData()
        self.delayDisplay("Loading the sample")
        volume = SampleData.downloadSample(SAMPLE_NAMES[0])
        labels = SampleData.downloadSample(SAMPLE_NAMES[1])
        logic = XDiffusionLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.plane = "axial"
        parameters.sliceIndex = slice_count(volume, "axial") // 2
        parameters.quality = "fast"
        self.delayDisplay("Reconstructing (fast quality)")
        outputs = logic.reconstruct(parameters, timeout=3600)

        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(inputMatrix)
        outputs["image"].GetIJKToRASMatrix(outputMatrix)
        self.assertEqual([inputMatrix.GetElement(r, c) for r in range(4) for c in range(4)],
                         [outputMatrix.GetElement(r, c) for r in range(4) for c in range(4)])
        self.assertIn("(generated)", outputs["image"].GetName())
        self.assertEqual(outputs["image"].GetAttribute("XDiffusion.Generated"), "true")
        segmentation = outputs["segmentation"].GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 3)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Necrotic tumour core")
        self.assertGreaterEqual(slicer.util.arrayFromVolume(outputs["uncertainty"]).min(), 0.0)

        parameters.groundTruthVolume = volume
        parameters.groundTruthSegmentation = labels
        table = logic.compare(parameters)
        self.assertGreater(table.GetNumberOfRows(), 5)
        self.assertIsNotNone(logic.showVolumeRendering(parameters))
        self.delayDisplay("Test passed")
