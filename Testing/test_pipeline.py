"""The sampling pipeline and the volume-level reconstruct call, on a tiny random model (pixel space, 16³ cube)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import oriented_volume, smooth_head
from xdiffusion import geometry
from xdiffusion.errors import Cancelled, InputError, ModelError
from xdiffusion.model import ConditionEncoder, XDiffusionModel, build_unet, load_model, preset, save_model
from xdiffusion.pipeline import XDiffusionPipeline, known_view_slices
from xdiffusion.reconstruct import extrude, interpolate, reconstruct, select_slices, single_slice_input
from xdiffusion.io import Geometry, Volume

LIA = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])


def tiny_model(seed: int = 0) -> XDiffusionModel:
    torch.manual_seed(seed)
    config = preset("tiny")
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    return XDiffusionModel(config, build_unet(config).eval(), ConditionEncoder.for_model(config).eval(), None, dict(scheduler.config))


def save_tiny_model(folder, views: int, steps: int):
    """A saved tiny model whose card sets the sampling defaults the CLI picks up."""
    model = tiny_model()
    save_model(folder, model.unet, model.condition_encoder, None, model.scheduler_config, model.config,
               {"default_sampling": {"views": views, "steps": steps}, "default_modality": "t1"})
    return folder


@pytest.fixture(scope="module")
def pipeline() -> XDiffusionPipeline:
    return XDiffusionPipeline.from_model(tiny_model())


def cube_slices(count: int, side: int = 16, axis: int = 2) -> list[geometry.CubeSlice]:
    rng = np.random.default_rng(count)
    coordinates = np.linspace(3, side - 4, count).round()
    return [geometry.CubeSlice(rng.uniform(-1, 1, (side, side)).astype(np.float32), axis, float((c - (side - 1) / 2) / (side / 2))) for c in coordinates]


def test_same_seed_same_volume_other_seed_other_volume(pipeline):
    first = pipeline(cube_slices(1), "t1", views=2, steps=3, seed=7)
    again = pipeline(cube_slices(1), "t1", views=2, steps=3, seed=7)
    other = pipeline(cube_slices(1), "t1", views=2, steps=3, seed=8)
    np.testing.assert_array_equal(first.image, again.image)
    assert not np.allclose(first.image, other.image)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_one_to_four_input_slices(pipeline, count):
    result = pipeline(cube_slices(count), "t2", views=3, steps=2)
    assert result.image.shape == (16, 16, 16)
    assert result.tumour_probability.shape == (3, 16, 16, 16)
    assert 0.0 <= result.tumour_probability.min() and result.tumour_probability.max() <= 1.0
    assert np.all(result.uncertainty >= 0)


def test_five_input_slices_are_refused(pipeline):
    with pytest.raises(InputError, match="at most 4"):
        pipeline(cube_slices(5), "t1", views=1, steps=1)


def test_guidance_runs_conditional_and_unconditional_in_one_batch(pipeline):
    plain = pipeline(cube_slices(1), "t1", views=2, steps=2, guidance=1.0)
    guided = pipeline(cube_slices(1), "t1", views=2, steps=2, guidance=3.0)
    assert guided.unet_evaluations == 2 * plain.unet_evaluations == 2 * 2 * 16 * 2
    assert not np.allclose(plain.image, guided.image)


def test_more_views_cover_each_voxel_more_often(pipeline):
    one = pipeline(cube_slices(1), "t1", views=1, steps=1)
    six = pipeline(cube_slices(1), "t1", views=6, steps=1)
    assert one.coverage.max() == 1 and six.coverage.max() == 6
    assert np.all(one.uncertainty == 0) and six.uncertainty.max() > 0


def test_data_consistency_holds_the_known_slice_in_parallel_views(pipeline):
    slices = cube_slices(1)
    known = known_view_slices(slices, geometry.view_rotations(1)[0], 16)
    (depth, image), = known.items()
    np.testing.assert_array_equal(image, slices[0].image)
    held = pipeline(slices, "t1", views=1, steps=4, data_consistency=True)
    free = pipeline(slices, "t1", views=1, steps=4, data_consistency=False)
    held_error = np.abs(held.image[:, :, depth] - slices[0].image).mean()
    free_error = np.abs(free.image[:, :, depth] - slices[0].image).mean()
    assert held_error < 1e-5 < free_error


def test_unknown_modality_and_cancellation(pipeline):
    with pytest.raises(InputError, match="not known"):
        pipeline(cube_slices(1), "flair", views=1, steps=1)
    with pytest.raises(Cancelled):
        pipeline(cube_slices(1), "t1", views=1, steps=3, progress=lambda fraction, stage: False)


def test_saved_model_samples_like_the_original(tmp_path, pipeline):
    save_model(tmp_path / "model", pipeline.unet, pipeline.condition_encoder, None, dict(pipeline.scheduler.config), pipeline.model_config, {"steps": 0})
    reloaded = XDiffusionPipeline.from_pretrained(tmp_path / "model")
    a = pipeline(cube_slices(2), "t1", views=2, steps=2, seed=3)
    b = reloaded(cube_slices(2), "t1", views=2, steps=2, seed=3)
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)



def test_a_diffusers_pipeline_with_registered_components():
    from diffusers import DiffusionPipeline

    pipeline = XDiffusionPipeline.from_model(tiny_model())
    assert isinstance(pipeline, DiffusionPipeline)
    assert set(pipeline.components) == {"unet", "condition_encoder", "scheduler", "vae", "label_net"}
    assert pipeline.config["condition_encoder"] == ("xdiffusion.model.conditioning", "ConditionEncoder")
    assert pipeline.device == torch.device("cpu") and pipeline.dtype == torch.float32
    assert pipeline.to("cpu", torch.float64).dtype == pipeline.unet.dtype == pipeline.condition_encoder.dtype == torch.float64


def test_a_tampered_weights_file_is_refused_before_any_weight_is_read(tmp_path, pipeline, monkeypatch):
    import xdiffusion.model.checkpoint as checkpoint

    save_model(tmp_path / "model", pipeline.unet, pipeline.condition_encoder, None, dict(pipeline.scheduler.config),
               pipeline.model_config, {"steps": 0})
    weights = tmp_path / "model" / checkpoint.UNET_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # in the tensor bytes: the file still parses, only the hash can tell
    weights.write_bytes(bytes(data))
    parsed = []
    monkeypatch.setattr(checkpoint, "load_safetensors", lambda data: parsed.append(len(data)))
    with pytest.raises(ModelError, match="SHA-256"):
        XDiffusionPipeline.from_pretrained(tmp_path / "model")
    assert parsed == []

# --- the volume-level call --------------------------------------------------------------------------------------

@pytest.fixture
def lia_volume() -> Volume:
    array = (smooth_head((18, 14, 20)) - 50).astype(np.int16)  # int16 with negatives, like CT-ish or raw MR
    return oriented_volume(array, LIA, spacing=(1.1, 2.5, 0.9))


@pytest.mark.parametrize("plane", geometry.PLANES)
def test_reconstruction_has_the_input_grid_and_exact_input_slices(pipeline, lia_volume, plane):
    inputs = select_slices(lia_volume, plane, None)
    result = reconstruct(inputs, "xdiffusion", pipeline, "t1", views=2, steps=2)
    for output in (result.image, result.segmentation, result.uncertainty):
        assert output.geometry.same_as(lia_volume.geometry, atol=0)
        assert "generated" in output.metadata["description"]
    assert result.image.array.dtype == np.int16 and result.segmentation.array.dtype == np.uint8
    axis = geometry.plane_axis(lia_volume.geometry, plane)
    index = lia_volume.geometry.shape[axis] // 2
    np.testing.assert_array_equal(np.take(result.image.array, index, axis), np.take(lia_volume.array, index, axis))
    assert set(np.unique(result.segmentation.array)) <= {0, 1, 2, 3}


def test_methods_never_see_more_than_the_chosen_slices(lia_volume):
    inputs = select_slices(lia_volume, "axial", [3, 9])
    assert inputs.images.shape[0] == 2
    assert not any(isinstance(value, Volume) for value in vars(inputs).values())


def test_extrude_and_interpolate_fill_between_the_given_slices(lia_volume):
    axis = geometry.plane_axis(lia_volume.geometry, "coronal")
    inputs = select_slices(lia_volume, "coronal", [2, 10])
    extruded = extrude(inputs)
    np.testing.assert_array_equal(np.take(extruded, 5, axis), np.take(lia_volume.array, 2, axis))
    np.testing.assert_array_equal(np.take(extruded, 7, axis), np.take(lia_volume.array, 10, axis))
    interpolated = interpolate(inputs)
    expected = 0.5 * np.take(lia_volume.array, 2, axis).astype(np.float32) + 0.5 * np.take(lia_volume.array, 10, axis)
    np.testing.assert_allclose(np.take(interpolated, 6, axis), expected, atol=1e-4)
    np.testing.assert_array_equal(np.take(interpolated, 0, axis), np.take(lia_volume.array, 2, axis))
    with pytest.raises(InputError, match="at least 2"):
        interpolate(select_slices(lia_volume, "coronal", [4]))


def test_single_2d_slice_becomes_an_isotropic_volume_around_it():
    array = smooth_head((30, 20, 1))
    slice_volume = Volume(array, Geometry(array.shape, (0.8, 0.8, 0.8), (10.0, -5.0, 3.0), np.eye(3)), {"source_dimension": "2"})
    inputs = single_slice_input(slice_volume, "coronal", 0.25)
    grid = inputs.geometry
    assert grid.shape == (30, 20, 30) and np.allclose(grid.spacing, 0.8)
    assert geometry.plane_axis(grid, "coronal") == 2 and inputs.indices == (7,)
    with pytest.raises(InputError, match="needs --plane"):
        single_slice_input(slice_volume, None)


def test_constant_or_nan_slices_are_refused(lia_volume):
    flat = lia_volume.with_array(np.zeros_like(lia_volume.array))
    with pytest.raises(InputError, match="constant"):
        select_slices(flat, "axial")
    broken = lia_volume.with_array(lia_volume.array.astype(np.float32))
    broken.array[:, :, :] = np.nan
    with pytest.raises(InputError, match="NaN"):
        select_slices(broken, "axial")


def test_strength_starts_from_the_noised_prior_and_runs_fewer_steps(pipeline):
    full = pipeline(cube_slices(1), "t1", views=2, steps=4)
    half = pipeline(cube_slices(1), "t1", views=2, steps=4, strength=0.5)
    assert half.unet_evaluations == full.unet_evaluations // 2
    assert not np.allclose(full.image, half.image)
    with pytest.raises(InputError, match="strength"):
        pipeline(cube_slices(1), "t1", views=1, steps=2, strength=0.0)


def test_a_whole_cube_prior_is_where_sdedit_starts(pipeline):
    side = pipeline.model_config.cube_size
    bright, dark = np.full((side,) * 3, 0.8, dtype=np.float32), np.full((side,) * 3, -1.0, dtype=np.float32)
    from_bright = pipeline(cube_slices(1), "t1", views=2, steps=4, strength=0.25, prior=bright)
    from_dark = pipeline(cube_slices(1), "t1", views=2, steps=4, strength=0.25, prior=dark)
    assert from_bright.image.mean() > from_dark.image.mean() + 0.2
    again = pipeline(cube_slices(1), "t1", views=2, steps=4, strength=0.25, prior=bright)
    np.testing.assert_array_equal(from_bright.image, again.image)
    with pytest.raises(InputError, match="prior"):
        pipeline(cube_slices(1), "t1", views=1, steps=2, strength=0.5, prior=bright[:-1])
