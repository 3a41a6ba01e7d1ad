"""The `xdiffusion` command as users and the Slicer module call it: outputs, progress lines and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import oriented_volume, smooth_head
from test_pipeline import save_tiny_model
from xdiffusion.cli import main
from xdiffusion.io import GENERATED_DESCRIPTION, read_image, read_volume, write_volume



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", views=2, steps=2)


@pytest.fixture
def volume_path(tmp_path):
    path = tmp_path / "input.nii.gz"
    write_volume(oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.int16), np.diag([-1.0, -1.0, 1.0]), spacing=(1.2, 1.0, 2.5)), path)
    return path


def test_reconstruct_writes_three_generated_outputs_on_the_input_grid(tmp_path, model_dir, volume_path, capsys):
    out, seg, unc = (tmp_path / name for name in ("out.nrrd", "seg.nii.gz", "unc.mha"))
    code = main(["reconstruct", str(volume_path), "-o", str(out), "--segmentation-output", str(seg), "--uncertainty-output", str(unc),
                 "--model", str(model_dir), "--plane", "coronal", "--slice-index", "5", "15", "--progress", "json"])
    assert code == 0
    source = read_volume(volume_path)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines[-1]["progress"] == 1.0 and all({"progress", "eta_s", "stage"} <= set(line) for line in lines)
    assert [line["progress"] for line in lines] == sorted(line["progress"] for line in lines)
    for path in (out, seg, unc):
        written = read_volume(path)
        assert written.geometry.same_as(source.geometry, atol=1e-5)
        assert written.metadata["description"].startswith(GENERATED_DESCRIPTION)
    result = read_volume(out)
    np.testing.assert_array_equal(result.array[:, [5, 15], :], source.array[:, [5, 15], :])
    assert set(np.unique(read_volume(seg).array)) <= {0, 1, 2, 3}


def test_same_seed_gives_the_same_file(tmp_path, model_dir, volume_path):
    for name in ("a.nii.gz", "b.nii.gz"):
        assert main(["reconstruct", str(volume_path), "-o", str(tmp_path / name), "--model", str(model_dir), "--quiet", "--seed", "4"]) == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "a.nii.gz").array, read_volume(tmp_path / "b.nii.gz").array)


def test_atlas_prior_keeps_the_grid_and_the_input_slices(tmp_path, model_dir, volume_path):
    common = ["--model", str(model_dir), "--quiet", "--plane", "axial", "--slice-index", "9", "--strength", "0.5"]
    assert main(["reconstruct", str(volume_path), "-o", str(tmp_path / "atlas.nii.gz"), "--prior", "atlas", *common]) == 0
    assert main(["reconstruct", str(volume_path), "-o", str(tmp_path / "extrude.nii.gz"), "--prior", "extrude", *common]) == 0
    source, from_atlas = read_volume(volume_path), read_volume(tmp_path / "atlas.nii.gz")
    assert from_atlas.geometry.same_as(source.geometry, atol=1e-5)
    np.testing.assert_array_equal(from_atlas.array[:, :, 9], source.array[:, :, 9])
    assert from_atlas.metadata["description"].endswith("(atlas prior 0.5)")
    assert not np.array_equal(from_atlas.array, read_volume(tmp_path / "extrude.nii.gz").array)


def test_single_2d_slice_input(tmp_path, model_dir):
    slice_path = tmp_path / "slice.nrrd"
    array = smooth_head((20, 24, 1))[:, :, 0]
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.T.copy())
    image.SetSpacing((0.9, 0.9))
    sitk.WriteImage(image, str(slice_path))
    assert main(["reconstruct", str(slice_path), "-o", str(tmp_path / "v.nii.gz"), "--model", str(model_dir), "--quiet"]) == 2
    assert main(["reconstruct", str(slice_path), "-o", str(tmp_path / "v.nii.gz"), "--model", str(model_dir), "--quiet",
                 "--plane", "sagittal", "--slice-position", "0.5"]) == 0
    volume = read_volume(tmp_path / "v.nii.gz")
    assert volume.geometry.shape == (20, 24, 24) and np.allclose(volume.geometry.spacing, 0.9, atol=1e-5)
    np.testing.assert_allclose(volume.array[:, :, 12], read_image(slice_path).array[:, :, 0])


@pytest.mark.parametrize("arguments, message", [
    (["--slice-index", "99"], "outside"),
    (["--plane", "oblique"], "invalid choice"),
    (["--method", "interpolate"], "at least 2"),
    (["--modality", "flair"], "not known"),
    (["--method", "extrude", "--segmentation-output", "{tmp}/seg.nii.gz"], "draws no tumour labels of its own"),
    (["--method", "extrude", "--uncertainty-output", "{tmp}/unc.nii.gz"], "makes no uncertainty map"),
    (["--slice-position", "0.3"], "2D"),
    (["--model", "{tmp}"], "not an XDiffusion model folder"),
    (["--strength", "0"], "--strength: must be within (0, 1]"),
    (["--prior", "mean"], "invalid choice"),
    (["--method", "extrude", "--atlas", "{tmp}/t.nii.gz"], "--atlas applies"),
])
def test_bad_arguments_are_one_error_line_and_exit_2(tmp_path, model_dir, volume_path, capsys, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    if "--model" not in arguments:
        arguments += ["--model", str(model_dir)]
    assert main(["reconstruct", str(volume_path), "-o", str(tmp_path / "out.nii.gz"), "--quiet", *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz"]


def test_process_level_errors_have_no_traceback(tmp_path, volume_path):
    run = subprocess.run([sys.executable, "-m", "xdiffusion.cli", "reconstruct", str(volume_path), "-o", str(volume_path), "--method", "extrude"],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"error: -o {volume_path} is the input file; refusing to overwrite the input"


def test_demo_writes_volume_figure_and_metrics(tmp_path, model_dir, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--model", str(model_dir), "--progress", "json"]) == 0
    names = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert names == ["demo_figure.png", "metrics.json", "reconstruction.json", "reconstruction.nii.gz", "reconstruction_seg.json",
                     "reconstruction_seg.nii.gz", "uncertainty.json", "uncertainty.nii.gz"]
    sidecar = json.loads((tmp_path / "demo" / "reconstruction_seg.json").read_text(encoding="utf-8"))  # provenance, one code path
    assert sidecar["Content"] == "tumour labels" and sidecar["Model"]["path"] == str(model_dir.absolute())
    assert sidecar["Input"]["path"].endswith("sample_t1.nii.gz") and sidecar["Sampling"]["views"] == 2
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["input"]["plane"] == "axial" and metrics["sampling"]["views"] == 2
    assert {"psnr", "ssim", "dice_wt"} <= set(metrics["xdiffusion"]) and metrics["extrude"]["psnr"] > 0
    assert (tmp_path / "demo" / "demo_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "demo done" in capsys.readouterr().out


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from xdiffusion.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    silent = {name: [action.dest for action in parser._actions if not action.help]
              for name, parser in commands.choices.items()}
    assert set(silent) >= {"reconstruct", "reconstruct-cohort", "upsample", "demo", "train", "fetch-data", "evaluate",
                           "model-info"}
    assert all(not names for names in silent.values()), silent
