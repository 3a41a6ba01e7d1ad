"""The module's child processes and jobs: cancel without waiting, the whole process tree ended, the console hidden
on Windows, model cards, warnings, frozen requests and the scene closing mid-run.

Most runs use Testing/slicer_fake_cli.py, which speaks the CLI interface the module codes against, including what
issue 16 adds to the library (warning events, sidecars, `model-info`); two use the real CLI and a tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (`make install` adds it) for Slicer's MRML")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

from XDiffusionModuleLib import childprocess, cli, grid, scene as xs  # noqa: E402
from XDiffusionModuleLib.jobs import CANCELLED, CANCELLING, DONE, FAILED  # noqa: E402
from XDiffusionModuleLib.runs import (CompareRequest, ComparisonRun, ModelInfoQuery, ReconstructionRun, RunRequest,
                                      model_key)  # noqa: E402
from conftest import smooth_head  # noqa: E402

FAKE_CLI = [sys.executable, str(Path(__file__).resolve().parent / "slicer_fake_cli.py")]
REAL_CLI = [sys.executable, "-m", "xdiffusion.cli"]


def fake_env(**settings) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FAKE_XDIFFUSION_")}
    env["OMP_NUM_THREADS"] = "1"
    env.update({f"FAKE_XDIFFUSION_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    yield scene
    del colors


def add_volume(scene, name="T1", shape=(20, 18, 14)):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.transpose(smooth_head(shape))))
    node.SetSpacing(1.0, 1.1, 2.0)
    node.SetOrigin(-10.0, 4.0, 7.0)
    node.CreateDefaultDisplayNodes()
    return node


def panel(node, **changes):
    """The values the panel's parameter node holds (slicer-core has no parameterNodeWrapper: the request reads the
    same attribute names from this plain namespace)."""
    values = dict(inputVolume=node, plane="axial", sliceIndex=7, slicePosition=0.5, inputSliceCount=1, sliceSpread="even",
                  quality="fast", device="cpu", outputVolume=None, outputSegmentation=None, outputUncertainty=None)
    values.update(changes)
    return SimpleNamespace(**values)


def wait_for(predicate, job=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        if job is not None:
            job.poll()
        time.sleep(0.02)


def commands(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# --- cancel (item 4) ----------------------------------------------------------------------------------------------

def test_cancel_returns_at_once_and_ends_the_whole_tree_even_when_sigterm_is_ignored(tmp_path, monkeypatch):
    """The old cancel waited twice 5 s on the GUI thread; and a launcher (PythonSlicer) that keeps its interpreter
    child in another process group survived `terminate()`."""
    monkeypatch.setattr(childprocess, "CANCEL_GRACE_S", 1.0)
    pid_file = tmp_path / "worker.pid"
    process = childprocess.ChildProcess([*FAKE_CLI, "reconstruct", "in.nrrd", "-o", "out.nrrd"],
                                        fake_env(launcher=1, ignore_sigterm=1, steps=1000, step_s=0.05, pid_file=pid_file)).start()
    wait_for(pid_file.exists)
    worker = int(pid_file.read_text())
    assert worker != process.pid and psutil.pid_exists(worker)
    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 0.5  # no waiting on the GUI thread
    assert not process.finished
    wait_for(lambda: process.finished, process, timeout=childprocess.CANCEL_GRACE_S + 10)
    elapsed = time.monotonic() - started
    assert childprocess.CANCEL_GRACE_S - 0.5 < elapsed < childprocess.CANCEL_GRACE_S + 5  # killed after the grace time
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)


def test_a_cancelled_run_stops_within_the_grace_time_and_leaves_nothing(scene, tmp_path):
    node = add_volume(scene)
    log = tmp_path / "commands.jsonl"
    request = RunRequest(node.GetID(), "axial", (7,), None, quality="fast", device="cpu")
    run = ReconstructionRun(scene, request, FAKE_CLI, temp_root=str(tmp_path),
                            env=fake_env(log=log, steps=1000, step_s=0.05, launcher=1)).start()
    wait_for(lambda: run.fraction and run.fraction > 0, run)
    started = time.monotonic()
    run.cancel()
    assert run.state == CANCELLING and run.status == "Cancelling…" and time.monotonic() - started < 0.5
    wait_for(lambda: not run.active, run, timeout=15)
    assert run.state == CANCELLED and run.status.startswith("Cancelled")
    assert time.monotonic() - started < childprocess.CANCEL_GRACE_S + 3
    assert not run.workdir.exists() and run.outputs == {}
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1


def test_abandoning_a_run_kills_its_tree_at_once_and_removes_its_files(scene, tmp_path):
    """What the panel's cleanup() does when Slicer closes the module mid-run."""
    node = add_volume(scene)
    pid_file = tmp_path / "worker.pid"
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(launcher=1, ignore_sigterm=1, steps=1000, step_s=0.05, pid_file=pid_file)).start()
    wait_for(pid_file.exists, run)
    worker = int(pid_file.read_text())
    started = time.monotonic()
    run.abandon()
    assert time.monotonic() - started < 0.5 and run.state == CANCELLED and not run.workdir.exists()
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, timeout=5)


