"""'Upsample to isotropic' in the Slicer module, against slicer-core's MRML: which inputs offer it, the command line,
the job (progress, cancel, failure) with the fake CLI, and one real small `xdiffusion upsample` whose output node sits
on its own new grid, spanning the input's slabs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (`make install` adds it) for Slicer's MRML")
pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

from XDiffusionModuleLib import cli, grid  # noqa: E402
from XDiffusionModuleLib.jobs import CANCELLED, DONE, FAILED  # noqa: E402
from XDiffusionModuleLib.runs import UpsampleRequest, UpsampleRun  # noqa: E402
from XDiffusionModuleLib.scene import GENERATED_ATTRIBUTE, GENERATED_NOTE  # noqa: E402
from conftest import smooth_head  # noqa: E402
from test_slicer_process import FAKE_CLI, REAL_CLI, commands, fake_env, scene, wait_for  # noqa: E402,F401 (scene: a fixture)
from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.io import Geometry, Volume  # noqa: E402
from xdiffusion.upsample import thick_stack  # noqa: E402

SOURCE = (ROOT / "XDiffusion" / "XDiffusion.py").read_text(encoding="utf-8")



def add_stack(scene, name="FLAIR 5 mm", shape=(20, 18, 6), spacing=(1.0, 1.0, 5.0), directions=None):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.transpose(smooth_head(shape))))
    node.SetSpacing(*spacing)
    node.SetOrigin(-10.0, 4.0, 7.0)
    if directions is not None:
        node.SetIJKToRASDirections(directions)
    node.CreateDefaultDisplayNodes()
    return node


def ras_box(node) -> np.ndarray:
    """The RAS corners of the region the node's voxels cover (centres ± half a voxel)."""
    matrix, shape = grid.ijk_to_ras(node), np.asarray(grid.dimensions(node), dtype=np.float64)
    corners = np.array([[i, j, k, 1.0] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners[:, :3] = corners[:, :3] * shape - 0.5
    return (matrix @ corners.T).T[:, :3]


@pytest.mark.parametrize("spacing, shape, thick", [
    ((1.0, 1.0, 5.0), (20, 18, 6), True),
    ((6.0, 0.9, 0.9), (6, 18, 20), True),
    ((1.0, 1.0, 1.5), (20, 18, 6), False),  # exactly 1.5x: near-isotropic
    ((1.0, 1.0, 1.0), (20, 18, 6), False),
    ((1.0, 1.0, 5.0), (20, 18, 1), False),  # one slice
    ((1.0, 3.0, 3.2), (20, 18, 6), False),  # two thick axes
])
def test_the_panel_offers_upsampling_exactly_where_the_library_accepts_a_thick_stack(scene, spacing, shape, thick):
    node = add_stack(scene, shape=shape, spacing=spacing)
    assert grid.is_thick_stack(node) is thick
    volume = Volume(np.ones(shape, np.float32), Geometry(shape, spacing, (0, 0, 0), np.eye(3)))
    if thick:
        assert thick_stack(volume).axis == grid.thick_slice_axis(node)
    else:
        with pytest.raises(InputError):
            thick_stack(volume)
    assert not grid.is_thick_stack(None)


def test_the_command_line_and_the_frozen_request(scene, tmp_path):
    node = add_stack(scene)
    parameters = SimpleNamespace(inputVolume=node, device="cpu")
    request = UpsampleRequest.from_parameters(parameters)
    assert request == UpsampleRequest(node.GetID(), "cpu", None, None)
    arguments = cli.upsample_arguments(tmp_path, request.device, request.method)
    assert arguments == ["upsample", str(tmp_path / cli.INPUT_NAME), "-o", str(tmp_path / cli.UPSAMPLED_NAME), "--progress", "json"]
    model = cli.upsample_arguments(tmp_path, "gpu", "xdiffusion", "/models/x")
    assert model[-6:] == ["--method", "xdiffusion", "--device", "cuda", "--model", "/models/x"]
    flat = add_stack(scene, "T1", spacing=(1.0, 1.0, 1.2))
    with pytest.raises(ValueError, match="not a thick-slice stack"):
        UpsampleRequest.from_parameters(SimpleNamespace(inputVolume=flat, device="cpu"))


def test_the_panel_wires_the_button_next_to_reconstruct():
    ui = (ROOT / "XDiffusion" / "Resources" / "UI" / "XDiffusion.ui").read_text(encoding="utf-8")
    apply_at, upsample_at = ui.index('name="applyButton"'), ui.index('name="upsampleButton"')
    between = ui[apply_at:upsample_at]
    assert "Upsample to isotropic" in ui and between.count("<layout") == 0  # the same row, right after it
    assert 'self.ui.upsampleButton.connect("clicked(bool)", self.onUpsampleButton)' in SOURCE
    assert "grid.is_thick_stack(parameters.inputVolume)" in SOURCE


def test_an_upsampling_with_the_fake_cli_makes_a_generated_node_on_its_own_grid(scene, tmp_path):
    node = add_stack(scene)
    log = tmp_path / "commands.jsonl"
    request = UpsampleRequest.from_parameters(SimpleNamespace(inputVolume=node, device="cpu"))
    run = UpsampleRun(scene, request, FAKE_CLI, str(tmp_path), fake_env(log=log, warning="a fallback")).start()
    assert run.wait(60) == DONE, run.log_text
    (command,) = commands(log)
    assert command[0] == "upsample" and command[-2:] == ["--progress", "json"]
    output = run.outputs["image"]
    assert output.GetName() == "FLAIR 5 mm XDiffusion isotropic (generated)"
    assert output.GetAttribute(GENERATED_ATTRIBUTE) == "true" and GENERATED_NOTE in output.GetDescription()
    assert output.GetAttribute("XDiffusion.Method") == "learned" and run.warnings == ["a fallback"]
    assert grid.dimensions(output) == (20, 18, 30) and np.allclose(output.GetSpacing(), 1.0)
    assert not np.allclose(grid.ijk_to_ras(output), grid.ijk_to_ras(node))  # a new grid, not the input's
    np.testing.assert_allclose(ras_box(output), ras_box(node), atol=1e-5)
    assert "upsampled by learned to 1 mm isotropic" in run.status and not run.workdir.exists()
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 2


def test_an_upsampling_cancels_and_a_failure_names_the_node(scene, tmp_path):
    node = add_stack(scene)
    request = UpsampleRequest.from_parameters(SimpleNamespace(inputVolume=node, device="cpu"))
    run = UpsampleRun(scene, request, FAKE_CLI, str(tmp_path), fake_env(steps=1000, step_s=0.05)).start()
    wait_for(lambda: run.fraction and run.fraction > 0, run)
    started = time.monotonic()
    run.cancel()
    wait_for(lambda: not run.active, run, timeout=15)
    assert run.state == CANCELLED and time.monotonic() - started < 10 and run.outputs == {}
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
    node.SetSpacing(1.0, 1.0, 1.2)  # changed after the request was frozen: the CLI refuses it
    failed = UpsampleRun(scene, request, FAKE_CLI, str(tmp_path), fake_env()).start()
    assert failed.wait(60) == FAILED
    assert failed.error.startswith("'FLAIR 5 mm' is already near-isotropic")


def test_a_real_upsampling_of_an_oblique_stack(scene, tmp_path):
    """The real CLI: the output spans the input's slabs exactly, keeps its directions, and its slab means are the
    input slices."""
    angle = np.radians(20.0)
    directions = [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    node = add_stack(scene, shape=(16, 14, 5), spacing=(1.2, 1.2, 6.0), directions=directions)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    request = UpsampleRequest.from_parameters(SimpleNamespace(inputVolume=node, device="cpu"))
    run = UpsampleRun(scene, request, REAL_CLI, str(tmp_path), fake_env()).start()
    assert run.wait(120) == DONE, run.log_text
    output = run.outputs["image"]
    assert grid.dimensions(output) == (16, 14, 25) and np.allclose(output.GetSpacing(), 1.2)
    np.testing.assert_allclose(ras_box(output), ras_box(node), atol=1e-4)
    np.testing.assert_allclose(grid.ijk_to_ras(output)[:3, :3] / 1.2, grid.ijk_to_ras(node)[:3, :3] / [1.2, 1.2, 6.0], atol=1e-6)
    assert output.GetTransformNodeID() == transform.GetID()
    assert output.GetAttribute("XDiffusion.Method") == "learned" and "(generated)" in output.GetName()
    fine = slicer.util.arrayFromVolume(output).astype(np.float64)  # (k, j, i): 5 slabs of 5 slices
    thick = slicer.util.arrayFromVolume(node).astype(np.float64)
    np.testing.assert_allclose(fine.reshape(5, 5, 14, 16).mean(axis=1), thick, atol=1e-3 * thick.max())
