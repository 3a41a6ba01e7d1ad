"""Issue 14, item 8, against slicer-core's real MRML: the tumour drawn on the input slice becomes the CLI's
`--input-segmentation` (BraTS values by the documented segment-name rule, on exactly the input's grid, read back by
the library as the input slices' labels), only for a label-conditioned model; the output tumour in BraTS colours as
closed surfaces that the volume-rendered head does not hide; its volume in ml in the results table.

slicer-core renders nothing (no Qt, no 3D view): the 3D checks are on the display and volume-property nodes that
Slicer's views draw from."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (`make install` adds it) for Slicer's MRML")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

from XDiffusionModuleLib import cli, grid, metrics, scene as xs, tumour, views  # noqa: E402
from XDiffusionModuleLib.jobs import DONE  # noqa: E402
from XDiffusionModuleLib.runs import ReconstructionRun, RunRequest  # noqa: E402
from conftest import smooth_head  # noqa: E402
from test_slicer_process import FAKE_CLI, fake_env, scene  # noqa: E402,F401 (scene: a fixture)
from test_slicer_scene import add_volume, ras_matrix  # noqa: E402

SHAPE = (24, 20, 16)  # i, j, k on an oblique, anisotropic grid
AXIAL_INDEX = 7
CARDS = {"bundled": {"segments_tumours": True}}  # the card is known: no model-info step
NO_LABELS_CARDS = {"bundled": {"segments_tumours": False}}  # a model that draws no tumour labels (the shipped one)


@pytest.fixture
def input_node(scene):
    return add_volume(scene, "T1", smooth_head(SHAPE), ras_matrix())


def drawn_labels() -> np.ndarray:
    """BraTS labels (i, j, k) on the input slice, and a stray label on another slice."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:16, 6:14, AXIAL_INDEX] = 2
    labels[10:13, 8:11, AXIAL_INDEX] = 1
    labels[14:16, 9:12, AXIAL_INDEX] = 3
    labels[3:6, 3:6, 2] = 2
    return labels


def user_segmentation(scene, input_node, names: dict):
    """A segmentation as a user would have it: imported from a labelmap, its segments then renamed."""
    source = add_volume(scene, "drawn", drawn_labels(), grid.ijk_to_ras(input_node), "vtkMRMLLabelMapVolumeNode")
    xs.register_segmentation_converters()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn tumour")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, node, "")
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        segment.SetName(names[segment.GetLabelValue()])
    scene.RemoveNode(source)
    return node


def panel(node, **changes):
    values = dict(inputVolume=node, plane="axial", sliceIndex=AXIAL_INDEX, slicePosition=0.5, inputSliceCount=1,
                  sliceSpread="even", quality="fast", device="cpu", outputVolume=None, outputSegmentation=None,
                  outputUncertainty=None)
    values.update(changes)
    return SimpleNamespace(**values)


def wait(run, timeout=60.0):
    deadline = time.monotonic() + timeout
    while run.active:
        assert time.monotonic() < deadline, "timed out"
        run.poll()
        time.sleep(0.02)
    return run


@pytest.mark.parametrize("name, value", [
    ("Necrotic tumour core", 1), ("NCR", 1), ("ncr/net", 1), ("Non-enhancing core", 1), ("Segment_1", 1),
    ("Peritumoural oedema", 2), ("edema", 2), ("ED", 2), ("label 2", 2),
    ("Enhancing tumour", 3), ("ET", 3), ("Segment_3", 3), ("4", 3),
    ("tumour", None), ("red", None), ("Segment_5", None), ("bed", None),
])
def test_segment_names_map_to_brats_labels(name, value):
    assert tumour.brats_value_of_name(name) == value


def test_unnamed_segments_take_the_labels_left_in_order():
    assert tumour.brats_values(["edema", "first", "second"]) == [2, 1, 3]
    assert tumour.brats_values(["a", "b"]) == [1, 2]
    assert tumour.brats_values(["ET", "ET copy"]) == [3, 3]
    with pytest.raises(ValueError, match="segment 'd': no BraTS label left"):
        tumour.brats_values(["a", "b", "c", "d"])


def test_the_drawn_tumour_reaches_the_cli_on_the_inputs_grid(scene, input_node, tmp_path):
    """The labels file the CLI gets: the input's grid exactly, BraTS values by name, read back by the library as the
    input slice's labels."""
    from xdiffusion.input_labels import read_input_labels
    from xdiffusion.io import read_volume
    from xdiffusion.reconstruct import select_slices

    drawn = user_segmentation(scene, input_node, {1: "NCR", 2: "Peritumoral edema", 3: "Segment_9"})
    log, kept = tmp_path / "commands.jsonl", tmp_path / "kept_labels.nrrd"
    request = RunRequest.from_parameters(panel(input_node), None, "xdiffusion", drawn.GetID())
    run = wait(ReconstructionRun(scene, request, FAKE_CLI, dict(CARDS), str(tmp_path),
                                 fake_env(log=log, labels=1, segments=1, keep_labels=kept)).start())
    assert run.state == DONE, run.error
    [command] = [json.loads(line) for line in log.read_text().splitlines()]
    assert command[command.index("--input-segmentation") + 1].endswith(cli.INPUT_LABELS_NAME)
    input_file = xs.SceneFiles(scene).write_volume(input_node, tmp_path / "input.nrrd")  # as the run wrote it
    labels, image = read_volume(kept), read_volume(input_file)
    assert labels.geometry.same_as(image.geometry, atol=1e-9)
    np.testing.assert_array_equal(labels.array, drawn_labels())
    inputs = select_slices(image, "axial", [AXIAL_INDEX])
    [on_slice] = read_input_labels(kept, inputs)
    np.testing.assert_array_equal(on_slice, drawn_labels()[:, :, AXIAL_INDEX])