def test_the_windows_path_hides_the_console_and_uses_the_same_tree_cancel(monkeypatch, tmp_path):
    class StartupInfo:
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, None

    monkeypatch.setattr(subprocess, "STARTUPINFO", StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "STARTF_USESHOWWINDOW", 1, raising=False)
    monkeypatch.setattr(subprocess, "SW_HIDE", 0, raising=False)
    options = childprocess.popen_options(windows=True)
    assert set(options) == {"startupinfo"} and options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert childprocess.popen_options(windows=False) == {"start_new_session": True}

    seen = {}
    real_popen = subprocess.Popen

    def popen(command, **kwargs):  # record what Windows would get, run it here without the Windows-only argument
        seen.update(kwargs)
        kwargs.pop("startupinfo")
        return real_popen(command, **kwargs)

    monkeypatch.setattr(childprocess, "on_windows", lambda: True)
    monkeypatch.setattr(childprocess.subprocess, "Popen", popen)
    pid_file = tmp_path / "worker.pid"
    process = childprocess.ChildProcess([*FAKE_CLI, "reconstruct", "in", "-o", "out"],
                                        fake_env(launcher=1, steps=1000, step_s=0.05, pid_file=pid_file)).start()
    assert isinstance(seen["startupinfo"], StartupInfo) and "start_new_session" not in seen
    wait_for(pid_file.exists)
    worker = int(pid_file.read_text())
    process.cancel()  # psutil ends the tree: the worker, then its launcher
    wait_for(lambda: process.finished, process, timeout=childprocess.CANCEL_GRACE_S + 10)
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)


# --- model cards, warnings and outputs (issue 16 items 3 and 7) --------------------------------------------------

def test_a_model_that_does_not_segment_tumours_gets_no_segmentation_request(scene, tmp_path):
    node = add_volume(scene)
    log = tmp_path / "commands.jsonl"
    cards: dict = {}
    request = RunRequest.from_parameters(panel(node))
    run = ReconstructionRun(scene, request, FAKE_CLI, cards, str(tmp_path), fake_env(log=log, segments=0)).start()
    assert run.wait(60) == DONE, run.log_text
    info, reconstruct = commands(log)
    assert info[:1] == ["model-info"] and "--json" in info
    assert reconstruct[0] == "reconstruct" and "--segmentation-output" not in reconstruct
    assert cards == {model_key(None): {"name": "fake model", "segments_tumours": False}}
    assert set(run.outputs) == {"image", "uncertainty"} and run.segments_tumours is False
    assert "does not segment tumours" in run.status
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0  # no empty segmentation
    again = ReconstructionRun(scene, request, FAKE_CLI, cards, str(tmp_path), fake_env(log=log)).start()
    assert again.wait(60) == DONE
    assert [c[0] for c in commands(log)] == ["model-info", "reconstruct", "reconstruct"]  # the card is read once


