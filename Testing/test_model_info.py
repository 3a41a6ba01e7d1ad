"""A model that does not segment tumours offers no tumour labels: `model-info` says so beforehand (the Slicer module
asks it), `reconstruct --segmentation-output` is refused before any work, and the demo writes and scores none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import oriented_volume, smooth_head
from test_pipeline import tiny_model
from xdiffusion.cli import main
from xdiffusion.io import write_volume
from xdiffusion.model import save_model
from xdiffusion.model_location import PACKAGED_MODEL


def _save(folder, segments_tumours):
    """A tiny model whose card says (or, for None, does not say) whether it segments tumours."""
    model = tiny_model()
    card = {"default_sampling": {"views": 2, "steps": 2}, "default_modality": "t1", "validation": {"val/psnr": 12.5}}
    if segments_tumours is not None:
        card.update(segments_tumours=segments_tumours, segments_tumours_basis="set by the test")
    save_model(folder, model.unet, model.condition_encoder, None, model.scheduler_config, model.config, card)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: _save(root / name, value) for name, value in (("segments", True), ("no_tumours", False), ("older_card", None))}


@pytest.fixture
def volume_path(tmp_path):
    path = tmp_path / "input.nii.gz"
    write_volume(oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.int16), np.eye(3)), path)
    return path


def _info(capsys, *arguments) -> dict:
    assert main(["model-info", *arguments, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_model_info_json_answers_segments_tumours(models, capsys):
    assert _info(capsys, "--model", str(models["segments"]))["segments_tumours"] is True
    assert _info(capsys, "--model", str(models["older_card"]))["segments_tumours"] is None
    info = _info(capsys, "--model", str(models["no_tumours"]))
    assert info["segments_tumours"] is False and info["segments_tumours_basis"] == "set by the test"
    assert info["sha256_ok"] is True and info["cube_size"] == 16 and info["modalities"] == ["t1", "t2"]
    assert info["default_sampling"]["views"] == 2 and info["default_sampling"]["prior"] == "extrude"  # card, then CLI defaults
    assert info["validation"] == {"val/psnr": 12.5} and info["uncertainty_auroc"] is None
    assert info["model_dir"] == str(models["no_tumours"].absolute()) and info["id"] == "no_tumours"


def test_model_info_of_the_shipped_model(capsys):
    info = _info(capsys)  # no --model: the packaged default
    assert info["model_dir"] == str(PACKAGED_MODEL) and info["sha256_ok"] is True
    assert info["segments_tumours"] is False and info["cube_size"] == 128 and info["latent"] is True
    assert info["autoencoder"]["held_out_slices"] > 0
    assert main(["model-info"]) == 0
    text = capsys.readouterr().out
    assert "segments tumours   no (" in text and "SHA-256 verified" in text


def test_model_info_reports_weights_that_do_not_match(tmp_path, capsys):
    folder = _save(tmp_path / "m", False)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    info = _info(capsys, "--model", str(folder))
    assert info["sha256_ok"] is False and info["sha256_problems"] == ["unet/diffusion_pytorch_model.safetensors does not match its SHA-256"]
    assert main(["model-info", "--model", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: --model")


def test_segmentation_output_is_refused_before_any_work_when_the_model_draws_none(tmp_path, models, volume_path, capsys):
    out, seg = tmp_path / "out" / "v.nii.gz", tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir()
    code = main(["reconstruct", str(volume_path), "-o", str(out), "--segmentation-output", str(seg), "--model", str(models["no_tumours"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --segmentation-output: this model (no_tumours) does not segment tumours")
    assert list(out.parent.iterdir()) == []  # nothing written, not even the volume
    assert main(["reconstruct", str(volume_path), "-o", str(out), "--model", str(models["no_tumours"]), "--quiet"]) == 0


@pytest.mark.parametrize("name", ["segments", "older_card"])
def test_segmentation_output_is_written_for_a_model_that_segments_or_says_nothing(tmp_path, models, volume_path, name):
    seg = tmp_path / "seg.nii.gz"
    assert main(["reconstruct", str(volume_path), "-o", str(tmp_path / "v.nii.gz"), "--segmentation-output", str(seg),
                 "--model", str(models[name]), "--quiet"]) == 0
    assert seg.is_file()


def test_the_demo_scores_the_drawn_tumour_in_3d_with_a_model_that_draws_none(tmp_path, models):
    """The outline on the input slice gives the labels: written, scored against the sample's own, and real."""
    from xdiffusion.demo import SAMPLE_SEGMENTATION
    from xdiffusion.geometry import plane_axis
    from xdiffusion.label_baselines import largest_cross_section
    from xdiffusion.io import read_volume
    from xdiffusion.reconstruct import LABELS_TAPERED

    demo = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(demo), "--model", str(models["no_tumours"])]) == 0
    truth = read_volume(SAMPLE_SEGMENTATION)
    labels = read_volume(demo / "reconstruction_seg.nii.gz")
    metrics = json.loads((demo / "metrics.json").read_text(encoding="utf-8"))
    index = metrics["input"]["slice_index"]
    assert index == largest_cross_section(truth.array, plane_axis(truth.geometry, "axial")) and metrics["tumour_labels_from"] == LABELS_TAPERED
    np.testing.assert_array_equal(labels.array[:, :, index], truth.array[:, :, index])  # the outline, as drawn
    assert np.count_nonzero(labels.array) > 5 * np.count_nonzero(truth.array[:, :, index])  # and a tumour in 3D
    assert 0.5 < metrics["xdiffusion"]["dice_wt"] < 1.0 and metrics["xdiffusion"]["psnr"] > 0
    assert json.loads((demo / "reconstruction_seg.json").read_text())["LabelsFrom"] == LABELS_TAPERED


def test_model_info_shows_the_measured_uncertainty_auroc(tmp_path, capsys):
    from xdiffusion.model.checkpoint import update_model_card

    folder = _save(tmp_path / "m", False)
    update_model_card(folder, {"evaluation": {"uncertainty_auroc": {"mean": 0.612, "std": 0.05, "n": 40}}})
    info = _info(capsys, "--model", str(folder))
    assert info["uncertainty_auroc"] == 0.612 and info["evaluation"]["uncertainty_auroc"]["n"] == 40
    assert main(["model-info", "--model", str(folder)]) == 0
    assert "uncertainty AUROC  0.612 (± 0.050 over 40 held-out runs)" in capsys.readouterr().out


def test_a_latent_model_without_autoencoder_numbers_is_not_called_pixel_space(models, capsys):
    from xdiffusion.model_card import format_model_summary, model_summary

    summary = model_summary(models["no_tumours"], {"views": 1})
    assert summary["latent"] is False
    assert "autoencoder        none (pixel space)" in format_model_summary(summary)
    latent = {**summary, "latent": True, "autoencoder": None}  # e.g. a campaign snapshot's card before it was measured
    assert "autoencoder        none recorded" in format_model_summary(latent)
