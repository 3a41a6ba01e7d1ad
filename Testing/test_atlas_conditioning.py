"""The atlas as a conditioning channel (issue 13, item 4): training draws registered as inference registers, samples
that see it or have it withheld, a widened model that starts out predicting what it did, and `--prior` deciding at
inference whether the model sees it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import oriented_volume, smooth_head
from model_fixtures import random_batch, save_untrained
from xdiffusion import geometry
from xdiffusion.atlas_templates import TEMPLATES, load_template
from xdiffusion.data.atlas_draws import cube_draws, register_draw
from xdiffusion.data.samples import SampleGenerator, SampleOptions, TrainingCube, make_training_cube, slab_mean
from xdiffusion.data.training_set import with_atlas_draws
from xdiffusion.errors import InputError, ModelError
from xdiffusion.model import ConditionEncoder, build_unet, preset, save_model
from xdiffusion.model.networks import Denoiser, init_condition_encoder, init_unet_from_pretrained
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.reconstruct import reconstruct, select_slices

SIDE = 32


def atlas_config(**changes):
    return dataclasses.replace(preset("tiny"), tumour_in_target=False, atlas_conditioning=True, **changes)


@pytest.fixture(scope="module")
def template_cube() -> TrainingCube:
    """The brain template itself as a training cube: the atlas registered to its own slices must fit it well."""
    return make_training_cube(load_template(TEMPLATES["brain"]), "t1", SIDE)


@pytest.fixture(scope="module")
def drawn_cube(template_cube) -> TrainingCube:
    options = SampleOptions.from_config(atlas_config(cube_size=SIDE))
    return with_atlas_draws(template_cube, np.random.default_rng(0), options, 2, load_template(TEMPLATES["brain"]))


def test_a_draw_holds_its_input_slices_and_the_atlas_registered_to_them(drawn_cube):
    assert len(drawn_cube.atlas_draws) == 2
    for draw in drawn_cube.atlas_draws:
        guess = draw.guess.astype(np.float32)
        assert guess.shape == (SIDE,) * 3 and guess.dtype == np.float32
        for position in draw.positions:  # the inputs lie in the guess, as `atlas_in_cube` pastes them
            expected = slab_mean(drawn_cube.image, draw.axis, position, draw.thickness)
            np.testing.assert_allclose(np.take(guess, position, axis=draw.axis), expected, rtol=2e-3, atol=0.5)
        brain = drawn_cube.image > 0.2 * drawn_cube.image.max()
        assert np.corrcoef(guess[brain], drawn_cube.image[brain])[0, 1] > 0.6  # the template fits itself


def test_draws_are_cached_and_read_back(template_cube, tmp_path):
    cache = tmp_path / "draws.npz"
    template = load_template(TEMPLATES["brain"])
    made = cube_draws(template_cube.image, template_cube.voxel_mm, [(2, [12, 20], 1), (0, [16], 3)], template, cache)
    read = cube_draws(template_cube.image, template_cube.voxel_mm, [], None, cache)  # no template: must come from disk
    assert [(d.axis, d.positions, d.thickness) for d in read] == [(2, (12, 20), 1), (0, (16,), 3)]
    for a, b in zip(made, read):
        np.testing.assert_array_equal(a.guess, b.guess)
    assert not list(tmp_path.glob("*.part*")) and not list(tmp_path.glob(".*"))  # nothing half-written left


def test_samples_see_the_atlas_of_their_own_inputs_or_have_it_withheld(drawn_cube):
    options = SampleOptions.from_config(atlas_config(cube_size=SIDE))
    generator = SampleGenerator([drawn_cube], ["t1"], seed=3, options=options)
    seen = drawn = 0
    for index in range(40):
        sample = generator[index]
        present = sample["atlas_present"]
        assert sample["atlas_guess"].shape == present.shape == (1, SIDE, SIDE)
        assert torch.all(present == present.flatten()[0])
        if present.flatten()[0] == 0:
            assert torch.all(sample["atlas_guess"] == -1.0)
            continue
        seen += 1
        # inputs from a draw: the first slot's plane position is one of the draw positions, on its axis
        position = float(sample["input_position"][0]) * (SIDE / 2) + (SIDE - 1) / 2
        matches = [d for d in drawn_cube.atlas_draws
                   if int(sample["input_plane"][0]) == d.axis and min(abs(position - p) for p in d.positions) < 1e-3]
        assert matches, "an atlas-conditioned sample takes its inputs from one of its cube's draws"
        drawn += bool(sample["atlas_guess"].max() > -1.0)  # a target slice outside the head is background
    assert 20 <= seen <= 38  # about three quarters see the atlas
    assert drawn >= seen // 2


def test_an_atlas_conditioned_model_refuses_cubes_without_draws(template_cube):
    with pytest.raises(InputError, match="atlas draws"):
        SampleGenerator([template_cube], ["t1"], options=SampleOptions.from_config(atlas_config(cube_size=SIDE)))


def test_a_model_widened_for_the_atlas_predicts_what_it_did_before_it_learns_to_read_it(tmp_path):
    torch.manual_seed(0)
    source_config = dataclasses.replace(preset("tiny"), tumour_in_target=False)
    unet, encoder = build_unet(source_config), ConditionEncoder.for_model(source_config)
    scheduler = DDPMScheduler(num_train_timesteps=source_config.num_train_timesteps)
    folder = tmp_path / "model"
    save_model(folder, unet, encoder, None, dict(scheduler.config), source_config, {})
    config = atlas_config()
    widened = Denoiser(init_unet_from_pretrained(folder, config), ConditionEncoder.for_model(config))
    init_condition_encoder(widened.condition_encoder, folder)
    assert widened.unet.conv_in.in_channels == unet.conv_in.in_channels + 2
    batch = random_batch(config, 3)
    noisy, timesteps = torch.randn(3, config.target_channels, 16, 16), torch.tensor([5, 500, 900])
    with torch.no_grad():
        before = Denoiser(unet, encoder)(noisy, timesteps, batch)
        atlas = {"atlas_guess": torch.rand(3, 1, 16, 16) * 2 - 1, "atlas_present": torch.ones(3, 1, 16, 16)}
        after = widened(noisy, timesteps, {**batch, **atlas})
    torch.testing.assert_close(after, before)


def test_a_condition_encoder_of_another_shape_is_refused_in_one_line(tmp_path):
    config = dataclasses.replace(preset("tiny"), tumour_in_target=False)
    save_untrained(tmp_path / "model", config)
    other = atlas_config(conditioning=dataclasses.replace(config.conditioning, hidden_dim=48))
    with pytest.raises(ModelError, match="condition encoder .* does not match"):
        init_condition_encoder(ConditionEncoder.for_model(other), tmp_path / "model")


@pytest.fixture(scope="module")
def atlas_model_dir(tmp_path_factory):
    return save_untrained(tmp_path_factory.mktemp("atlas") / "model", atlas_config(),
                          {"default_sampling": {"views": 1, "steps": 2}, "default_modality": "t1"}, seed=1)


def test_the_pipeline_reads_the_atlas_only_in_a_model_built_for_it(atlas_model_dir, tmp_path):
    pipeline = XDiffusionPipeline.from_pretrained(atlas_model_dir)
    slices = [geometry.CubeSlice(np.random.default_rng(2).uniform(-1, 1, (16, 16)).astype(np.float32), 2, 0.0)]
    atlas = np.random.default_rng(3).uniform(-1, 1, (16,) * 3).astype(np.float32)
    withheld = pipeline(slices, "t1", views=1, steps=2, seed=0)
    given = pipeline(slices, "t1", views=1, steps=2, seed=0, atlas=atlas)
    assert not np.allclose(withheld.image, given.image)
    with pytest.raises(InputError, match="16\\^3"):
        pipeline(slices, "t1", views=1, steps=2, atlas=atlas[:8])
    save_untrained(tmp_path / "plain", dataclasses.replace(preset("tiny"), tumour_in_target=False))
    with pytest.raises(InputError, match="not atlas-conditioned"):
        XDiffusionPipeline.from_pretrained(tmp_path / "plain")(slices, "t1", views=1, steps=2, atlas=atlas)


def test_prior_atlas_conditions_the_model_and_the_other_priors_withhold_it(atlas_model_dir):
    volume = oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.float32), np.diag([-1.0, -1.0, 1.0]),
                             spacing=(1.2, 1.0, 2.5))
    inputs = select_slices(volume, "axial", [9])
    pipeline = XDiffusionPipeline.from_pretrained(atlas_model_dir)
    results = {prior: reconstruct(inputs, pipeline=pipeline, prior=prior, views=1, steps=2, seed=0, modality="t1")
               for prior in ("atlas", "extrude", "none")}
    np.testing.assert_array_equal(results["extrude"].image.array, results["none"].image.array)  # strength 1: same start, no atlas
    assert not np.allclose(results["atlas"].image.array, results["extrude"].image.array)
    assert results["atlas"].template is not None and results["extrude"].template is None
    assert "atlas-conditioned" in results["atlas"].image.metadata["description"]
    for result in results.values():  # geometry is the input's, whatever the prior
        np.testing.assert_allclose(result.image.geometry.spacing, volume.geometry.spacing)
        np.testing.assert_allclose(result.image.geometry.origin, volume.geometry.origin)
        np.testing.assert_allclose(result.image.geometry.direction, volume.geometry.direction)


def test_validation_scores_the_model_with_and_without_the_atlas_and_the_atlas_itself(drawn_cube, tmp_path):
    from xdiffusion.model.checkpoint import load_model
    from xdiffusion.training_run import make_validator

    config = atlas_config(cube_size=SIDE)
    model = load_model(save_untrained(tmp_path / "model", config, seed=0))
    scores = make_validator([drawn_cube], ["t1"], SampleOptions.from_config(config), count=12, steps=1)(model)
    for name in ("psnr_atlas_given", "psnr_atlas_withheld", "ssim_atlas_given", "psnr_atlas", "ssim_atlas"):
        assert np.isfinite(scores[name]), name
    low, high = sorted((scores["psnr_atlas_given"], scores["psnr_atlas_withheld"]))
    assert low <= scores["psnr"] <= high, scores  # the overall mean lies between the means of its two parts
    # the template registered to its own slices fits it far better than the extruded inputs do
    assert scores["psnr_atlas"] > scores["psnr_extrude"] + 3.0, scores