@pytest.mark.parametrize("method", ["xdiffusion", "extrude"])
def test_a_drawn_tumour_gives_tumour_labels_with_a_model_that_draws_none_and_with_a_baseline(scene, input_node, tmp_path, method):
    """Neither the model (no label conditioning, no labels of its own) nor the baseline reads the drawing for its
    image; the run asks the CLI for the labels the drawing gives and loads them back."""
    drawn = user_segmentation(scene, input_node, {1: "NCR", 2: "ED", 3: "ET"})
    log = tmp_path / "commands.jsonl"
    request = RunRequest.from_parameters(panel(input_node), None, method, drawn.GetID())
    run = wait(ReconstructionRun(scene, request, FAKE_CLI, dict(NO_LABELS_CARDS), str(tmp_path), fake_env(log=log)).start())
    assert run.state == DONE, run.error
    [command] = [json.loads(line) for line in log.read_text().splitlines()]
    assert "--input-segmentation" in command and "--segmentation-output" in command
    labels = run.outputs["segmentation"]
    assert labels.GetAttribute("XDiffusion.LabelsFrom").startswith("the input slices' labels, tapered")
    assert "Tumour labels from the input slices' labels, tapered" in labels.GetDescription()
    assert labels.GetAttribute(xs.GENERATED_ATTRIBUTE) == "true"


def test_without_a_drawing_a_model_that_draws_no_labels_is_not_asked_for_them(scene, input_node, tmp_path):
    log = tmp_path / "commands.jsonl"
    request = RunRequest.from_parameters(panel(input_node), None, "xdiffusion")
    run = wait(ReconstructionRun(scene, request, FAKE_CLI, dict(NO_LABELS_CARDS), str(tmp_path), fake_env(log=log)).start())
    assert run.state == DONE, run.error
    [command] = [json.loads(line) for line in log.read_text().splitlines()]
    assert "--segmentation-output" not in command and "segmentation" not in run.outputs


def test_a_new_input_segmentation_has_the_brats_segments_in_brats_colours(scene, input_node):
    node = tumour.new_input_segmentation(scene, input_node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [tumour.brats_value_of_name(s.GetName()) for s in segments] == [1, 2, 3]
    assert [int(np.argmax(s.GetColor())) for s in segments] == [0, 1, 2]  # 1 red, 2 green, 3 blue
    with pytest.raises(ValueError, match="has no segments"):
        tumour.input_labels_array(xs.SceneFiles(scene), scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty"),
                                  input_node)


def test_the_output_tumour_is_coloured_surfaced_visible_through_the_head_and_measured(scene, input_node, tmp_path):
    run = wait(ReconstructionRun(scene, RunRequest.from_parameters(panel(input_node)), FAKE_CLI, dict(CARDS), str(tmp_path),
                                 fake_env(segments=1)).start())
    assert run.state == DONE, run.error
    node = run.outputs["segmentation"]
    segmentation = node.GetSegmentation()
    colours = {segmentation.GetNthSegment(i).GetLabelValue(): segmentation.GetNthSegment(i).GetColor()
               for i in range(segmentation.GetNumberOfSegments())}
    assert {value: int(np.argmax(rgb)) for value, rgb in colours.items()} == {1: 0, 2: 1, 3: 2}

    # the fake CLI draws oedema (2) in a 3 x 4 x 4 block around the centre
    voxel_ml = abs(np.linalg.det(ras_matrix()[:3, :3])) / 1000.0
    table = run.table
    assert table is metrics.results_table(scene, create=False)
    rows = {table.GetCellText(r, 0): (table.GetCellText(r, 1), table.GetCellText(r, 2)) for r in range(table.GetNumberOfRows())}
    assert rows[metrics.METRICS["tumour_ml_oedema"][0]] == (f"{48 * voxel_ml:.4g}", "ml")
    assert rows[metrics.METRICS["tumour_ml_whole"][0]] == (f"{48 * voxel_ml:.4g}", "ml")
    assert rows[metrics.METRICS["tumour_ml_necrotic"][0]] == ("0", "ml")

    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    display = views.show_volume_rendering(rendering, run.outputs["image"])
    opacity = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    low, high = opacity.GetRange()
    views.show_tumour_in_rendering(display, node)
    assert max(opacity.GetValue(x) for x in np.linspace(low, high, 50)) == pytest.approx(views.HEAD_OPACITY_WITH_TUMOUR)
    assert segmentation.ContainsRepresentation("Closed surface")
    tumour_display = node.GetDisplayNode()
    assert tumour_display.GetVisibility3D() and tumour_display.GetOpacity3D() == 1.0
    assert tumour_display.GetPreferredDisplayRepresentationName3D() == "Closed surface"


def test_volumes_in_ml_use_the_voxel_volume_of_an_oblique_grid():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, :3] = 1
    labels[1, 1, :2] = 4  # read as enhancing
    volumes = tumour.volumes_ml(labels, ras_matrix())
    voxel_ml = 0.9 * 1.3 * 2.1 / 1000.0
    assert volumes == pytest.approx({"tumour_ml_necrotic": 3 * voxel_ml, "tumour_ml_oedema": 0.0,
                                     "tumour_ml_enhancing": 2 * voxel_ml, "tumour_ml_whole": 5 * voxel_ml})
