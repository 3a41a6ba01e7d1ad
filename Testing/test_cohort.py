"""`xdiffusion reconstruct-cohort` with a tiny model: outputs written, reruns skip finished volumes, bad files become
failed rows of the summary (not a dead cohort) and make the exit code non-zero; CSV inputs; two CPU processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import oriented_volume, smooth_head
from test_pipeline import save_tiny_model
from xdiffusion.cli import main
from xdiffusion.cohort import SUMMARY_NAME, list_cohort
from xdiffusion.io import read_volume, write_volume


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", views=1, steps=1)


@pytest.fixture
def cohort(tmp_path) -> Path:
    folder = tmp_path / "cohort"
    folder.mkdir()
    for number in range(3):
        array = (smooth_head((16, 18, 14), seed=number) * 3).astype(np.int16)
        write_volume(oriented_volume(array, np.eye(3)), folder / f"case{number}.nii.gz")
    return folder


def summary(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / SUMMARY_NAME, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cohort_writes_every_output_and_a_summary(tmp_path, cohort, model_dir, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct-cohort", str(cohort), "-o", str(out), "--model", str(model_dir), "--views", "1", "--steps", "1"]) == 0
    rows = summary(out)
    assert [Path(r["input"]).name for r in rows] == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    assert {r["status"] for r in rows} == {"done"} and all(float(r["seconds"]) > 0 for r in rows)
    for row in rows:
        written, source = read_volume(row["output"]), read_volume(row["input"])
        assert written.geometry.same_as(source.geometry, atol=1e-5)
        middle = source.array.shape[2] // 2
        np.testing.assert_array_equal(written.array[:, :, middle], source.array[:, :, middle])
    printed = capsys.readouterr().out
    assert "3 volumes: 3 done, 0 skipped, 0 failed" in printed and SUMMARY_NAME in printed


def test_rerun_skips_finished_outputs(tmp_path, cohort, model_dir):
    out = tmp_path / "out"
    arguments = ["reconstruct-cohort", str(cohort), "-o", str(out), "--model", str(model_dir), "--method", "extrude"]
    assert main(arguments) == 0
    first = out / "case1_xdiffusion.nii.gz"
    stamp = first.stat().st_mtime_ns
    (out / "case2_xdiffusion.nii.gz").unlink()  # as if the first run had been killed before case2
    assert main(arguments) == 0
    rows = {Path(r["input"]).name: r["status"] for r in summary(out)}
    assert rows == {"case0.nii.gz": "skipped", "case1.nii.gz": "skipped", "case2.nii.gz": "done"}
    assert first.stat().st_mtime_ns == stamp and (out / "case2_xdiffusion.nii.gz").is_file()


def test_bad_files_are_reported_and_the_rest_still_run(tmp_path, cohort, model_dir, capsys):
    (cohort / "broken.nii.gz").write_bytes(b"not a nifti at all")
    constant = oriented_volume(np.zeros((12, 12, 10), dtype=np.int16), np.eye(3))
    write_volume(constant, cohort / "empty.nii.gz")
    out = tmp_path / "out"
    code = main(["reconstruct-cohort", str(cohort), "-o", str(out), "--model", str(model_dir), "--views", "1", "--steps", "1"])
    assert code != 0
    rows = {Path(r["input"]).name: r for r in summary(out)}
    assert rows["broken.nii.gz"]["status"] == "failed" and rows["broken.nii.gz"]["message"]
    assert rows["empty.nii.gz"]["status"] == "failed" and "constant" in rows["empty.nii.gz"]["message"]
    assert all(rows[f"case{i}.nii.gz"]["status"] == "done" for i in range(3))
    assert not (out / "broken_xdiffusion.nii.gz").exists()
    assert "2 failed" in capsys.readouterr().out


def test_csv_lists_inputs_relative_to_itself_with_optional_outputs(tmp_path, cohort):
    table = tmp_path / "cohort.csv"
    table.write_text("input,output\ncohort/case0.nii.gz,first.nii.gz\ncohort/case2.nii.gz,\n")
    items = list_cohort(table, tmp_path / "out")
    assert [Path(i.input) for i in items] == [cohort / "case0.nii.gz", cohort / "case2.nii.gz"]
    assert [Path(i.output) for i in items] == [tmp_path / "out" / "first.nii.gz", tmp_path / "out" / "case2_xdiffusion.nii.gz"]


def test_two_cpu_processes_share_the_cohort(tmp_path, cohort, model_dir):
    pytest.importorskip("accelerate")
    if __import__("torch").cuda.is_available():
        pytest.skip("CPU sharding test; on a GPU machine the processes would take GPUs")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "xdiffusion.cli", "reconstruct-cohort", str(cohort),
                          "-o", str(out), "--model", str(model_dir), "--views", "1", "--steps", "1"],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = summary(out)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    assert "[process 0]" in run.stderr and "[process 1]" in run.stderr
    assert run.stdout.count("3 volumes: 3 done") == 1  # one table, printed by the main process
