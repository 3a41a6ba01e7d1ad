"""Interrupting `xdiffusion reconstruct` as a real process: SIGKILL at many moments never leaves a partial output,
SIGTERM and SIGINT cancel cleanly (exit 130, one `error:` line, no output, no temporary file).

What SIGKILL can leave: nothing runs after it, so a write in progress leaves its hidden temporary
(`.NAME.HOST-PID.RANDOM.partSUFFIX`) beside the output; the output itself is the old file or nothing. The next write
of the same output deletes such a temporary once its process is gone (tested below).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_head
from fuzz_helpers import CHILD_ENV, save_tiny_model

from xdiffusion.io import Geometry, Volume, read_image, write_volume


def _start(argv, stderr_path: Path) -> subprocess.Popen:
    """The CLI as a child that takes Ctrl-C like a terminal would (SIGINT not inherited as ignored)."""
    return subprocess.Popen([sys.executable, "-m", "xdiffusion.cli", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=open(stderr_path, "w"), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            env=CHILD_ENV)


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    """Incompressible float32 slices, so writing the 112 x 112 x 80 output takes a noticeable while."""
    array = np.random.default_rng(0).random((112, 112, 80), dtype=np.float32)
    return write_volume(Volume(array, Geometry(array.shape, (1, 1, 1), (0, 0, 0), np.eye(3))),
                        tmp_path_factory.mktemp("signals") / "big.nii.gz")


def test_sigkill_at_any_moment_leaves_the_old_output_or_a_complete_new_one(tmp_path, big_input):
    """Reconstructions into separate folders, each holding an old output, killed at different moments: during
    start-up, at a fixed delay, when the temporary appears, while it is being written, just after the process
    reported success. Afterwards each output is the old file byte for byte or a complete new one; the next run into
    a folder with a stale temporary removes it and gives the reference for "complete"."""
    old = write_volume(Volume(np.ones((4, 4, 4), np.int16), Geometry((4, 4, 4), (1, 1, 1), (0, 0, 0), np.eye(3))),
                       tmp_path / "old.nii.gz").read_bytes()
    moments = ["0.2 s", "1.5 s", "temporary appears", "temporary half written", "at exit"]
    runs = []
    for number, moment in enumerate(moments):
        folder = tmp_path / f"run{number}"
        folder.mkdir()
        (folder / "out.nii.gz").write_bytes(old)
        process = _start(["reconstruct", big_input, "-o", folder / "out.nii.gz", "--method", "extrude", "--quiet"],
                         folder.with_suffix(".err"))
        runs.append({"moment": moment, "folder": folder, "process": process, "started": time.monotonic()})
    deadline = time.monotonic() + 240
    while any(run["process"].poll() is None for run in runs):
        assert time.monotonic() < deadline, "the reconstructions did not finish"
        for run in runs:
            if run["process"].poll() is not None or run["moment"] == "at exit":
                continue
            moment, parts = run["moment"], [p for p in run["folder"].iterdir() if ".part" in p.name]
            if moment.endswith(" s"):
                due = time.monotonic() - run["started"] >= float(moment.split()[0])
            elif moment == "temporary appears":
                due = bool(parts)
            else:
                due = any(p.stat().st_size > 400_000 for p in parts)
            if due:
                run["process"].send_signal(signal.SIGKILL)
        time.sleep(0.002)
    outcomes = {}
    for run in runs:
        output = run["folder"] / "out.nii.gz"
        outcomes[run["moment"]] = "old file intact" if output.read_bytes() == old else read_image(output).array
        stray = [p.name for p in run["folder"].iterdir() if p.name not in ("out.nii.gz", "out.json")]
        assert all(name.startswith((".out.nii.gz.", ".out.json.")) and ".part" in name for name in stray), stray
        if (run["folder"] / "out.json").exists():  # a provenance sidecar only ever stands beside the new volume
            assert not isinstance(outcomes[run["moment"]], str), run["moment"]
    assert outcomes["temporary half written"] == "old file intact"
    leftover = next((r for r in runs if _parts(r["folder"])), None)
    assert leftover is not None, "no kill landed while writing"
    again = subprocess.run([sys.executable, "-m", "xdiffusion.cli", "reconstruct", big_input, "-o",
                            leftover["folder"] / "out.nii.gz", "--method", "extrude", "--quiet"],
                           capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=240)
    assert again.returncode == 0, again.stderr
    assert _parts(leftover["folder"]) == []
    expected = read_image(leftover["folder"] / "out.nii.gz").array
    for moment, outcome in outcomes.items():
        if not isinstance(outcome, str):
            np.testing.assert_array_equal(outcome, expected)  # a new file is complete: identical to a full run
            outcomes[moment] = "complete new file"
    assert outcomes["at exit"] == "complete new file"
    print("SIGKILL outcomes:", outcomes)


@pytest.fixture(scope="module")
def slow_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    model = save_tiny_model(folder / "tiny")
    source = write_volume(Volume(smooth_head((20, 22, 18)), Geometry((20, 22, 18), (1, 1, 1), (0, 0, 0), np.eye(3))),
                          folder / "input.nii.gz")
    return model, source


def test_sigterm_and_sigint_cancel_cleanly(tmp_path, slow_setup):
    """Two tiny-model reconstructions made slow (many steps), side by side, signalled once sampling has started:
    SIGTERM (text progress bar) and SIGINT (JSON progress, as the Slicer module reads it)."""
    model, source = slow_setup
    runs = []
    for signum, mode in ((signal.SIGTERM, "text"), (signal.SIGINT, "json")):
        out = tmp_path / f"out-{mode}"
        out.mkdir()
        err = tmp_path / f"stderr-{mode}.txt"
        process = _start(["reconstruct", source, "-o", out / "v.nii.gz", "--segmentation-output", out / "s.nii.gz",
                          "--model", model, "--steps", "2000", "--views", "3", "--progress", mode], err)
        runs.append((signum, mode, out, err, process))
    try:
        deadline = time.monotonic() + 240
        waiting = list(runs)
        while waiting:
            assert time.monotonic() < deadline
            for run in list(waiting):
                signum, _, _, err, process = run
                assert process.poll() is None, err.read_text(encoding="utf-8")
                if "step " in err.read_text(encoding="utf-8"):  # the sampler is running
                    process.send_signal(signum)
                    waiting.remove(run)
            time.sleep(0.01)
        for _, _, _, err, process in runs:
            assert process.wait(timeout=120) == 130, err.read_text(encoding="utf-8")
    finally:
        for *_, process in runs:
            if process.poll() is None:
                process.kill()
    for _, mode, out, err, _ in runs:
        text = err.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert errors == ["error: cancelled; no output was written"] and lines[-1] == errors[0], text
        assert "Traceback" not in text
        if mode == "json":
            assert all(json.loads(line)["stage"] for line in lines[:-1])
        assert list(out.iterdir()) == []


def test_sigterm_while_writing(tmp_path, big_input):
    """SIGTERM as the temporary appears: either the write is undone (130, nothing left) or it was already complete
    (0); never a temporary or a partial output."""
    out = tmp_path / "out"
    out.mkdir()
    err = tmp_path / "stderr.txt"
    process = _start(["reconstruct", big_input, "-o", out / "v.nii.gz", "--method", "extrude", "--quiet"], err)
    deadline = time.monotonic() + 240
    while not _parts(out):
        assert process.poll() is None and time.monotonic() < deadline, err.read_text(encoding="utf-8")
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    assert _parts(out) == []
    if code == 130:
        assert list(out.iterdir()) == [] and err.read_text(encoding="utf-8").strip() == "error: cancelled; no output was written"
    else:
        assert code == 0 and read_image(out / "v.nii.gz").geometry.shape == (112, 112, 80)


def test_outputs_of_one_run_are_committed_together(tmp_path, monkeypatch):
    """Volume, segmentation and uncertainty are one unit: a cancel while the second is written leaves all three old
    files and no temporary; once the renames begin, a cancel request is ignored so the set is never split."""
    from xdiffusion import cli, errors, io

    volume = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), Geometry((2, 3, 4), (1, 1, 1), (0, 0, 0), np.eye(3)))
    paths = [tmp_path / "v.nii.gz", tmp_path / "s.nrrd", tmp_path / "u.mha"]
    for path in paths:
        path.write_bytes(b"old " + path.name.encode())
    written = []
    real = io._write_image

    def cancelled_on_the_second(image, target, temporary):
        written.append(target)
        if len(written) == 2:
            raise errors.Cancelled("SIGTERM")
        real(image, target, temporary)

    monkeypatch.setattr(io, "_write_image", cancelled_on_the_second)
    errors.reset_commit()
    with pytest.raises(errors.Cancelled):
        io.write_volumes([(volume, path) for path in paths])
    assert [p.read_bytes() for p in paths] == [b"old " + p.name.encode() for p in paths]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert not errors.commit_started()

    monkeypatch.setattr(io, "_write_image", real)
    io.write_volumes([(volume, path) for path in paths])
    assert errors.commit_started() and cli._raise_cancelled(signal.SIGTERM, None) is None  # ignored from now on
    assert all(np.array_equal(read_image(p).array, volume.array) for p in paths)
    errors.reset_commit()
    with pytest.raises(errors.Cancelled):
        cli._raise_cancelled(signal.SIGTERM, None)
