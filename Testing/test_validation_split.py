"""benchmarks/validation_split.py on a small synthetic head: rows for the baselines, means that do not let signed
brain-volume errors cancel, and one error line for bad arguments."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from conftest import smooth_head
from xdiffusion.io import Geometry, Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import validation_split as bench  # noqa: E402


def test_brain_volume_errors_of_opposite_sign_do_not_cancel_in_the_mean():
    volumes = [{"psnr": 10.0, "psnr_mask": 9.0, "ssim": 0.5, "sharpness": 0.8, "brain_volume_rel_err": error, "seconds": 1.0}
               for error in (0.2, -0.2)]
    means = bench.row_means(volumes)
    assert means["brain_volume_abs_err"] == 0.2 and means["psnr"] == 10.0 and "brain_volume_rel_err" not in means


def test_the_baselines_are_scored_on_each_volume_and_written(tmp_path, monkeypatch, capsys):
    array = smooth_head((28, 30, 26), seed=3)
    geometry = Geometry(array.shape, (1.2, 1.2, 1.2), (0.0, 0.0, 0.0), np.eye(3))
    image, brain = Volume(array, geometry), Volume((array > 0).astype(np.uint8), geometry)
    monkeypatch.setattr(bench, "validation_volumes", lambda count, side: [("toy~validation-0", "t1", image, brain)])
    assert bench.main(["--output", str(tmp_path / "result")]) == 0
    written = json.loads((tmp_path / "result.json").read_text())
    assert [row["name"] for row in written["rows"]] == ["extrude", "atlas"] and written["volumes"] == ["toy~validation-0"]
    extrude = written["rows"][0]
    assert round(extrude["volumes"][0]["psnr"], 4) == extrude["psnr"] and extrude["brain_volume_abs_err"] >= 0


def test_bad_arguments_end_with_one_error_line(capsys):
    assert bench.main(["--settings", "atlas0.3"]) == 2
    assert bench.main(["--model", "nameless"]) == 2
    assert bench.main(["--threads", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
