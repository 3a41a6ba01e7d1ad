"""The module's jobs: a reconstruction (model card, then `xdiffusion reconstruct`, then its files as nodes), an
upsampling of a thick-slice stack (`xdiffusion upsample`, its output a new node on its own isotropic grid), a
comparison (`xdiffusion evaluate --json` into the results table) and a model-card query (`xdiffusion model-info`).

A reconstruction runs on what was chosen when it started (`RunRequest`, frozen): changing the panel during a run
changes neither its input nor where its results go. Closing the scene cancels it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import cli, grid, metrics, tumour
from .jobs import DONE, FAILED, Job
from .scene import NO_TUMOUR_LABELS, SceneFiles, generated_name

OUTPUT_KINDS = ("image", "segmentation", "uncertainty")


def _node_id(node) -> Optional[str]:
    return node.GetID() if node is not None else None


@dataclass(frozen=True)
class RunRequest:
    """One reconstruction, fixed when Reconstruct is clicked."""

    input_id: str
    plane: Optional[str]  # None for a single 2D slice: its plane is its own
    slice_indices: tuple[int, ...]  # empty for a single 2D slice
    slice_position: Optional[float]  # a single 2D slice's place in the output depth (0-1)
    quality: str = "balanced"
    device: str = "auto"
    model_dir: Optional[str] = None
    method: str = "xdiffusion"
    output_ids: tuple[Optional[str], Optional[str], Optional[str]] = (None, None, None)  # image, segmentation, uncertainty
    input_labels_id: Optional[str] = None  # the tumour drawn on the input slices (a segmentation)

    @classmethod
    def from_parameters(cls, parameters, model_dir: Optional[str] = None, method: str = "xdiffusion",
                        input_labels_id: Optional[str] = None) -> "RunRequest":
        """From the panel's parameter node (read once, here): input, slices, quality, device and output nodes; and
        the input segmentation, where the user drew one."""
        volume = parameters.inputVolume
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Select an input volume.")
        outputs = (_node_id(parameters.outputVolume), _node_id(parameters.outputSegmentation), _node_id(parameters.outputUncertainty))
        common = dict(quality=parameters.quality, device=parameters.device, model_dir=model_dir, method=method, output_ids=outputs,
                      input_labels_id=input_labels_id)
        if grid.is_single_slice(volume):
            return cls(volume.GetID(), None, (), float(parameters.slicePosition), **common)
        length = grid.slice_count(volume, parameters.plane)
        indices = grid.choose_slice_indices(length, parameters.sliceIndex, parameters.inputSliceCount, parameters.sliceSpread)
        return cls(volume.GetID(), parameters.plane, tuple(indices), None, **common)

    @property
    def single_slice(self) -> bool:
        return self.slice_position is not None

    def describe(self) -> str:
        if self.single_slice:
            return f"the 2D slice, placed at {100 * self.slice_position:.0f} % of the output depth"
        which = ", ".join(str(i) for i in self.slice_indices)
        return f"{self.plane} slice{'s' if len(self.slice_indices) > 1 else ''} {which}"


def model_key(model_dir: Optional[str]) -> str:
    return str(model_dir) if model_dir else "bundled"


class SceneJob(Job):
    """A job that writes nodes to a private temporary folder and reads results back into the scene: cancelled when
    the scene closes, its folder removed however it ends."""

    def __init__(self, scene, temp_root: Optional[str] = None, env: Optional[dict] = None):
        super().__init__(env)
        self.scene = scene
        self.files = SceneFiles(scene)
        self.workdir: Optional[Path] = None
        self._temp_root = temp_root
        self._close_tag = None

    def _make_workdir(self, prefix: str) -> Path:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=self._temp_root))
        self._close_tag = self.scene.AddObserver(self.scene.StartCloseEvent, self._on_scene_close)
        return self.workdir

    def _on_scene_close(self, caller, event) -> None:
        self.cancel()

    def _cleanup(self) -> None:
        if self._close_tag is not None:
            self.scene.RemoveObserver(self._close_tag)
            self._close_tag = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


class ModelInfoQuery(Job):
    """`xdiffusion model-info --json`: the model card summary (`segments_tumours` and the rest)."""

    what = "Reading the model card"

    def __init__(self, cli_prefix: Sequence[str], model_dir: Optional[str] = None, env: Optional[dict] = None):
        super().__init__(env)
        self.model_dir = model_dir
        self.cli_prefix = list(cli_prefix)
        self.info: dict = {}

    def start(self) -> "ModelInfoQuery":
        self.status = "Reading the model card…"
        self._run([*self.cli_prefix, *cli.model_info_arguments(self.model_dir)])
        return self

    def _on_step_end(self, process) -> None:
        if process.returncode != 0:
            raise RuntimeError(cli.error_message(process.returncode, process.stderr, what=self.what))
        self.info = cli.parse_json_output(process.stdout)
        self.status = ""
        self._finish(DONE)


class ProgressEvents:
    """Reads the CLI's `--progress json` stderr lines into the job's fraction, status text and warnings."""

    def _on_line(self, stream: str, line: str) -> None:
        if stream != "stderr":
            return
        event = cli.parse_event(line)
        if isinstance(event, cli.Progress):
            self.fraction = event.fraction
            self.status = f"{event.stage}: {cli.format_eta(event.eta_s)} ({self.elapsed_s} s so far)"
        elif isinstance(event, cli.CliWarning) and event.message not in self.warnings:
            self.warnings.append(event.message)


class ReconstructionRun(ProgressEvents, SceneJob):
    """Model card (unless known), then the reconstruction, then its files loaded into the request's nodes."""

    what = "The reconstruction"

    def __init__(self, scene, request: RunRequest, cli_prefix: Sequence[str], model_cards: Optional[dict] = None,
                 temp_root: Optional[str] = None, env: Optional[dict] = None):
        super().__init__(scene, temp_root, env)
        self.request = request
        self.cli_prefix = list(cli_prefix)
        self.model_cards = model_cards if model_cards is not None else {}
        self.outputs: dict = {}
        self.table = None  # the results table, with the reconstructed tumour's volumes
        self._step = ""

    # --- start -----------------------------------------------------------------------------------------------------

    def start(self) -> "ReconstructionRun":
        input_node = self.scene.GetNodeByID(self.request.input_id)
        if input_node is None:
            raise ValueError("The input volume is not in the scene.")
        self._make_workdir("XDiffusion-")
        try:
            self.files.write_volume(input_node, self.workdir / cli.INPUT_NAME)
            if self.request.input_labels_id:
                self._write_input_labels(input_node)
        except Exception:
            self._cleanup()
            raise
        if self.request.method == "xdiffusion" and model_key(self.request.model_dir) not in self.model_cards:
            self._step = "model-info"
            self.status = "Reading the model card…"
            self._run([*self.cli_prefix, *cli.model_info_arguments(self.request.model_dir)])
        else:
            self._start_reconstruction()
        return self

    def _write_input_labels(self, input_node) -> None:
        """The input segmentation as BraTS labels on the input's grid, beside the input (`tumour.input_labels_array`)."""
        labels_node = self.scene.GetNodeByID(self.request.input_labels_id)
        if labels_node is None:
            raise ValueError("The input segmentation is not in the scene.")
        labels = tumour.input_labels_array(self.files, labels_node, input_node)
        self.files.write_label_array(labels, input_node, self.workdir / cli.INPUT_LABELS_NAME)

    @property
    def segments_tumours(self) -> Optional[bool]:
        """What the model card says (None: a card that predates the field, or not read yet); baselines make none."""
        if self.request.method != "xdiffusion":
            return False
        card = self.model_cards.get(model_key(self.request.model_dir)) or {}
        value = card.get("segments_tumours")
        return value if isinstance(value, bool) else None

    def _start_reconstruction(self) -> None:
        request = self.request
        arguments = cli.reconstruct_arguments(self.workdir, request.plane, request.slice_indices, request.slice_position,
                                              request.quality, request.device, request.model_dir, request.method,
                                              segmentation=self.segments_tumours is not False,
                                              input_labels=bool(request.input_labels_id))
        self._step = "reconstruct"
        self.fraction = 0.0
        self.status = "Starting (loading the model)…"
        self._run([*self.cli_prefix, *arguments])

    # --- progress --------------------------------------------------------------------------------------------------

    def _on_step_end(self, process) -> None:
        if self._step == "model-info":
            if process.returncode != 0:
                raise RuntimeError("Could not read the model card: "
                                   + cli.error_message(process.returncode, process.stderr, what="xdiffusion model-info"))
            self.model_cards[model_key(self.request.model_dir)] = cli.parse_json_output(process.stdout)
            self._start_reconstruction()
            return
        if process.returncode != 0:
            message = cli.error_message(process.returncode, process.stderr, what=self.what)
            input_node = self.scene.GetNodeByID(self.request.input_id)
            if input_node is not None:
                message = message.replace(str(self.workdir / cli.INPUT_NAME), f"'{input_node.GetName()}'")
            self._finish(FAILED, message)
            return
        self.outputs = self._load_outputs()
        note = f" {NO_TUMOUR_LABELS}" if self.request.method == "xdiffusion" and self.segments_tumours is False else ""
        self.status = f"Done in {self.elapsed_s} s from {self.request.describe()}.{note}"
        self._finish(DONE)

    # --- results ---------------------------------------------------------------------------------------------------

    def _output_node(self, index: int):
        node_id = self.request.output_ids[index]
        return self.scene.GetNodeByID(node_id) if node_id else None

    def _load_outputs(self) -> dict:
        input_node = self.scene.GetNodeByID(self.request.input_id)
        if input_node is None:
            raise RuntimeError("The input volume was removed during the run; nothing was loaded.")
        on_grid = not self.request.single_slice
        paths = {kind: self.workdir / cli.OUTPUT_NAMES[kind] for kind in OUTPUT_KINDS}
        outputs = {"image": self.files.load_reconstruction(paths["image"], input_node, self._output_node(0), self.request.method,
                                                           on_grid, self.warnings)}
        if paths["segmentation"].is_file():
            outputs["segmentation"] = self.files.load_segmentation(paths["segmentation"], input_node, self._output_node(1),
                                                                   on_grid, outputs["image"], self.warnings)
            self.table = metrics.fill_results_table(self.scene, tumour.file_volumes_ml(self.files, paths["segmentation"]),
                                                    caption=outputs["segmentation"].GetName())
        if paths["uncertainty"].is_file():
            outputs["uncertainty"] = self.files.load_uncertainty(paths["uncertainty"], input_node, self._output_node(2),
                                                                 on_grid, self.warnings)
        for node in outputs.values():  # warnings the CLI put only in its sidecars
            for warning in (node.GetAttribute("XDiffusion.Warnings") or "").splitlines():
                if warning and warning not in self.warnings:
                    self.warnings.append(warning)
        return outputs


