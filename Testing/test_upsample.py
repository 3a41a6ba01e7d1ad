"""`xdiffusion upsample`: the output grid (spacing, origin, direction, the slabs' outer edges), the refusals, the slab
projection, the methods and the command's outputs. Small volumes only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import smooth_head
from test_pipeline import save_tiny_model
from xdiffusion.cli import main
from xdiffusion.errors import InputError
from xdiffusion.io import GENERATED_DESCRIPTION, Geometry, Volume, read_image, read_volume, write_volume
from xdiffusion.upsample import DEFAULT_METHOD, isotropic_grid, thick_stack, upsample
from xdiffusion.upsample.through_plane import load_through_plane_net, weights_sha256
from xdiffusion.upsample.diffusion import hat_weights, window_starts
from xdiffusion.upsample.resampling import resample
from xdiffusion.upsample.slabs import (project_onto_slabs, slab_average, slab_consistency_error, slab_means,
                                       slab_weights)
from xdiffusion.upsample.stack import slab_grid

OBLIQUE = Rotation.from_euler("xyz", [17.0, -9.0, 24.0], degrees=True).as_matrix()


def thick_volume(shape=(24, 22, 7), spacing=(1.0, 1.0, 5.0), direction=np.eye(3), origin=(-12.0, 7.5, 3.0), seed=0) -> Volume:
    array = smooth_head(shape, seed)
    return Volume(array, Geometry(shape, spacing, origin, direction))


def box_corners(geometry: Geometry) -> np.ndarray:
    """The physical corners of the region a grid's voxels cover (voxel centres ± half a voxel)."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    index = corners * np.asarray(geometry.shape, dtype=np.float64) - 0.5
    return geometry.index_to_physical(index)


