"""The module's scene work against slicer-core's real MRML: grids, files through Slicer's storage nodes, outputs as
nodes, slice views, the compare layout and the results table; reconstructions and comparisons through the real CLI
where it already does what the module asks (extrude, single 2D slices, `evaluate --json`).

What slicer-core does not carry is not stood in for: the parameterNodeWrapper (Testing/test_slicer_ui.py checks the
.ui against its connector rules instead), Qt widgets, and the volume-rendering presets (Slicer installs them from
its own share folder; here the module's fallback transfer functions are tested).
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (`make install` adds it) for Slicer's MRML")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

from XDiffusionModuleLib import bundle, cli, grid, metrics, scene as xs, views  # noqa: E402
from XDiffusionModuleLib.jobs import DONE  # noqa: E402
from XDiffusionModuleLib.runs import CompareRequest, ComparisonRun, ReconstructionRun, RunRequest  # noqa: E402
from conftest import smooth_head  # noqa: E402

PACKAGE = ROOT / "XDiffusion" / "XDiffusionModuleLib"
REAL_CLI = [sys.executable, "-m", "xdiffusion.cli"]
CHILD_ENV = {"OMP_NUM_THREADS": "1"}  # the test machine's cores are shared
ANGLE = np.deg2rad(20.0)
# an oblique, anisotropic RAS grid: rotated about two axes, spacing 0.9/1.3/2.1 mm
ROTATION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0], [np.sin(ANGLE), np.cos(ANGLE), 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
SHAPE = (24, 20, 16)  # i, j, k
SPACING = (0.9, 1.3, 2.1)
ORIGIN = (30.0, -12.5, 7.0)


def child_env():
    import os

    return {**os.environ, **CHILD_ENV}


def ras_matrix(rotation=ROTATION, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(rotation) * np.asarray(spacing)[None, :]
    matrix[:3, 3] = origin
    return matrix


def add_volume(scene, name, array_ijk, matrix, class_name="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.transpose(array_ijk)))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    node.CreateDefaultDisplayNodes()
    return node


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()  # the default colour tables, as in Slicer
    colors.SetMRMLScene(scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # Slicer's application logic does this
    logics = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        slice_node = logic.AddSliceNode(name)
        slice_node.SetOrientation(orientation)
        slice_node.SetDimensions(256, 256, 1)
        logics.append(logic)
    scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    scene.slice_logics = logics
    yield scene
    del colors


@pytest.fixture
def input_node(scene):
    return add_volume(scene, "T1", smooth_head(SHAPE), ras_matrix())


def node_matrix(node) -> np.ndarray:
    return grid.ijk_to_ras(node)


# --- item 1 and 2: a subpackage that needs neither Qt nor the library ---------------------------------------------

def test_the_helpers_import_neither_qt_nor_the_library():
    """Everything the panel does at GUI time works before `pip install xdiffusion` (and outside Qt)."""
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"xdiffusion", "qt", "ctk", "PythonQt"}, f"{path.name} imports {imported & {'xdiffusion', 'qt', 'ctk'}}"


def test_slice_choice_and_files_work_with_the_library_not_installed(scene, input_node, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "xdiffusion" or name.startswith("xdiffusion.")] + ["xdiffusion"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import xdiffusion` now raises ImportError
    with pytest.raises(ImportError):
        import xdiffusion  # noqa: F401
    assert grid.slice_count(input_node, "axial") == 16
    centre = grid.slice_centre(input_node, "axial", 11)
    assert grid.slice_index_at(input_node, "axial", centre) == 11
    follower = views.SliceViewFollower(scene, lambda plane, index: None)
    follower.volume_node = input_node
    follower.attach()
    assert follower.show_slice("axial", 5) and follower.current("axial") == 5
    follower.detach()
    assert xs.SceneFiles(scene).write_volume(input_node, tmp_path / "in.nrrd").is_file()


# --- geometry -----------------------------------------------------------------------------------------------------

def test_the_plane_rule_is_the_librarys(input_node):
    from xdiffusion.errors import InputError
    from xdiffusion.geometry import plane_axis
    from xdiffusion.io import Geometry

    rng = np.random.default_rng(3)
    for _ in range(200):
        q, _r = np.linalg.qr(rng.normal(size=(3, 3)))
        matrix = ras_matrix(q, (1.0, 1.1, 1.7), (0.0, 0.0, 0.0))
        lps = Geometry((4, 5, 6), (1.0, 1.1, 1.7), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]) @ q)
        for plane in grid.PLANES:
            try:
                expected = plane_axis(lps, plane)
            except InputError:
                with pytest.raises(ValueError, match="ambiguous"):
                    grid.plane_axis_of_matrix(matrix, plane)
                continue
            assert grid.plane_axis_of_matrix(matrix, plane) == expected


def test_slice_index_follows_a_point_and_under_a_transform(scene, input_node):
    ijk = np.array([5.0, 7.0, 11.0, 1.0])
    ras = (node_matrix(input_node) @ ijk)[:3]
    assert grid.slice_index_at(input_node, "axial", ras) == 11  # axis 2 is nearest to S
    assert grid.slice_count(input_node, "axial") == 16 and grid.slice_count(input_node, "sagittal") == 24
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[2, 3] = 2.1 * 3  # three slices up
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    input_node.SetAndObserveTransformNodeID(transform.GetID())
    assert grid.slice_index_at(input_node, "axial", ras) == 8
    assert grid.slice_index_at(input_node, "axial", grid.slice_centre(input_node, "axial", 4)) == 4
    assert grid.plane_of_slice_view("Coronal") == "coronal" and grid.plane_of_slice_view("Reformat") is None
    assert grid.choose_slice_indices(16, 11, 3, "neighbours") == [10, 11, 12]
    spread = grid.choose_slice_indices(16, 11, 4, "even")
    assert 11 in spread and len(spread) == 4 and min(np.diff(spread)) >= 2


def test_files_through_slicers_storage_nodes_keep_the_grid(scene, input_node, tmp_path):
    from xdiffusion.io import read_volume

    path = xs.SceneFiles(scene).write_volume(input_node, tmp_path / "input.nrrd")
    lps = read_volume(path).geometry  # what the CLI sees
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ lps.index_to_physical_matrix, node_matrix(input_node)[:3, :3], atol=1e-9)
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ lps.origin, ORIGIN, atol=1e-9)
    loaded = xs.SceneFiles(scene).read_volume(path)
    np.testing.assert_allclose(node_matrix(loaded), node_matrix(input_node), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(input_node))


def test_an_output_slicers_reader_reorders_is_put_back_on_the_input_grid(scene, tmp_path):
    """Slicer's reader makes a left-handed file right-handed by reversing an axis: same voxels, other index order."""
    left_handed = ras_matrix(np.diag([1.0, 1.0, -1.0]), (1.0, 1.2, 2.0), (5.0, 6.0, 40.0))
    array = smooth_head(SHAPE)
    node = add_volume(scene, "LH", array, left_handed)
    files = xs.SceneFiles(scene)
    path = files.write_volume(node, tmp_path / "out.nrrd")
    read = files.read_volume(path)
    assert not np.allclose(node_matrix(read), left_handed)  # the reader did reorder it
    output = files.load_reconstruction(path, node, method="extrude")
    np.testing.assert_array_equal(node_matrix(output), left_handed)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(output), slicer.util.arrayFromVolume(node))
    other = add_volume(scene, "other", array, ras_matrix(np.eye(3), (1.0, 1.2, 2.0), (5.0, 6.0, 41.0)))
    with pytest.raises(RuntimeError, match="not on the input's grid"):
        files.load_reconstruction(path, other)


