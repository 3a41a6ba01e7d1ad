"""Coherent 3D sampling (`ViewFusion`: the views fused at every solver step) and several samples averaged, on the tiny
random model of test_pipeline (pixel space, 16³ cube)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from test_pipeline import cube_slices, pipeline, tiny_model  # noqa: F401 (fixture)
from xdiffusion import geometry
from xdiffusion.errors import Cancelled, InputError
from xdiffusion.coherent import ViewFusion, known_cube_planes, view_slices, view_volumes
from xdiffusion.pipeline import XDiffusionPipeline, sample_seed
from xdiffusion.solvers import clean_estimate, model_output_for


def final_views(pipeline: XDiffusionPipeline, views: int, fuse: bool, seed: int = 0, solver: str = "dpmsolver++"):
    """The per-view volumes a run ends with (before any averaging), and the fusion used."""
    rotations = geometry.view_rotations(views)
    slices = cube_slices(1)
    fusion = ViewFusion(rotations, pipeline._decode, pipeline._encode, known_cube_planes(slices, 16)) if fuse else None
    conditioning = pipeline._conditioning(slices, rotations, 0)
    with torch.inference_mode():
        decoded, _ = pipeline.generate_slices(conditioning, 4, seed=seed, solver=solver, fuse=fusion)
    return view_volumes(decoded.numpy(), views), rotations, fusion


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_the_model_output_is_rebuilt_exactly_from_its_clean_estimate(pipeline, prediction_type):
    scheduler = pipeline.make_scheduler("dpmsolver++")
    scheduler.set_timesteps(12)
    latents, output = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    for timestep in scheduler.timesteps:
        x0 = clean_estimate(scheduler, latents, output, timestep, prediction_type)
        torch.testing.assert_close(model_output_for(scheduler, latents, x0, timestep, prediction_type), output, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("solver", ["dpmsolver++", "unipc", "ddim"])
def test_an_identity_fusion_changes_nothing(pipeline, solver):
    """Handing the solver the clean estimate it derived itself (as a model output) reproduces the plain run: the
    conversion is exact for every solver."""
    conditioning = pipeline._conditioning(cube_slices(1), geometry.view_rotations(2), 0)
    with torch.inference_mode():
        plain, _ = pipeline.generate_slices(conditioning, 4, seed=2, solver=solver)
        same, _ = pipeline.generate_slices(conditioning, 4, seed=2, solver=solver, fuse=lambda x0: x0)
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-4)


def test_fusion_makes_the_views_agree(pipeline):
    """Without fusion the views are independent samples; with it they end as cuts of one volume (exactly, for the
    three axis-aligned views; up to interpolation with an oblique fourth)."""
    for views, bound in ((3, 1e-5), (4, 0.25)):
        independent, rotations, _ = final_views(pipeline, views, fuse=False)
        fused, _, fusion = final_views(pipeline, views, fuse=True)
        spread_independent = geometry.realign_and_average(independent, rotations)[1][0].mean()
        spread_fused = geometry.realign_and_average(fused, rotations)[1][0].mean()
        assert spread_fused < bound * spread_independent, (views, spread_fused, spread_independent)
        assert fusion.spread is not None and fusion.spread.mean() > spread_fused  # before the last fusion they differed


def test_a_fusion_of_cuts_of_one_volume_gives_that_volume_back(pipeline):
    """Geometry kept: views cut from one asymmetric cube fuse back into that cube (no flip, no transpose, no shift)."""
    side = 16
    cube = np.stack([np.fromfunction(lambda x, y, z: (x - 2 * y + 3 * z) / 40.0 + 0.1 * c, (side,) * 3) for c in range(4)])
    cube = np.clip(cube, -1.0, 1.0).astype(np.float32)
    rotations = geometry.view_rotations(3)
    cuts = torch.from_numpy(np.stack([view_slices(channel, rotations) for channel in cube], axis=1))
    fusion = ViewFusion(rotations, pipeline._decode, pipeline._encode)
    np.testing.assert_allclose(fusion(cuts).numpy(), cuts.numpy(), atol=1e-6)
    np.testing.assert_allclose(fusion.fused, cube, atol=1e-6)
    assert fusion.spread.max() < 1e-6 and fusion.coverage.min() == 3


def test_the_input_slice_is_held_in_the_fused_volume(pipeline):
    slices = cube_slices(1)
    axis, index, image = known_cube_planes(slices, 16)[0]
    result = pipeline(slices, "t1", views=4, steps=3, coherent=True)
    np.testing.assert_allclose(np.moveaxis(result.image, axis, 0)[index], image, atol=1e-6)
    assert result.unet_evaluations == 4 * 16 * 3


def test_a_coherent_sample_is_seeded(pipeline):
    first = pipeline(cube_slices(2), "t1", views=2, steps=3, seed=5, coherent=True)
    again = pipeline(cube_slices(2), "t1", views=2, steps=3, seed=5, coherent=True)
    other = pipeline(cube_slices(2), "t1", views=2, steps=3, seed=6, coherent=True)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.uncertainty, again.uncertainty)
    assert not np.allclose(first.image, other.image)
    assert first.uncertainty_across == "views" and first.uncertainty.max() > 0  # the views' spread before the last fusion


@pytest.mark.parametrize("coherent", [False, True])
def test_several_samples_average_into_a_mean_whose_spread_is_the_uncertainty(pipeline, coherent):
    options = dict(views=2, steps=3, coherent=coherent)
    runs = [pipeline(cube_slices(1), "t1", seed=sample_seed(11, number), **options) for number in range(3)]
    combined = pipeline(cube_slices(1), "t1", seed=11, samples=3, **options)
    images = np.stack([run.image for run in runs])
    np.testing.assert_allclose(combined.image, images.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(combined.uncertainty, images.std(axis=0), atol=1e-4)
    assert combined.uncertainty_across == "samples" and combined.unet_evaluations == 3 * runs[0].unet_evaluations
    assert 0.0 <= combined.tumour_probability.min() and combined.tumour_probability.max() <= 1.0


def test_sample_seeds_start_at_the_run_seed_and_differ():
    assert sample_seed(7, 0) == 7
    seeds = {sample_seed(7, number) for number in range(1, 50)} | {sample_seed(8, number) for number in range(1, 50)}
    assert len(seeds) == 98 and all(0 <= seed < 2**63 for seed in seeds)


def test_samples_report_progress_in_order_and_cancel(pipeline):
    fractions = []
    pipeline(cube_slices(1), "t1", views=1, steps=2, samples=3, progress=lambda fraction, stage: fractions.append((fraction, stage)))
    assert [f for f, _ in fractions] == sorted(f for f, _ in fractions) and fractions[-1][0] <= 1.0
    assert fractions[0][1].startswith("sample 1/3") and fractions[-1][1].startswith("sample 3/3")
    with pytest.raises(Cancelled):
        pipeline(cube_slices(1), "t1", views=1, steps=2, samples=3, coherent=True, progress=lambda fraction, stage: fraction < 0.5)
    with pytest.raises(InputError, match="at least 1"):
        pipeline(cube_slices(1), "t1", views=1, steps=2, samples=0)


def test_coherent_sampling_through_the_latent_path():
    """A latent model (autoencoder in the loop): each step decodes, fuses and encodes again."""
    from diffusers import DDPMScheduler

    from xdiffusion.model import ConditionEncoder, XDiffusionModel, build_autoencoder, build_unet, preset

    torch.manual_seed(0)
    config = preset("tiny")
    config.latent = True
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    model = XDiffusionModel(config, build_unet(config).eval(), ConditionEncoder.for_model(config).eval(),
                            build_autoencoder(config).eval(), dict(scheduler.config))
    latent = XDiffusionPipeline.from_model(model)
    result = latent(cube_slices(1), "t1", views=2, steps=2, coherent=True, samples=2)
    assert result.image.shape == (16, 16, 16) and np.isfinite(result.image).all() and result.uncertainty_across == "samples"