# --- the output grid -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), OBLIQUE], ids=["lps", "ras", "oblique"])
def test_the_grid_spans_the_slabs_outer_edges_with_the_input_direction(direction):
    volume = thick_volume(direction=direction)
    stack = thick_stack(volume)
    grid = isotropic_grid(stack)
    assert stack.axis == 2 and stack.thickness_mm == 5.0
    assert grid.shape == (24, 22, 35)  # 7 slabs x 5 mm / 1 mm
    np.testing.assert_allclose(grid.spacing, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(grid.direction, direction, atol=1e-12)
    np.testing.assert_allclose(box_corners(grid), box_corners(volume.geometry), atol=1e-9)
    # the first output slice's lower edge is the first slab's centre minus half its thickness
    slab_axis = direction[:, 2]
    first_slab_centre = volume.geometry.index_to_physical(np.zeros(3))
    first_output_centre = grid.index_to_physical(np.zeros(3))
    np.testing.assert_allclose((first_output_centre - first_slab_centre) @ slab_axis - 0.5, -2.5, atol=1e-9)
    # output slice 2 is centred on slab 0, and in-plane the output keeps the input's voxel centres exactly
    np.testing.assert_allclose(grid.index_to_physical([3, 4, 2]), volume.geometry.index_to_physical([3, 4, 0]), atol=1e-9)


def test_a_slice_axis_that_is_not_the_last_and_a_spacing_that_does_not_divide_the_slabs():
    volume = Volume(smooth_head((6, 18, 18)), Geometry((6, 18, 18), (6.0, 0.9, 1.1), (3.0, -4.0, 8.0), OBLIQUE))
    stack = thick_stack(volume)
    assert stack.axis == 0 and stack.in_plane_mm == 0.9
    grid = isotropic_grid(stack, 0.8)
    assert grid.shape == (45, 20, 25)  # round(36 / 0.8), round(16.2 / 0.8) = round(20.25), round(19.8 / 0.8) = round(24.75)
    np.testing.assert_allclose(grid.spacing, 0.8)
    np.testing.assert_allclose(grid.center, volume.geometry.center, atol=1e-9)
    extents_in, extents_out = volume.geometry.extent_mm, grid.extent_mm
    assert np.all(np.abs(extents_out - extents_in) <= 0.4 + 1e-9)  # each end within MM / 2 of the edge it spans
    assert extents_out[0] == pytest.approx(36.0)  # 45 x 0.8: the slabs' outer edges exactly


def test_the_default_spacing_is_the_finer_in_plane_spacing():
    stack = thick_stack(Volume(smooth_head((20, 16, 5)), Geometry((20, 16, 5), (0.5, 0.75, 4.0), (0, 0, 0), np.eye(3))))
    grid = isotropic_grid(stack)
    np.testing.assert_allclose(grid.spacing, 0.5)
    assert grid.shape == (20, 24, 40)


@pytest.mark.parametrize("shape, spacing, message", [
    ((20, 20, 8), (1.0, 1.0, 1.5), "near-isotropic"),  # exactly 1.5x: still refused
    ((20, 20, 8), (1.0, 3.0, 3.2), "near-isotropic"),  # two thick axes: no single slice axis
    ((20, 20, 1), (1.0, 1.0, 5.0), "single 2D slice"),
    ((1, 20, 20), (5.0, 1.0, 1.0), "single 2D slice"),
])
def test_what_is_not_a_thick_stack_is_refused(shape, spacing, message):
    with pytest.raises(InputError, match=message):
        thick_stack(Volume(np.ones(shape, np.float32), Geometry(shape, spacing, (0, 0, 0), np.eye(3))))


def test_an_output_spacing_not_finer_than_the_slabs_is_refused():
    stack = thick_stack(thick_volume())
    for spacing in (5.0, 7.0, 0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            isotropic_grid(stack, spacing)


# --- the slab model ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [1.0, 0.7], ids=["divides", "straddles"])
def test_the_projection_makes_every_slab_mean_the_input_slice(spacing):
    stack = thick_stack(thick_volume())
    grid = isotropic_grid(stack, spacing)
    weights = slab_weights(grid, slab_grid(stack, grid), 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    raw = upsample(stack, "bspline", grid=grid, slab_projection=False)
    assert raw.slab_error > 1.0  # interpolation alone does not reproduce the slab means
    result = upsample(stack, "bspline", grid=grid)
    assert result.slab_error < 1e-3
    # the input slices on the output's in-plane grid: the input itself at 1 mm, its in-plane B-spline at 0.7 mm
    inputs = stack.volume.array if spacing == 1.0 else resample(stack.volume, slab_grid(stack, grid), "bspline")
    assert inputs.shape[:2] == grid.shape[:2]
    np.testing.assert_allclose(slab_means(result.image.array, weights, 2), inputs, atol=1e-3)
    if spacing == 1.0:  # every output slice lies in one slab: the correction is that slab's difference, on its 5 slices
        difference = stack.volume.array - slab_means(raw.image.array, weights, 2)
        np.testing.assert_allclose(result.image.array - raw.image.array, np.repeat(difference, 5, axis=2), atol=1e-3)
    else:  # straddling slices: the least-norm correction, which project_onto_slabs computes directly
        projected = project_onto_slabs(raw.image.array, inputs, weights, 2)
        np.testing.assert_allclose(projected, result.image.array, atol=1e-4)
        assert np.any((weights > 0).sum(axis=0) == 2)


def test_the_projection_brings_an_output_closer_to_a_truth_that_the_slabs_came_from():
    """The truth satisfies every slab equation, so the orthogonal projection can only move an estimate towards it."""
    truth = Volume(smooth_head((26, 24, 30), seed=3), Geometry((26, 24, 30), (1.0, 1.0, 1.0), (5.0, -3.0, 2.0), OBLIQUE))
    stack = thick_stack(slab_average(truth, 2, 5))
    for method in ("linear", "bspline"):
        raw = upsample(stack, method, grid=truth.geometry, slab_projection=False).image.array
        projected = upsample(stack, method, grid=truth.geometry).image.array
        assert np.linalg.norm(projected - truth.array) < np.linalg.norm(raw - truth.array)
        np.testing.assert_allclose(slab_means(projected, slab_weights(truth.geometry, stack.geometry, 2), 2),
                                   stack.volume.array, atol=1e-3)


def test_slab_average_puts_each_thick_voxel_at_its_slab_centre():
    truth = Volume(smooth_head((10, 12, 23)), Geometry((10, 12, 23), (1.0, 1.0, 0.5), (1.0, 2.0, 3.0), np.diag([1.0, -1.0, 1.0])))
    thick = slab_average(truth, 2, 4, start=1, count=5)
    assert thick.geometry.shape == (10, 12, 5) and thick.geometry.spacing[2] == 2.0
    np.testing.assert_allclose(thick.geometry.origin, truth.geometry.index_to_physical([0, 0, 1 + 1.5]))
    np.testing.assert_allclose(thick.array[:, :, 1], truth.array[:, :, 5:9].mean(axis=2), rtol=1e-6)
    with pytest.raises(ValueError):
        slab_average(truth, 2, 4, start=1, count=6)


def test_resampling_passes_through_the_slab_centres_and_extends_to_the_outer_edges():
    stack = thick_stack(thick_volume())
    for method in ("linear", "bspline"):
        output = upsample(stack, method, slab_projection=False).image.array
        # output slice 2 + 5i is centred on slab i; the outer half slabs hold the end values, not zero
        np.testing.assert_allclose(output[:, :, 2::5], stack.volume.array, atol=1e-3 * np.abs(stack.volume.array).max())
        inside = stack.volume.array[:, :, 0] > 0
        assert np.all(output[:, :, 0][inside] > 0)
    assert DEFAULT_METHOD == "learned"  # above bspline on every held-out case (benchmarks/upsample_benchmark.py)
    from xdiffusion.cli import build_parser

    command = build_parser().parse_args(["upsample", "in.nii.gz", "-o", "out.nii.gz"])
    assert command.method == DEFAULT_METHOD  # the command line's default is the library's


# --- the experimental model method ---------------------------------------------------------------------------------

def test_windows_cover_every_slab_and_the_hat_weights_sum_to_one():
    assert window_starts(3, 4) == [0]
    assert window_starts(7, 4) == [0, 2, 3]
    assert window_starts(10, 4) == [0, 2, 4, 6]
    for count in range(4, 30):
        starts = window_starts(count, 4)
        covered = {slab for start in starts for slab in range(start, start + 4)}
        assert covered == set(range(count)) and starts[-1] + 4 == count
    weights = hat_weights(np.arange(20.0), np.array([14.0, 3.0, 9.0]))
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    assert weights[1, 0] == 1.0 and weights[0, 19] == 1.0 and weights[2, 9] == 1.0
    np.testing.assert_allclose(weights[[1, 2], 6], [0.5, 0.5])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", views=2, steps=2)


@pytest.fixture
def stack_path(tmp_path):
    path = tmp_path / "thick.nii.gz"
    write_volume(thick_volume(shape=(20, 18, 9), direction=np.diag([-1.0, -1.0, 1.0])), path)
    return path


def test_xdiffusion_upsampling_with_a_tiny_model_is_slab_consistent_and_recorded(tmp_path, model_dir, stack_path, capsys):
    output = tmp_path / "up.nrrd"
    assert main(["upsample", str(stack_path), "-o", str(output), "--method", "xdiffusion", "--model", str(model_dir),
                 "--progress", "json", "--seed", "3"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert events[-1]["progress"] == 1.0 and any("window 4/4" in event["stage"] for event in events)
    stack = thick_stack(read_volume(stack_path))
    result = read_volume(output)
    assert result.geometry.same_as(isotropic_grid(stack), atol=1e-6)
    assert np.isfinite(result.array).all()
    weights = slab_weights(result.geometry, stack.geometry, 2)
    assert slab_consistency_error(result.array, stack.volume.array, weights, 2) < 1e-3
    record = json.loads((tmp_path / "up.json").read_text())
    assert record["Method"] == "xdiffusion" and record["Model"]["path"] == str(model_dir.absolute())
    assert record["Sampling"]["windows"] == 4  # 9 slabs: windows from slabs 0, 2, 4, 5 and record["Sampling"]["seed"] == 3 and record["Sampling"]["prior"] == "bspline"
    assert result.metadata["description"] == f"{GENERATED_DESCRIPTION} (diffusion upsample)"


def test_a_preset_and_prior_none_reach_the_model_and_the_sidecar(tmp_path, model_dir, stack_path):
    assert main(["upsample", str(stack_path), "-o", str(tmp_path / "fast.nii.gz"), "--method", "xdiffusion", "--model",
                 str(model_dir), "--preset", "fast", "--prior", "none", "--quiet"]) == 0
    sampling = json.loads((tmp_path / "fast.json").read_text())["Sampling"]
    card_steps = json.loads((model_dir / "model_card.json").read_text())["default_sampling"]["steps"]
    assert sampling["views"] == 1 and sampling["steps"] == max(1, card_steps // 2)  # fast: a quarter of the views, half the steps
    assert sampling["strength"] == 1.0 and sampling["prior"] is None
    assert main(["upsample", str(stack_path), "-o", str(tmp_path / "x.nii.gz"), "--method", "xdiffusion", "--model",
                 str(model_dir), "--prior", "none", "--strength", "0.5"]) == 2


# --- the command ---------------------------------------------------------------------------------------------------

def test_the_command_writes_the_volume_and_its_sidecar_on_the_new_grid(tmp_path, stack_path, capsys):
    output = tmp_path / "iso.nii.gz"
    assert main(["upsample", str(stack_path), "-o", str(output), "--output-spacing", "1.5"]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "upsampled by learned" in err  # the default method
    result, source = read_volume(output), read_volume(stack_path)
    expected = isotropic_grid(thick_stack(source), 1.5)
    assert result.geometry.same_as(expected, atol=1e-5) and result.array.dtype == np.float32
    np.testing.assert_allclose(box_corners(result.geometry), box_corners(source.geometry), atol=0.75 + 1e-5)
    record = json.loads((tmp_path / "iso.json").read_text())
    assert record["GeneratedNotMeasured"] is True and record["Method"] == "learned"
    assert record["Model"]["id"] == f"ThroughPlaneNet {weights_sha256(load_through_plane_net())[:12]}"  # the packaged net
    assert record["Input"]["slab_thickness_mm"] == 5.0 and record["Input"]["plane"] == "axial"
    assert record["Output"]["spacing_mm"] == [1.5, 1.5, 1.5] and record["SlabProjection"] is True
    assert record["SlabConsistencyRMS"] < 1e-2
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_quiet_prints_nothing_and_the_projection_can_be_turned_off(tmp_path, stack_path, capsys):
    assert main(["upsample", str(stack_path), "-o", str(tmp_path / "a.mha"), "--quiet", "--method", "linear",
                 "--no-slab-projection"]) == 0
    assert capsys.readouterr().err == ""
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["SlabProjection"] is False and record["SlabConsistencyRMS"] > 1.0


def _write_4d(path, volumes: int) -> None:
    import SimpleITK as sitk

    array = np.stack([smooth_head((12, 10, 6), seed) for seed in range(volumes)])  # (t, i, j, k) -> sitk (t, k, j, i)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (0, 3, 2, 1))), isVector=False)
    image.SetSpacing((1.0, 1.0, 5.0, 1.0))
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("case, message", [
    ("isotropic", "near-isotropic"),
    ("single", "single 2D slice"),
    ("two_volumes", "2 time points"),
    ("spacing", "not finer than the slabs"),
    ("model_without_xdiffusion", "--model, --preset: model options apply to --method xdiffusion"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, case, message, capsys):
    path, extra = tmp_path / "in.nii.gz", []
    if case == "isotropic":
        write_volume(thick_volume(spacing=(1.0, 1.0, 1.2)), path)
    elif case == "single":
        write_volume(thick_volume(shape=(20, 18, 1)), path)
    elif case == "two_volumes":
        _write_4d(path, 2)
    else:
        write_volume(thick_volume(), path)
        extra = (["--output-spacing", "5"] if case == "spacing"
                 else ["--method", "bspline", "--model", str(tmp_path), "--preset", "best"])
    assert main(["upsample", str(path), "-o", str(tmp_path / "out.nii.gz"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "out.json").exists()


def test_a_trailing_axis_of_length_one_is_still_one_volume(tmp_path):
    path = tmp_path / "one.nii.gz"
    _write_4d(path, 1)
    assert main(["upsample", str(path), "-o", str(tmp_path / "out.nii.gz"), "--quiet"]) == 0
    assert read_image(tmp_path / "out.nii.gz").geometry.shape == (12, 10, 30)