def test_a_model_that_segments_tumours_gets_its_labels_loaded(scene, tmp_path):
    node = add_volume(scene)
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(segments=1)).start()
    assert run.wait(60) == DONE, run.log_text
    segmentation = run.outputs["segmentation"].GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == [n for _, n, _ in xs.BRATS_SEGMENTS]
    assert run.outputs["segmentation"].GetName() == "T1 XDiffusion tumour (generated)"


def test_warnings_are_shown_during_the_run_and_kept_on_every_output(scene, tmp_path):
    node = add_volume(scene)
    message = "registration to the atlas failed; started from the extruded slice"
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(warning=message, steps=3, step_s=0.3)).start()
    wait_for(lambda: run.warnings, run)
    assert run.active and run.warnings == [message]  # on the panel while the run goes on
    assert run.wait(60) == DONE
    assert run.warnings == [message]
    for output in run.outputs.values():
        assert output.GetAttribute(xs.WARNINGS_ATTRIBUTE) == message and message in output.GetDescription()
        assert output.GetAttribute("XDiffusion.Model") == "fake model"
        assert json.loads(output.GetAttribute("XDiffusion.Sampling")) == {"views": 2, "steps": 8}


def test_a_library_without_model_info_fails_the_run_with_its_reason(scene, tmp_path):
    node = add_volume(scene)
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(no_model_info=1)).start()
    assert run.wait(60) == FAILED
    assert run.error.startswith("Could not read the model card:") and "model-info" in run.error
    assert not run.workdir.exists()


def test_model_info_query(tmp_path):
    query = ModelInfoQuery(FAKE_CLI, "/some/model", fake_env(segments=1)).start()
    assert query.wait(30) == DONE and query.info["segments_tumours"] is True
    bundled = ModelInfoQuery(REAL_CLI, None, fake_env()).start()  # the real card of the shipped model
    assert bundled.wait(60) == DONE, bundled.log_text
    assert bundled.info["segments_tumours"] in (True, False, None) and bundled.info["sha256_ok"] is True


# --- inputs frozen at the start (item 8) --------------------------------------------------------------------------

def test_the_request_is_frozen_when_reconstruct_is_clicked(scene, tmp_path):
    node = add_volume(scene)
    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output")
    parameters = panel(node, outputVolume=chosen, sliceIndex=7)
    log = tmp_path / "commands.jsonl"
    run = ReconstructionRun(scene, RunRequest.from_parameters(parameters), FAKE_CLI, {}, str(tmp_path),
                            fake_env(log=log, steps=4, step_s=0.2)).start()
    other_input = add_volume(scene, "other")
    other_output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "another output")
    parameters.inputVolume, parameters.outputVolume, parameters.sliceIndex = other_input, other_output, 2  # mid-run
    assert run.wait(60) == DONE, run.log_text
    assert run.outputs["image"] is chosen and other_output.GetImageData() is None
    assert slicer.util.arrayFromVolume(chosen).shape == slicer.util.arrayFromVolume(node).shape
    reconstruct = commands(log)[-1]
    assert reconstruct[reconstruct.index("--slice-index") + 1] == "7"
    assert chosen.GetAttribute("XDiffusion.InputVolume") == "T1"


def test_closing_the_scene_cancels_the_run(scene, tmp_path):
    node = add_volume(scene)
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(steps=1000, step_s=0.05)).start()
    wait_for(lambda: run.fraction, run)
    scene.Clear(0)
    assert run.state == CANCELLING
    wait_for(lambda: not run.active, run, timeout=15)
    assert run.state == CANCELLED and not run.workdir.exists()
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


def test_closing_the_scene_cancels_a_comparison(scene, tmp_path):
    node = add_volume(scene)
    comparison = ComparisonRun(scene, CompareRequest(node.GetID(), node.GetID()), FAKE_CLI, str(tmp_path),
                               fake_env(steps=100, step_s=0.1)).start()
    scene.Clear(0)
    wait_for(lambda: not comparison.active, comparison, timeout=15)
    assert comparison.state == CANCELLED and not comparison.workdir.exists()
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0


