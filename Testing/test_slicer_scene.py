"""The module's scene logic and process runner against slicer-core's real MRML and the real `xdiffusion` CLI.

Nothing is stood in for: nodes, segmentations, colour tables and volume rendering are Slicer's own classes; each
reconstruction is a real child process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (`make install` adds it) for Slicer's MRML")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

import XDiffusionProcess as xp  # noqa: E402
import XDiffusionSceneLogic as xs  # noqa: E402
from conftest import smooth_head  # noqa: E402
from xdiffusion.io import Geometry, Volume, read_volume, write_volume  # noqa: E402

# one torch thread in the child: the test machine's cores are shared, and thread contention slows tiny runs ten-fold
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# an oblique, anisotropic grid: rotated about two axes, spacing 0.9/1.3/2.1 mm
ANGLE = np.deg2rad(20.0)
OBLIQUE = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0], [np.sin(ANGLE), np.cos(ANGLE), 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
GEOMETRY = Geometry((24, 20, 16), (0.9, 1.3, 2.1), (-30.0, 12.5, 7.0), OBLIQUE)


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()  # the default colour tables, as in Slicer; they live as long as the logic
    colors.SetMRMLScene(scene)
    for name in ("Red", "Yellow", "Green"):
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    yield scene
    del colors


@pytest.fixture
def input_node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1")
    node.CreateDefaultDisplayNodes()
    xs.set_node_from_volume(node, Volume(smooth_head(GEOMETRY.shape), GEOMETRY))
    return node


def node_matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_ras_lps_conversion_agrees_with_slicers_own_reader(scene, input_node, tmp_path):
    """The library writes the node; Slicer's file reader must place every voxel where the node had it."""
    lps = xs.geometry_from_node(input_node)
    assert lps.same_as(GEOMETRY, atol=1e-9)
    ras = node_matrix(input_node)
    np.testing.assert_allclose(ras[:3, 3], [30.0, -12.5, 7.0])  # L and P flip sign, S does not
    path = xs.XDiffusionSceneLogic(scene).write_input(input_node, tmp_path / "input.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    loaded = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read by Slicer")
    assert storage.ReadData(loaded)
    np.testing.assert_allclose(node_matrix(loaded), ras, atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(input_node))
    assert read_volume(path).geometry.same_as(GEOMETRY, atol=1e-9)


def test_slice_index_follows_a_ras_point_and_slice_choice(input_node):
    geometry = xs.geometry_from_node(input_node)
    voxel = np.array([5.0, 7.0, 11.0])
    ras = xs.LPS_TO_RAS @ geometry.index_to_physical(voxel)
    assert xs.slice_index_at(input_node, "axial", ras) == 11  # axis 2 is nearest to S
    assert xs.slice_count(input_node, "axial") == 16
    assert xs.plane_of_slice_view("Coronal") == "coronal" and xs.plane_of_slice_view("Reformat") is None
    assert xs.choose_slice_indices(16, 11, 1, "even") == [11]
    assert xs.choose_slice_indices(16, 11, 3, "neighbours") == [10, 11, 12]
    assert xs.choose_slice_indices(16, 0, 3, "neighbours") == [0, 1, 2]
    spread = xs.choose_slice_indices(16, 11, 4, "even")
    assert 11 in spread and len(spread) == 4 and min(np.diff(spread)) >= 2


def run_cli(scene, input_node, tmp_path, indices, method="xdiffusion", model=None):
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    xs.XDiffusionSceneLogic(scene).write_input(input_node, workdir / xp.INPUT_NAME)
    arguments = xp.build_reconstruct_arguments(workdir, "axial", indices, "fast", "cpu", model, method)
    process = xp.ReconstructionProcess([sys.executable], arguments, workdir, CHILD_ENV)
    process.start()
    return process


def test_extrude_through_the_cli_gives_a_volume_node_on_the_input_grid(scene, input_node, volume_rendering, tmp_path):
    process = run_cli(scene, input_node, tmp_path, [4, 11], method="extrude")
    assert process.wait(timeout=60) == 0, process.log_text
    assert process.latest == xp.Progress(1.0, 0, "extrude")
    logic = xs.XDiffusionSceneLogic(scene, volume_rendering)
    node = logic.load_volume(process.output_path("image"), input_node, method="extrude")
    process.cleanup()
    assert not process.workdir.exists()
    np.testing.assert_array_equal(node_matrix(node), node_matrix(input_node))
    assert node.GetName() == "T1 XDiffusion reconstruction (generated)"
    assert node.GetAttribute(xs.GENERATED_ATTRIBUTE) == "true" and "not a diagnosis" in node.GetDescription()
    source, result = slicer.util.arrayFromVolume(input_node), slicer.util.arrayFromVolume(node)
    np.testing.assert_array_equal(result[11], source[11])  # (k, j, i): the given axial slice, bit-exact
    np.testing.assert_array_equal(result[13], source[11])  # extruded from its nearest input
    display = logic.show_volume_rendering(node)
    assert display.IsA("vtkMRMLVolumeRenderingDisplayNode") and display.GetVisibility()
    opacity = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    low, high = np.percentile(result, [5, 99])
    assert opacity.GetValue(low) == pytest.approx(0.0) and opacity.GetValue(high) == pytest.approx(0.6)