# --- slice views (items 3 and the slider) ------------------------------------------------------------------------

def test_the_follower_reports_the_slice_moves_the_view_and_stops_when_detached(scene, input_node):
    seen = []
    follower = views.SliceViewFollower(scene, lambda plane, index: seen.append((plane, index)))
    follower.volume_node = input_node
    red = views.slice_node_named(scene, "Red")
    red.JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 6))
    assert seen == []  # not attached: not observing
    follower.attach()
    red.JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 9))
    assert seen == [("axial", 9)]
    red.Modified()  # the same slice again: nothing new to report, nothing rewritten
    assert seen == [("axial", 9)]
    assert follower.show_slice("axial", 3)  # the slider moves the view, without an echo
    assert seen == [("axial", 9)] and follower.current("axial") == 3
    views.slice_node_named(scene, "Green").JumpSliceByOffsetting(*grid.slice_centre(input_node, "coronal", 4))
    assert seen[-1] == ("coronal", 4)
    follower.enabled = False
    red.JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 12))
    assert len(seen) == 2
    follower.enabled = True
    follower.detach()  # the panel's exit(): no observer left behind
    red.JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 1))
    assert len(seen) == 2
    added = slicer.vtkMRMLSliceLogic()
    added.SetMRMLScene(scene)
    follower.attach()
    later = added.AddSliceNode("Slice4")  # a view created after attaching is followed too
    later.SetOrientation("Sagittal")
    later.JumpSliceByOffsetting(*grid.slice_centre(input_node, "sagittal", 20))
    assert seen[-1] == ("sagittal", 20)