@dataclass(frozen=True)
class UpsampleRequest:
    """One upsampling of a thick-slice stack, fixed when 'Upsample to isotropic' is clicked."""

    input_id: str
    device: str = "auto"
    method: Optional[str] = None  # None: the library's default (the best measured method)
    model_dir: Optional[str] = None

    @classmethod
    def from_parameters(cls, parameters, model_dir: Optional[str] = None, method: Optional[str] = None) -> "UpsampleRequest":
        volume = parameters.inputVolume
        if volume is None or volume.GetImageData() is None:
            raise ValueError("Select an input volume.")
        if not grid.is_thick_stack(volume):
            raise ValueError(f"{volume.GetName()} is not a thick-slice stack (its slice spacing must be more than "
                             f"{grid.NEAR_ISOTROPIC_RATIO:g}x its in-plane spacing).")
        return cls(volume.GetID(), parameters.device, method, model_dir if method == "xdiffusion" else None)


class UpsampleRun(ProgressEvents, SceneJob):
    """`xdiffusion upsample`, then its file as a new generated node on the file's own isotropic grid (under the
    input's parent transform, like the input)."""

    what = "The upsampling"

    def __init__(self, scene, request: UpsampleRequest, cli_prefix: Sequence[str], temp_root: Optional[str] = None,
                 env: Optional[dict] = None):
        super().__init__(scene, temp_root, env)
        self.request = request
        self.cli_prefix = list(cli_prefix)
        self.outputs: dict = {}

    def start(self) -> "UpsampleRun":
        input_node = self.scene.GetNodeByID(self.request.input_id)
        if input_node is None:
            raise ValueError("The input volume is not in the scene.")
        self._make_workdir("XDiffusion-upsample-")
        try:
            self.files.write_volume(input_node, self.workdir / cli.INPUT_NAME)
        except Exception:
            self._cleanup()
            raise
        self.fraction = 0.0
        self.status = "Starting the upsampling…"
        self._run([*self.cli_prefix, *cli.upsample_arguments(self.workdir, self.request.device, self.request.method,
                                                             self.request.model_dir)])
        return self

    def _on_step_end(self, process) -> None:
        input_node = self.scene.GetNodeByID(self.request.input_id)
        if process.returncode != 0:
            message = cli.error_message(process.returncode, process.stderr, what=self.what)
            if input_node is not None:
                message = message.replace(str(self.workdir / cli.INPUT_NAME), f"'{input_node.GetName()}'")
            self._finish(FAILED, message)
            return
        if input_node is None:
            raise RuntimeError("The input volume was removed during the run; nothing was loaded.")
        path = self.workdir / cli.UPSAMPLED_NAME
        method = str(cli.read_sidecar(path).get("Method", self.request.method or "upsample"))
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", generated_name(input_node, "isotropic"))
        self.outputs = {"image": self.files.load_reconstruction(path, input_node, node, method, on_input_grid=False,
                                                                warnings=self.warnings)}
        for warning in (self.outputs["image"].GetAttribute("XDiffusion.Warnings") or "").splitlines():
            if warning and warning not in self.warnings:  # warnings the CLI put only in its sidecar
                self.warnings.append(warning)
        spacing = self.outputs["image"].GetSpacing()
        self.status = f"Done in {self.elapsed_s} s: {input_node.GetName()} upsampled by {method} to {spacing[0]:g} mm isotropic."
        self._finish(DONE)