@pytest.fixture
def volume_rendering(scene):
    logic = slicer.vtkSlicerVolumeRenderingLogic()
    logic.SetMRMLScene(scene)
    return logic


def test_an_installed_preset_is_used_for_volume_rendering(scene, input_node, volume_rendering):
    preset = slicer.vtkMRMLVolumePropertyNode()
    preset.SetName(xs.RENDERING_PRESET)
    ramp = vtk.vtkPiecewiseFunction()
    ramp.AddPoint(0.0, 0.0)
    ramp.AddPoint(123.0, 0.25)
    preset.GetVolumeProperty().SetScalarOpacity(ramp)
    volume_rendering.AddPreset(preset)
    display = xs.XDiffusionSceneLogic(scene, volume_rendering).show_volume_rendering(input_node)
    assert display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity().GetValue(123.0) == pytest.approx(0.25)


def test_segmentation_names_colours_surfaces_and_labelmap_round_trip(scene, input_node, tmp_path):
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[8:12, 8:12, 6:10] = 2
    labels[9:11, 9:11, 7:9] = 1
    labels[12:14, 8:10, 6:8] = 3
    path = write_volume(Volume(labels, GEOMETRY), tmp_path / "labels.nrrd")
    logic = xs.XDiffusionSceneLogic(scene)
    node = logic.load_segmentation(path, input_node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), s.GetColor(), s.GetLabelValue()) for s in segments] == [(n, c, v) for v, n, c in xs.BRATS_SEGMENTS]
    assert segmentation.ContainsRepresentation("Closed surface") and node.GetDisplayNode().GetVisibility3D()
    surface = vtk.vtkPolyData()
    node.GetClosedSurfaceRepresentation(segmentation.GetNthSegmentID(0), surface)
    assert surface.GetNumberOfPoints() > 0
    np.testing.assert_array_equal(logic.labels_from_segmentation(node, input_node), labels)
    # .seg.nrrd write and read back through Slicer's segmentation storage
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "tumour.seg.nrrd"))
    assert storage.WriteData(node)
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(again)
    assert [again.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)] == [n for _, n, _ in xs.BRATS_SEGMENTS]
    np.testing.assert_array_equal(logic.labels_from_segmentation(again, input_node), labels)


def test_a_label_the_model_did_not_predict_is_an_empty_segment(scene, input_node):
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[5:9, 5:9, 5:9] = 2
    node = xs.XDiffusionSceneLogic(scene).segmentation_from_labels(labels, input_node)
    assert node.GetSegmentation().GetNumberOfSegments() == 3
    assert xs.XDiffusionSceneLogic(scene).labels_from_segmentation(node, input_node).max() == 2


def tiny_model_folder(folder: Path) -> Path:
    import torch
    from diffusers import DDPMScheduler

    from xdiffusion.model import ConditionEncoder, build_unet, preset, save_model

    torch.manual_seed(0)
    config = preset("tiny")
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    return save_model(folder, build_unet(config).eval(), ConditionEncoder.from_config(config).eval(), None,
                      dict(scheduler.config), config, {"steps": 0})


def test_model_run_loads_all_three_outputs_and_compares(scene, input_node, tmp_path):
    model = tiny_model_folder(tmp_path / "model")
    process = run_cli(scene, input_node, tmp_path, [8], model=str(model))
    events = []
    while not process.finished:
        events += process.poll()
        time.sleep(0.05)
    assert process.returncode == 0, process.log_text
    assert len(events) >= 3 and events[-1].fraction == 1.0
    assert all(a.fraction <= b.fraction for a, b in zip(events, events[1:]))
    logic = xs.XDiffusionSceneLogic(scene)
    image = logic.load_volume(process.output_path("image"), input_node)
    tumour = logic.load_segmentation(process.output_path("segmentation"), input_node)
    spread = logic.load_uncertainty(process.output_path("uncertainty"), input_node)
    process.cleanup()
    for node in (image, spread):
        np.testing.assert_array_equal(node_matrix(node), node_matrix(input_node))
    assert tumour.GetSegmentation().GetNumberOfSegments() == 3
    assert spread.GetDisplayNode().GetColorNode().GetName() in xs.UNCERTAINTY_COLORS
    assert slicer.util.arrayFromVolume(spread).min() >= 0.0
    logic.show_uncertainty_overlay(image, spread)
    red = [c for c in logic._composite_nodes() if c.GetLayoutName() == "Red"][0]
    assert red.GetForegroundVolumeID() == spread.GetID() and red.GetBackgroundVolumeID() == image.GetID()

    truth = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "truth labels")
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[8:12, 8:12, 6:10] = 2
    xs.set_node_from_volume(truth, Volume(labels, GEOMETRY))
    metrics, table = logic.compare(input_node, image, truth, tumour)
    assert set(metrics) >= {"psnr", "ssim", "dice_wt", "tumour_volume_ml_err"}
    assert 0.0 < metrics["psnr"] < 100.0 and metrics["dice_wt"] is not None
    assert table.GetNumberOfRows() == len(metrics)
    psnr_row = [r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "psnr"][0]
    assert float(table.GetCellText(psnr_row, 1)) == pytest.approx(metrics["psnr"], rel=1e-3)
    assert table.GetCellText(psnr_row, 2) == "dB"
    logic.set_compare_layout(input_node, image)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    yellow = [c for c in logic._composite_nodes() if c.GetLayoutName() == "Yellow"][0]
    assert yellow.GetBackgroundVolumeID() == image.GetID() and yellow.GetLinkedControl()