def test_a_removed_input_fails_the_run_instead_of_loading(scene, tmp_path):
    node = add_volume(scene)
    run = ReconstructionRun(scene, RunRequest.from_parameters(panel(node)), FAKE_CLI, {}, str(tmp_path),
                            fake_env(steps=3, step_s=0.2)).start()
    scene.RemoveNode(node)
    assert run.wait(60) == FAILED and "removed during the run" in run.error


# --- the real CLI --------------------------------------------------------------------------------------------------

def test_a_bad_argument_surfaces_the_clis_error_line(scene, tmp_path):
    """A usage error fails before torch is imported, so this stays fast."""
    node = add_volume(scene)
    request = RunRequest(node.GetID(), "axial", (99,), None, method="extrude")
    run = ReconstructionRun(scene, request, REAL_CLI, {}, str(tmp_path), fake_env()).start()
    assert run.wait(60) == FAILED
    assert run.error.startswith("slice index 99 is outside 0..13") and "error:" not in run.error
    crashed = cli.error_message(-11, ["Segmentation fault"])
    assert "exit code -11" in crashed and "Segmentation fault" in crashed
    assert cli.format_eta(75) == "about 1 min 15 s left" and cli.format_eta(None) == "estimating time left"
    assert cli.parse_event('{"event": "warning", "message": "m"}') == cli.CliWarning("m")
    assert cli.parse_event('{"progress": 0.25, "eta_s": 75, "stage": "view 1/4"}') == cli.Progress(0.25, 75, "view 1/4")
    assert cli.parse_event("wrote out.nii.gz") is None and cli.parse_event("{not json") is None
    assert cli.sidecar_path(Path("x/recon.nii.gz")) == Path("x/recon.json")


def tiny_model_folder(folder: Path) -> Path:
    from model_fixtures import save_untrained
    from xdiffusion.model import preset

    return save_untrained(folder, preset("tiny"), {"steps": 0}, seed=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny")


def test_a_tiny_model_through_the_real_cli(scene, tiny_model, tmp_path):
    """Card, reconstruction and outputs, end to end: labels are asked for unless the card says the model makes none."""
    node = add_volume(scene)
    cards: dict = {}
    request = RunRequest.from_parameters(panel(node), model_dir=str(tiny_model))
    run = ReconstructionRun(scene, request, REAL_CLI, cards, str(tmp_path), fake_env()).start()
    fractions = []
    while run.active:
        run.poll()
        fractions.append(run.fraction)
        time.sleep(0.05)
    assert run.state == DONE, run.log_text
    steps = [f for f in dict.fromkeys(fractions) if f]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] == 1.0
    assert ("segmentation" in run.outputs) == (run.segments_tumours is not False)
    for kind in ("image", "uncertainty"):
        np.testing.assert_array_equal(grid.ijk_to_ras(run.outputs[kind]), grid.ijk_to_ras(node))
        assert run.outputs[kind].GetAttribute("XDiffusion.Software")  # from the CLI's provenance sidecar
    assert slicer.util.arrayFromVolume(run.outputs["uncertainty"]).min() >= 0.0


def test_the_real_cli_exits_130_on_cancel(scene, tiny_model, tmp_path):
    node = add_volume(scene)
    workdir = tmp_path / "run"
    workdir.mkdir()
    xs.SceneFiles(scene).write_volume(node, workdir / cli.INPUT_NAME)
    arguments = cli.reconstruct_arguments(workdir, "axial", [7], None, "best", "cpu", str(tiny_model), segmentation=False)
    arguments += ["--steps", "100000"]  # over the preset's: long enough that only a cancel ends it
    process = childprocess.ChildProcess([*REAL_CLI, *arguments], fake_env()).start()
    wait_for(lambda: any(cli.parse_event(line) for line in process.stderr), process, timeout=120)
    started = time.monotonic()
    process.cancel()
    wait_for(lambda: process.finished, process, timeout=30)
    assert process.returncode == cli.CANCELLED_EXIT_CODE, process.stderr
    assert time.monotonic() - started < childprocess.CANCEL_GRACE_S
    assert cli.error_message(process.returncode, process.stderr).startswith("Cancelled")
    assert not (workdir / cli.OUTPUT_NAMES["image"]).exists()