@dataclass(frozen=True)
class CompareRequest:
    reference_id: str
    prediction_id: str
    reference_labels_id: Optional[str] = None  # a labelmap or a segmentation
    prediction_labels_id: Optional[str] = None
    uncertainty_id: Optional[str] = None
    segments_tumours: Optional[bool] = None  # what the model card said, when known


class ComparisonRun(SceneJob):
    """`xdiffusion evaluate --json` on files written by Slicer's storage nodes; the metrics go into the results
    table with readable names and units."""

    what = "The comparison"

    def __init__(self, scene, request: CompareRequest, cli_prefix: Sequence[str], temp_root: Optional[str] = None,
                 env: Optional[dict] = None):
        super().__init__(scene, temp_root, env)
        self.request = request
        self.metrics: dict = {}
        self.table = None
        self.why_missing: dict = {}
        self.tumour_volumes: dict = {}  # the reconstructed tumour's, shown with the metrics
        self._names: dict = {}
        self.cli_prefix = list(cli_prefix)

    def start(self) -> "ComparisonRun":
        self._make_workdir("XDiffusion-compare-")
        try:
            self._run([*self.cli_prefix, *self._write_files()])
        except Exception:
            self._cleanup()
            raise
        self.status = "Comparing…"
        return self

    def _node(self, node_id: Optional[str]):
        node = self.scene.GetNodeByID(node_id) if node_id else None
        if node_id and node is None:
            raise ValueError(f"node {node_id} is no longer in the scene")
        return node

    def _write_files(self) -> list[str]:
        request = self.request
        reference, prediction = self._node(request.reference_id), self._node(request.prediction_id)
        if reference is None or prediction is None:
            raise ValueError("Select a ground-truth volume and run a reconstruction first.")
        paths = {"reference": self.workdir / "reference.nrrd", "prediction": self.workdir / "prediction.nrrd"}
        self.files.write_volume(reference, paths["reference"])
        self.files.write_volume(prediction, paths["prediction"])
        self._names = {paths["reference"]: reference.GetName(), paths["prediction"]: prediction.GetName()}
        reference_labels, prediction_labels = self._node(request.reference_labels_id), self._node(request.prediction_labels_id)
        labels = (None, None)
        if reference_labels is not None and prediction_labels is not None:
            labels = (self.files.write_labels(reference_labels, reference, self.workdir / "reference_labels.nrrd"),
                      self.files.write_labels(prediction_labels, reference, self.workdir / "prediction_labels.nrrd"))
            self._names.update({labels[0]: reference_labels.GetName(), labels[1]: prediction_labels.GetName()})
            self.tumour_volumes = tumour.file_volumes_ml(self.files, labels[1])
        else:
            if reference_labels is None:
                reason = "no ground-truth labels selected"
            elif request.segments_tumours is False:
                reason = "this model does not segment tumours"
            else:
                reason = "no tumour segmentation from the reconstruction"
            self.why_missing = {key: reason for key in metrics.TUMOUR_KEYS}
        uncertainty = self._node(request.uncertainty_id)
        uncertainty_path = None
        if uncertainty is not None:
            uncertainty_path = self.files.write_volume(uncertainty, self.workdir / "uncertainty.nrrd")
            self._names[uncertainty_path] = uncertainty.GetName()
        return cli.evaluate_arguments(paths["reference"], paths["prediction"], *labels, uncertainty_path)

    def _on_step_end(self, process) -> None:
        if process.returncode != 0:
            message = cli.error_message(process.returncode, process.stderr, what=self.what)
            for path, name in self._names.items():  # the user knows nodes, not the temporary files
                message = message.replace(str(path), f"'{name}'")
            self._finish(FAILED, message)
            return
        self.metrics = cli.parse_json_output(process.stdout)
        prediction = self.scene.GetNodeByID(self.request.prediction_id)
        caption = prediction.GetName() if prediction is not None else ""
        self.table = metrics.fill_results_table(self.scene, {**self.metrics, **self.tumour_volumes}, self.why_missing, caption)
        self.status = f"Compared in {self.elapsed_s} s."
        self._finish(DONE)