def test_following_continues_after_a_run(scene, input_node, tmp_path):
    """Item 3: the old panel stopped following after the first run (it paused while `self.process` was set)."""
    seen = []
    follower = views.SliceViewFollower(scene, lambda plane, index: seen.append((plane, index)))
    follower.volume_node = input_node
    follower.attach()
    request = RunRequest(input_node.GetID(), "axial", (8,), None, method="extrude")
    run = ReconstructionRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    views.slice_node_named(scene, "Red").JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 2))
    assert run.wait(120) == DONE, run.log_text
    views.slice_node_named(scene, "Red").JumpSliceByOffsetting(*grid.slice_centre(input_node, "axial", 13))
    assert seen == [("axial", 2), ("axial", 13)]


# --- reconstruction through the real CLI -------------------------------------------------------------------------

def test_extrude_through_the_cli_gives_a_generated_volume_on_the_input_grid(scene, input_node, tmp_path):
    request = RunRequest(input_node.GetID(), "axial", (4, 11), None, method="extrude")
    run = ReconstructionRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    assert run.wait(120) == DONE, run.log_text
    assert not run.workdir.exists()  # no patient data left in the temporary folder
    node = run.outputs["image"]
    np.testing.assert_array_equal(node_matrix(node), node_matrix(input_node))
    assert node.GetName() == "T1 XDiffusion reconstruction (generated)"
    assert node.GetAttribute(xs.GENERATED_ATTRIBUTE) == "true" and "not a diagnosis" in node.GetDescription()
    assert node.GetAttribute("XDiffusion.Method") == "extrude"
    source, result = slicer.util.arrayFromVolume(input_node), slicer.util.arrayFromVolume(node)
    np.testing.assert_array_equal(result[11], source[11])  # (k, j, i): the given axial slice, bit-exact
    np.testing.assert_array_equal(result[13], source[11])  # extruded from its nearest input
    assert set(run.outputs) == {"image"} and "axial slices 4, 11" in run.status


def single_slice(scene, flat_axis: int, rotation=np.eye(3)):
    shape = [20, 16, 12]
    shape[flat_axis] = 1
    array = smooth_head((20, 16, 12))
    index = [slice(None)] * 3
    index[flat_axis] = slice(5, 6)
    return add_volume(scene, f"slice{flat_axis}", array[tuple(index)], ras_matrix(rotation, (0.8, 0.9, 3.0), (10.0, 20.0, 30.0)))