def test_a_bad_argument_surfaces_the_clis_error_line(tmp_path):
    """A usage error fails before torch is imported, so this stays fast; every `error:` path prints the same way."""
    arguments = xp.build_reconstruct_arguments(tmp_path, "axial", [3], "fast")
    arguments[arguments.index("--views") + 1] = "0"
    process = xp.ReconstructionProcess([sys.executable], arguments, tmp_path / "run", CHILD_ENV)
    process.start()
    assert process.wait(timeout=60) == 2
    message = process.error_message()
    assert "--views" in message and "at least 1" in message and not message.startswith("error:")


def test_cancel_exits_130_and_removes_the_temporary_files(scene, input_node, tmp_path):
    model = tiny_model_folder(tmp_path / "model")
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    xs.XDiffusionSceneLogic(scene).write_input(input_node, workdir / xp.INPUT_NAME)
    arguments = xp.build_reconstruct_arguments(workdir, "axial", [8], "best", "cpu", str(model))
    arguments[arguments.index("--steps") + 1] = "100000"  # long enough that only a cancel ends it
    process = xp.ReconstructionProcess([sys.executable], arguments, workdir, CHILD_ENV)
    process.start()
    deadline = time.monotonic() + 60
    while process.latest is None and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    assert process.latest is not None, process.log_text
    started = time.monotonic()
    assert process.cancel() == xp.CANCELLED_EXIT_CODE
    assert time.monotonic() - started < xp.CANCEL_GRACE_S
    assert not workdir.exists()
    assert process.error_message().startswith("Cancelled")


def test_progress_lines_and_messages():
    assert xp.parse_progress(json.dumps({"progress": 0.25, "eta_s": 75, "stage": "view 1/4"})) == xp.Progress(0.25, 75, "view 1/4")
    assert xp.parse_progress("wrote out.nii.gz (generated)") is None and xp.parse_progress("{not json") is None
    assert xp.format_eta(75) == "about 1 min 15 s left" and xp.format_eta(None) == "estimating time left"
    crashed = xp.ReconstructionProcess([sys.executable], [], Path("unused"))
    crashed.returncode, crashed.log = -11, ["Segmentation fault"]
    assert "exit code -11" in crashed.error_message() and "Segmentation fault" in crashed.error_message()


def test_the_sample_data_runs_through_the_scene(scene, tmp_path):
    files = xs.sample_data_files(ROOT / "XDiffusion")
    if files is None:
        pytest.fail(f"sample data missing from the checkout ({', '.join(xs.SAMPLE_FILES)} under {xs.SAMPLE_FOLDER})")
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    image = logic.AddArchetypeVolume(str(files[0]), "sample T1")
    # Slicer's reader makes left-handed grids (this LAS file) right-handed by reversing the slice order: the same
    # physical image, so compare where the voxel corners are, not the raw index order
    node_grid, file_grid = xs.geometry_from_node(image), read_volume(files[0]).geometry
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in file_grid.shape], indexing="ij")).reshape(3, -1).T
    assert node_grid.shape == file_grid.shape
    np.testing.assert_allclose(sorted(map(tuple, node_grid.index_to_physical(corners).round(4))),
                               sorted(map(tuple, file_grid.index_to_physical(corners).round(4))), atol=1e-3)
    process = run_cli(scene, image, tmp_path, [xs.slice_count(image, "axial") // 2], method="extrude")
    assert process.wait(timeout=120) == 0, process.log_text
    node = xs.XDiffusionSceneLogic(scene).load_volume(process.output_path("image"), image, method="extrude")
    np.testing.assert_array_equal(node_matrix(node), node_matrix(image))
