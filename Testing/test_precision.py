"""What the networks compute in: `--precision auto` takes bfloat16 only where the hardware runs it natively (a GPU, or
a CPU with AMX / AVX512-BF16), float32 elsewhere; an explicit precision overrides that; the sidecar records which ran.
The rest of the suite pins auto to float32 (conftest), so that its numbers do not depend on the CI machine's CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import oriented_volume, smooth_head
from fuzz_helpers import assert_refused, run_main, save_tiny_model
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)

from xdiffusion import cli, compute
from xdiffusion.errors import InputError
from xdiffusion.io import read_volume, write_volume
from xdiffusion.provenance import sidecar_path

cpu_runs_bfloat16 = compute.cpu_runs_bfloat16  # the real one: conftest pins it to False for every test
FLAGS_WITHOUT = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw\n"


@pytest.mark.parametrize("flags, native", [(FLAGS_WITHOUT, False), (FLAGS_WITHOUT.replace("avx512bw", "avx512bw avx512_bf16"), True),
                                           (FLAGS_WITHOUT.replace("avx512bw", "amx_tile amx_bf16"), True),
                                           ("flags\t\t: avx512_bf16x\n", False)])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + flags, encoding="utf-8")
    assert cpu_runs_bfloat16(cpuinfo) is native


def test_no_cpuinfo_means_no_native_bfloat16(tmp_path):
    assert cpu_runs_bfloat16(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [False, True])
def test_auto_takes_bfloat16_on_the_cpu_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(compute, "cpu_runs_bfloat16", lambda: native)
    assert compute.choose_device("cpu") == (torch.device("cpu"), torch.bfloat16 if native else torch.float32)
    assert compute.choose_device("cpu", "float32")[1] == torch.float32
    assert compute.choose_device("cpu", "bfloat16")[1] == torch.bfloat16


def test_an_unknown_precision_is_refused():
    with pytest.raises(InputError, match="precision must be one of auto, float32, bfloat16"):
        compute.choose_device("cpu", "float16")


def test_the_cli_offers_the_precisions_compute_knows():
    assert cli.PRECISIONS == compute.PRECISIONS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("precision") / "tiny", default_sampling={"views": 2, "steps": 2})


@pytest.fixture
def volume_path(tmp_path) -> Path:
    array = smooth_head((20, 22, 18))
    return write_volume(oriented_volume(array, np.eye(3), spacing=(4.0, 4.0, 4.0)), tmp_path / "input.nii.gz")


def reconstruct(volume_path: Path, output: Path, model_dir: Path, *options: str) -> tuple[np.ndarray, dict]:
    code, _, err = run_main(["reconstruct", volume_path, "-o", output, "--model", model_dir, "--quiet", *options])
    assert code == 0 and err == "", err
    return read_volume(output).array, json.loads(sidecar_path(output).read_text(encoding="utf-8"))


def test_bfloat16_runs_close_to_float32_and_the_sidecar_says_which_ran(tmp_path, model_dir, volume_path):
    single, single_record = reconstruct(volume_path, tmp_path / "auto.nii.gz", model_dir)  # auto, pinned to float32 here
    half, half_record = reconstruct(volume_path, tmp_path / "bf16.nii.gz", model_dir, "--precision", "bfloat16")
    assert single_record["Sampling"]["precision"] == "float32" and half_record["Sampling"]["precision"] == "bfloat16"
    assert np.isfinite(half).all() and not np.array_equal(half, single)  # it really ran in another precision
    brain = single > 0
    assert np.abs(half - single)[brain].mean() < 0.05 * np.abs(single[brain]).mean()


def test_a_precision_the_cpu_cannot_run_is_refused_in_one_line(tmp_path, model_dir, volume_path):
    assert_refused(["reconstruct", volume_path, "-o", tmp_path / "out.nii.gz", "--model", model_dir, "--precision", "float16"],
                   tmp_path, fragments=["--precision"])


def test_a_bfloat16_run_writes_nothing_but_its_progress_to_stderr(tmp_path, model_dir, volume_path):
    """diffusers warns on every dtype cast; in a fresh process that line would reach the user (and break JSON progress)."""
    run = subprocess.run([sys.executable, "-m", "xdiffusion.cli", "reconstruct", str(volume_path), "-o", str(tmp_path / "out.nii.gz"),
                          "--model", str(model_dir), "--precision", "bfloat16", "--progress", "json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("wrote ") and all(json.loads(line)["stage"] for line in lines[:-1]), run.stderr