@pytest.mark.parametrize("flat_axis, plane", [(2, "axial"), (0, "sagittal")])
def test_a_single_2d_slice_is_reconstructed_around_itself(scene, tmp_path, flat_axis, plane):
    """Item 5: `--slice-position` instead of `--slice-index`, and the output read back on the CLI's 3D grid."""
    node = single_slice(scene, flat_axis)
    assert grid.is_single_slice(node) and grid.plane_of_single_slice(node) == plane
    parameters = SimpleNamespace(inputVolume=node, plane="coronal", sliceIndex=0, slicePosition=0.25, inputSliceCount=1,
                                 sliceSpread="even", quality="fast", device="cpu", outputVolume=None,
                                 outputSegmentation=None, outputUncertainty=None)
    request = RunRequest.from_parameters(parameters, method="extrude")
    assert request.slice_indices == () and request.plane is None and request.slice_position == 0.25
    arguments = cli.reconstruct_arguments(tmp_path, request.plane, request.slice_indices, request.slice_position, method="extrude")
    assert "--slice-index" not in arguments and arguments[arguments.index("--slice-position") + 1] == "0.25"
    run = ReconstructionRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    assert run.wait(120) == DONE, run.log_text
    output = run.outputs["image"]
    shape = grid.dimensions(output)
    assert min(shape) > 1  # a volume, not the slice's flat grid
    slice_plane = slicer.util.arrayFromVolume(node).squeeze()
    depth_axis = grid.plane_axis(output, plane)
    depth = shape[depth_axis]
    position = int(round(0.25 * (depth - 1)))
    values = np.moveaxis(np.transpose(slicer.util.arrayFromVolume(output)), depth_axis, 2)[:, :, position]
    assert sorted(values.shape) == sorted(slice_plane.shape)
    centre = grid.slice_centre(output, plane, position)  # the input slice lies at that depth of the output
    flat_normal = node_matrix(node)[:3, flat_axis] / np.linalg.norm(node_matrix(node)[:3, flat_axis])
    assert abs(flat_normal @ (centre - node_matrix(node)[:3, 3])) < 1e-3
    np.testing.assert_allclose(np.sort(values, axis=None), np.sort(slice_plane, axis=None))


# --- outputs as nodes --------------------------------------------------------------------------------------------

def write_labels(scene, reference, labels_ijk, path):
    node = add_volume(scene, "labels", labels_ijk.astype(np.uint8), node_matrix(reference), "vtkMRMLLabelMapVolumeNode")
    xs.SceneFiles(scene).write_volume(node, path)
    scene.RemoveNode(node)
    return path


def test_segmentation_names_colours_surfaces_and_round_trips(scene, input_node, tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:12, 8:12, 6:10] = 2
    labels[9:11, 9:11, 7:9] = 1
    labels[12:14, 8:10, 6:8] = 3
    files = xs.SceneFiles(scene)
    node = files.load_segmentation(write_labels(scene, input_node, labels, tmp_path / "labels.nrrd"), input_node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), s.GetColor(), s.GetLabelValue()) for s in segments] == [(n, c, v) for v, n, c in xs.BRATS_SEGMENTS]
    assert segmentation.ContainsRepresentation("Closed surface") and node.GetDisplayNode().GetVisibility3D()
    assert node.GetName() == "T1 XDiffusion tumour (generated)" and node.GetAttribute(xs.GENERATED_ATTRIBUTE) == "true"
    np.testing.assert_array_equal(files.labels_array(node, input_node), np.transpose(labels))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "tumour.seg.nrrd"))
    assert storage.WriteData(node)
    again = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(again)
    np.testing.assert_array_equal(files.labels_array(again, input_node), np.transpose(labels))


