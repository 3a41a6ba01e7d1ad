"""The detail model's design end to end, on a tiny instance: image-only denoiser conditioned on the input slices'
tumour labels and slab thickness, labels from the pixel-space label net, saved and loaded as one folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import oriented_volume, smooth_head
from model_fixtures import save_untrained
from xdiffusion import geometry
from xdiffusion.cli import main
from xdiffusion.data.samples import SampleGenerator, SampleOptions, TrainingCube
from xdiffusion.io import read_volume, write_volume
from xdiffusion.model import ConditionEncoder, build_unet, preset
from xdiffusion.model.label_net import TumourLabelNet
from xdiffusion.model.networks import Denoiser
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.model.checkpoint import load_model

TINY_LABEL_NET = (4, 4, 8, 8, 16, 4)


def detail_config():
    return dataclasses.replace(preset("tiny"), tumour_in_target=False, label_conditioning=True, slab_conditioning=True)


@pytest.fixture(scope="module")
def detail_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_untrained(tmp_path_factory.mktemp("detail") / "model", detail_config(),
                          {"default_sampling": {"views": 2, "steps": 2}, "default_modality": "t1"},
                          label_net=TumourLabelNet(features=TINY_LABEL_NET))


def tumour_cube(side: int = 16) -> TrainingCube:
    rng = np.random.default_rng(0)
    image = rng.uniform(50, 100, (side,) * 3).astype(np.float32)
    tumour = np.zeros((side,) * 3, np.uint8)
    tumour[5:11, 6:10, 6:10] = 2
    tumour[7:9, 7:9, 7:9] = 3
    return TrainingCube(image, tumour, "t1", 2.0)


def test_samples_carry_what_the_config_asks_for():
    config = detail_config()
    options = SampleOptions.from_config(config)
    generator = SampleGenerator([tumour_cube()], config.modalities, seed=1, options=options)
    sample = generator[0]
    assert sample["target"].shape == (1, 16, 16)  # the image only: labels are the label net's
    assert sample["label_guess"].shape == (3, 16, 16) and sample["input_thickness"].shape == (4,)
    thick = [generator[i]["input_thickness"].max().item() for i in range(60)]
    assert min(thick) == pytest.approx(2.0 / 16) and max(thick) > 2.0 / 16  # thin slices and slab means both seen
    tumour_seen = [generator[i]["label_guess"].max().item() > -1 for i in range(60)]
    assert any(tumour_seen)  # inputs are drawn through the tumour, whose labels reach the view
    denoiser = Denoiser(build_unet(config), ConditionEncoder.for_model(config))
    batch = {key: torch.stack([generator[i][key] for i in range(3)]) for key in sample if key != "target"}
    noisy = torch.randn(3, config.target_channels, 16, 16)
    assert denoiser(noisy, torch.tensor([10, 20, 30]), batch).shape == noisy.shape


def test_legacy_samples_are_unchanged():
    """The shipped model's stream: image + tumour target, no extra conditioning, the same draws as before."""
    sample = SampleGenerator([tumour_cube()], ["t1", "t2"], 4, seed=1)[3]
    assert sample["target"].shape == (4, 16, 16) and "label_guess" not in sample and "input_thickness" not in sample


def test_slab_and_labels_change_the_prediction(detail_model_dir):
    pipeline = XDiffusionPipeline.from_pretrained(detail_model_dir)
    assert pipeline.label_net is not None
    rng = np.random.default_rng(2)
    slices = [geometry.CubeSlice(rng.uniform(-1, 1, (16, 16)).astype(np.float32), 2, 0.0)]
    maps = -np.ones((3, 16, 16), np.float32)
    maps[1, 4:10, 4:10] = 1.0
    with torch.no_grad():
        for parameter in pipeline.unet.conv_in.parameters():  # a fresh conv_in is random: keep it, but nonzero
            parameter.add_(0.01)
    plain = pipeline(slices, "t1", views=1, steps=2, seed=0)
    labelled = pipeline(slices, "t1", views=1, steps=2, seed=0, input_label_maps=[maps])
    thick = pipeline(slices, "t1", views=1, steps=2, seed=0, slab_thickness=0.75)
    assert plain.tumour_probability is None
    assert not np.allclose(plain.image, labelled.image) and not np.allclose(plain.image, thick.image)


def test_cli_writes_labels_on_the_input_grid_keeping_the_given_ones(detail_model_dir, tmp_path):
    volume = oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.int16), np.diag([-1.0, -1.0, 1.0]),
                             spacing=(1.2, 1.0, 2.5))
    source, labels_path = tmp_path / "input.nii.gz", tmp_path / "labels.nii.gz"
    write_volume(volume, source)
    truth = np.zeros(volume.array.shape, np.uint8)
    truth[6:12, 8:14, 7:11] = 2
    truth[8:10, 10:12, 7:11] = 1
    write_volume(volume.with_array(truth), labels_path)
    output, segmentation = tmp_path / "recon.nii.gz", tmp_path / "labels_out.nii.gz"
    code = main(["reconstruct", str(source), "-o", str(output), "--model", str(detail_model_dir), "--plane", "axial",
                 "--slice-index", "9", "--input-segmentation", str(labels_path), "--segmentation-output",
                 str(segmentation), "--quiet"])
    assert code == 0
    written = read_volume(segmentation)
    assert written.array.shape == volume.array.shape
    np.testing.assert_allclose(written.geometry.spacing, volume.geometry.spacing)
    np.testing.assert_allclose(written.geometry.origin, volume.geometry.origin)
    np.testing.assert_allclose(written.geometry.direction, volume.geometry.direction)
    axis = int(np.argmax(np.abs(volume.geometry.direction[2])))  # the grid axis along S: the axial plane's normal
    np.testing.assert_array_equal(np.take(written.array, 9, axis=axis), np.take(truth, 9, axis=axis))


def test_a_saved_label_net_is_verified(detail_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(detail_model_dir, copy)
    weights = copy / "label_net" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    from xdiffusion.errors import ModelError

    with pytest.raises(ModelError, match="SHA-256"):
        load_model(copy)


def test_training_cubes_are_c_ordered_whatever_they_were_built_from():
    fortran = np.asfortranarray(np.arange(4 ** 3, dtype=np.float32).reshape(4, 4, 4))  # as SimpleITK's arrays come
    cube = TrainingCube(fortran, np.asfortranarray(np.zeros((4, 4, 4), np.uint8)), "t1")
    assert cube.image.flags.c_contiguous and cube.tumour.flags.c_contiguous
    np.testing.assert_array_equal(cube.image, fortran)