def test_ground_truth_labels_from_a_users_segmentation(scene, input_node):
    """Item 6: a segmentation as ground truth. A segment counts by its BraTS name, else by its label value (a BraTS
    file imported as a segmentation keeps its values 1-4); anything else is refused, not guessed."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:7, 3:7, 3:7] = 7
    labels[10:12, 10:12, 10:12] = 3
    labels[14:16, 3:5, 3:5] = 5
    source = add_volume(scene, "user labels", labels, node_matrix(input_node), "vtkMRMLLabelMapVolumeNode")
    xs.register_segmentation_converters()
    user = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, user, "")
    segmentation = user.GetSegmentation()
    by_value = {s.GetLabelValue(): s for s in (segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments()))}
    files = xs.SceneFiles(scene)
    by_value[7].SetName("peritumoural oedema")
    with pytest.raises(ValueError, match="not a BraTS label"):  # value 5, no BraTS name
        files.labels_array(user, input_node)
    by_value[5].SetName("Necrotic tumour core")
    expected = np.zeros(SHAPE, np.uint8)
    expected[3:7, 3:7, 3:7] = 2
    expected[10:12, 10:12, 10:12] = 3
    expected[14:16, 3:5, 3:5] = 1
    np.testing.assert_array_equal(files.labels_array(user, input_node), np.transpose(expected))


def test_uncertainty_colours_overlay_and_volume_rendering_fallback(scene, input_node, tmp_path):
    files = xs.SceneFiles(scene)
    path = files.write_volume(input_node, tmp_path / "spread.nrrd")
    spread = files.load_uncertainty(path, input_node)
    assert spread.GetDisplayNode().GetColorNode().GetName() in xs.UNCERTAINTY_COLORS
    assert spread.GetName() == "T1 XDiffusion uncertainty (generated)"
    views.show_uncertainty_overlay(scene, input_node, spread)
    red = views.composite_node_named(scene, "Red")
    assert red.GetForegroundVolumeID() == spread.GetID() and red.GetBackgroundVolumeID() == input_node.GetID()
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    # slicer-core carries no volume-rendering presets (Slicer installs them from its share folder), so this checks
    # the fallback ramp; with the preset, real Slicer copies it (XDiffusionTest covers that)
    assert rendering.GetPresetByName(views.RENDERING_PRESET) is None
    display = views.show_volume_rendering(rendering, input_node)
    assert display.IsA("vtkMRMLVolumeRenderingDisplayNode") and display.GetVisibility()
    opacity = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    low, high = np.percentile(slicer.util.arrayFromVolume(input_node), [5, 99])
    assert opacity.GetValue(low) == pytest.approx(0.0) and opacity.GetValue(high) == pytest.approx(0.6)


# --- compare (item 6) --------------------------------------------------------------------------------------------

def test_the_compare_layout_sets_every_view_to_the_input_plane_links_and_fits(scene, input_node):
    prediction = add_volume(scene, "prediction", smooth_head(SHAPE, seed=1), node_matrix(input_node))
    yellow = views.slice_node_named(scene, "Yellow")
    assert yellow.GetOrientation() == "Sagittal"  # the old layout left it so: mismatched planes side by side
    views.show_side_by_side(scene, input_node, prediction, "coronal", scene.slice_logics)
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    assert [views.slice_node_named(scene, n).GetOrientation() for n in ("Red", "Yellow")] == ["Coronal", "Coronal"]
    assert views.composite_node_named(scene, "Red").GetBackgroundVolumeID() == input_node.GetID()
    assert views.composite_node_named(scene, "Yellow").GetBackgroundVolumeID() == prediction.GetID()
    assert all(views.composite_node_named(scene, n).GetLinkedControl() for n in ("Red", "Yellow", "Green"))
    field = yellow.GetFieldOfView()
    assert 20.0 < max(field[:2]) < 60.0  # fitted to the 22-30 mm volume, not the default 250 mm


def test_compare_runs_evaluate_in_a_child_and_reuses_one_readable_table(scene, input_node, tmp_path):
    prediction = add_volume(scene, "prediction", smooth_head(SHAPE) * 0.9 + 5.0, node_matrix(input_node))
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:12, 8:12, 6:10] = 2
    truth = add_volume(scene, "truth", labels, node_matrix(input_node), "vtkMRMLLabelMapVolumeNode")
    xs.register_segmentation_converters()
    predicted = xs.SceneFiles(scene).load_segmentation(
        write_labels(scene, input_node, labels, tmp_path / "predicted.nrrd"), input_node)
    truth_segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth as segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(truth, truth_segmentation, "")
    truth_segmentation.GetSegmentation().GetNthSegment(0).SetName("Peritumoural oedema")
    tables = []
    for ground_truth in (truth, truth_segmentation):
        request = CompareRequest(input_node.GetID(), prediction.GetID(), ground_truth.GetID(), predicted.GetID())
        comparison = ComparisonRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
        assert comparison.wait(120) == DONE, comparison.log_text
        assert comparison.metrics["dice_wt"] == pytest.approx(1.0)
        assert 0.0 < comparison.metrics["psnr"] < 100.0
        tables.append(comparison.table)
    assert tables[0] is tables[1] and scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 1
    table = tables[0].GetTable()
    cells = {table.GetValue(r, 0).ToString(): (table.GetValue(r, 1).ToString(), table.GetValue(r, 2).ToString())
             for r in range(table.GetNumberOfRows())}
    assert cells["PSNR, whole volume"][1] == "dB" and float(cells["PSNR, whole volume"][0]) == pytest.approx(
        comparison.metrics["psnr"], rel=1e-3)
    assert cells["Dice, whole tumour"] == ("1", "")
    assert cells["Brain volume error"][1] == "%"
    assert not any(name.startswith(("psnr", "dice")) for name in cells)  # readable names, not the CLI's keys
    # without labels: the Dice rows say why they are empty
    request = CompareRequest(input_node.GetID(), prediction.GetID(), segments_tumours=False)
    comparison = ComparisonRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    assert comparison.wait(120) == DONE, comparison.log_text
    rows = {name: value for name, value, _ in metrics.rows(comparison.metrics, comparison.why_missing)}
    assert rows["Dice, whole tumour"] == "no ground-truth labels selected"
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 1


def test_a_comparison_on_different_grids_shows_the_clis_reason(scene, input_node, tmp_path):
    other = add_volume(scene, "other grid", smooth_head((10, 10, 10)), ras_matrix(np.eye(3), (1, 1, 1), (0, 0, 0)))
    comparison = ComparisonRun(scene, CompareRequest(input_node.GetID(), other.GetID()), REAL_CLI,
                               temp_root=str(tmp_path), env=child_env()).start()
    assert comparison.wait(120) == "failed"
    assert comparison.error.startswith("'other grid': shape [10, 10, 10] does not match")  # names, not temporary files
    assert not comparison.workdir.exists()


# --- the sample ---------------------------------------------------------------------------------------------------

def test_the_sample_data_runs_through_the_scene(scene, tmp_path):
    files = bundle.sample_data_files(ROOT / "XDiffusion")
    assert files is not None, f"sample data missing from the checkout ({', '.join(bundle.SAMPLE_FILES)})"
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    image = logic.AddArchetypeVolume(str(files[0]), "sample T1")
    request = RunRequest(image.GetID(), "axial", (grid.slice_count(image, "axial") // 2,), None, method="extrude")
    run = ReconstructionRun(scene, request, REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    assert run.wait(120) == DONE, run.log_text
    np.testing.assert_array_equal(node_matrix(run.outputs["image"]), node_matrix(image))
    started = time.monotonic()
    labels = logic.AddArchetypeVolume(str(files[1]), "sample labels", 1)
    comparison = ComparisonRun(scene, CompareRequest(image.GetID(), run.outputs["image"].GetID(), labels.GetID(), None),
                               REAL_CLI, temp_root=str(tmp_path), env=child_env()).start()
    assert comparison.wait(120) == DONE, comparison.log_text
    assert comparison.why_missing["dice_wt"] == "no tumour segmentation from the reconstruction"
    assert time.monotonic() - started < 120


def test_the_uncertainty_overlay_states_its_measured_auroc():
    """The panel offers the uncertainty map with the AUROC the card measured, never as if it ranked errors well."""
    assert "AUROC 0.53 on held-out data (0.5 = chance" in xs.uncertainty_caption({"uncertainty_auroc": 0.532})
    assert "not measured" in xs.uncertainty_caption({"segments_tumours": False})
    assert "not measured" in xs.uncertainty_caption(None)
