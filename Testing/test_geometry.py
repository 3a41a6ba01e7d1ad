"""Planes, slice indices, the canonical cube and view rotations: one rule everywhere, tested as properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import flip_axis, oriented_volume, smooth_head
from xdiffusion import geometry
from xdiffusion.errors import InputError
from xdiffusion.io import Geometry, Volume

ORIENTATIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([1.0, -1.0, 1.0]),
    "LIA": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]]),
    "LSA": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_plane_axis_follows_direction_columns(name):
    direction = ORIENTATIONS[name]
    grid = Geometry((5, 6, 7), (1, 1, 1), (0, 0, 0), direction)
    for plane, normal in geometry.PLANE_NORMALS.items():
        axis = geometry.plane_axis(grid, plane)
        assert abs(direction[:, axis] @ normal) == pytest.approx(1.0)


def test_same_physical_slice_from_lps_and_lpi_copies(head_volume):
    lpi = flip_axis(head_volume, 2)
    n = head_volume.geometry.shape[2]
    for index in (0, 5, n // 2, n - 1):
        lps_axis = geometry.plane_axis(head_volume.geometry, "axial")
        lpi_axis = geometry.plane_axis(lpi.geometry, "axial")
        assert lps_axis == lpi_axis == 2
        a = geometry.take_slices(head_volume, lps_axis, [index])
        b = geometry.take_slices(lpi, lpi_axis, [n - 1 - index])
        np.testing.assert_array_equal(a, b)
        frame_a = geometry.cube_frame_for_grid(head_volume.geometry, 24)
        frame_b = geometry.cube_frame_for_grid(lpi.geometry, 24)
        np.testing.assert_allclose(frame_a.axes, frame_b.axes)
        slice_a = geometry.slice_to_cube(a[0], head_volume.geometry, 2, index, frame_a)
        slice_b = geometry.slice_to_cube(b[0], lpi.geometry, 2, n - 1 - index, frame_b)
        assert slice_a.position == pytest.approx(slice_b.position)
        np.testing.assert_allclose(slice_a.image, slice_b.image, atol=1e-4)


def test_middle_slice_is_floor_half():
    assert [geometry.middle_index(n) for n in (1, 2, 5, 155)] == [0, 1, 2, 77]


def test_near_tie_is_refused():
    tilted = Rotation.from_euler("x", 44, degrees=True).as_matrix()
    grid = Geometry((5, 5, 5), (1, 1, 1), (0, 0, 0), tilted)
    with pytest.raises(InputError, match="ambiguous"):
        geometry.plane_axis(grid, "axial")
    slightly = Geometry((5, 5, 5), (1, 1, 1), (0, 0, 0), Rotation.from_euler("x", 30, degrees=True).as_matrix())
    assert geometry.plane_axis(slightly, "axial") == 2


def test_bad_planes_and_indices_are_refused(head_volume):
    with pytest.raises(InputError, match="unknown plane"):
        geometry.plane_axis(head_volume.geometry, "oblique")
    with pytest.raises(InputError, match="outside"):
        geometry.check_slice_indices(head_volume.geometry, 2, [36])
    with pytest.raises(InputError, match="repeat"):
        geometry.check_slice_indices(head_volume.geometry, 2, [3, 3])
    assert geometry.check_slice_indices(head_volume.geometry, 2, [9, 2]) == [2, 9]


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_cube_axes_point_left_posterior_superior(name):
    grid = Geometry((30, 20, 10), (1.0, 2.0, 3.0), (5, -3, 2), ORIENTATIONS[name])
    frame = geometry.cube_frame_for_grid(grid, 16)
    np.testing.assert_allclose(frame.axes, np.eye(3), atol=1e-12)
    assert frame.size_mm == pytest.approx(40.0)  # largest extent: 20 voxels x 2 mm
    np.testing.assert_allclose(frame.geometry().center, grid.center)


def test_grid_to_cube_to_grid_round_trip_error_is_bounded():
    volume = oriented_volume(smooth_head((48, 48, 48)), ORIENTATIONS["LIA"], spacing=(1.0, 1.0, 1.0))
    frame = geometry.cube_frame_for_grid(volume.geometry, 48)
    cube = geometry.volume_to_cube(volume, frame)
    back = geometry.cube_to_grid(cube, frame, volume.geometry)
    inside = ndimage.binary_erosion(volume.array > 0, iterations=2)
    error = np.abs(back - volume.array)[inside]
    assert error.mean() < 0.01 * volume.array[inside].mean()
    coarse = geometry.cube_to_grid(geometry.volume_to_cube(volume, geometry.cube_frame_for_grid(volume.geometry, 24)), geometry.cube_frame_for_grid(volume.geometry, 24), volume.geometry)
    coarse_error = np.abs(coarse - volume.array)[inside].mean()
    assert error.mean() < coarse_error < 0.1 * volume.array[inside].mean()


def test_input_slice_lands_on_its_cube_plane():
    volume = oriented_volume(smooth_head((32, 32, 32)), ORIENTATIONS["RAS"], spacing=(1.0, 1.0, 1.0))
    frame = geometry.cube_frame_for_grid(volume.geometry, 32)
    cube = geometry.volume_to_cube(volume, frame)
    for plane in geometry.PLANES:
        axis = geometry.plane_axis(volume.geometry, plane)
        placed = geometry.slice_to_cube(geometry.take_slices(volume, axis, [11])[0], volume.geometry, axis, 11, frame)
        assert placed.axis == geometry.CUBE_AXIS_OF_PLANE[plane]
        coordinate = frame.to_coordinate(placed.position)
        assert coordinate == pytest.approx(round(coordinate), abs=1e-9)
        np.testing.assert_allclose(placed.image, np.take(cube, int(round(coordinate)), axis=placed.axis), atol=1e-3)


def test_extrude_takes_nearest_input_plane():
    side = 10
    first = geometry.CubeSlice(np.full((side, side), 1.0, np.float32), 2, -0.5)
    second = geometry.CubeSlice(np.full((side, side), 3.0, np.float32), 2, 0.5)
    cube, distance = geometry.extrude_in_cube([first, second], side)
    # positions ±0.5 sit on cube coordinates 2 and 7; coordinates 0..4 are nearer the first plane
    assert np.all(cube[:, :, :5] == 1.0) and np.all(cube[:, :, 5:] == 3.0)
    np.testing.assert_allclose(distance[0, 0], [0.4, 0.2, 0.0, 0.2, 0.4, 0.4, 0.2, 0.0, 0.2, 0.4], atol=1e-6)


def test_view_rotations_are_proper_and_axis_views_first():
    rotations = geometry.view_rotations(12)
    for rotation in rotations:
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    normals = [rotation[2] for rotation in rotations]
    np.testing.assert_allclose(np.abs(normals[:3]), np.eye(3)[[2, 1, 0]], atol=1e-12)
    cosines = np.abs(np.array(normals) @ np.array(normals).T)[np.triu_indices(12, 1)]
    assert cosines.max() < 0.95  # no two views stack along nearly the same direction
    with pytest.raises(InputError):
        geometry.view_rotations(0)


def test_axis_views_are_exact_permutations():
    cube = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    axial, coronal, sagittal = (geometry.rotate_cube(cube, r) for r in geometry.view_rotations(3))
    np.testing.assert_array_equal(axial, cube)
    assert sorted(np.unique(coronal).tolist()) == sorted(np.unique(cube).tolist())
    np.testing.assert_array_equal(coronal[:, :, 3], cube[:, 3, :][:, ::-1])  # coronal view slice 3 = cube's coronal slice 3
    np.testing.assert_array_equal(sagittal[:, :, 5], cube[5, :, :])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_rotate_then_realign_is_identity_within_interpolation(seed):
    rotation = Rotation.random(random_state=seed).as_matrix()
    cube = ndimage.gaussian_filter(np.random.default_rng(seed).random((24, 24, 24)), 3).astype(np.float32)
    back, valid = geometry.realign_view(geometry.rotate_cube(cube, rotation), rotation)
    radius = np.sqrt(((np.indices(cube.shape) - 11.5) ** 2).sum(0))
    inner = radius < 8
    assert valid[inner].min() == 1.0
    assert np.abs(back - cube)[inner].max() < 0.15 * np.ptp(cube)
    assert np.abs(back - cube)[inner].mean() < 0.03 * np.ptp(cube)


def test_uncovered_voxels_do_not_pull_the_average_to_zero():
    cube = np.full((16, 16, 16), 5.0, np.float32)
    rotations = geometry.view_rotations(4)
    views = [geometry.rotate_cube(cube, r, fill=0.0) for r in rotations]
    mean, spread, coverage = geometry.realign_and_average(views, rotations)
    assert coverage.min() >= 1 and coverage.max() == 4 and coverage.min() < 4
    np.testing.assert_allclose(mean[coverage == 4], 5.0, atol=1e-4)
    corner = coverage < 4
    assert mean[corner].min() > 4.0  # the oblique view's empty corner would have dragged it towards 0
    assert spread.max() < 3.0


def test_average_spread_is_the_disagreement_between_views():
    rotations = geometry.view_rotations(2)
    low = np.zeros((2, 6, 6, 6), np.float32)
    high = np.ones((2, 6, 6, 6), np.float32) * 2
    mean, spread, _ = geometry.realign_and_average([low, geometry.rotate_cube(high[0], rotations[1])[None].repeat(2, 0)], rotations)
    np.testing.assert_allclose(mean, 1.0)
    np.testing.assert_allclose(spread, 1.0, atol=1e-6)


def _smooth_cube(side: int, seed: int) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(side,) * 3), 2.0).astype(np.float32)


def test_in_plane_fusion_of_agreeing_views_is_the_volume():
    cube = _smooth_cube(20, 0)
    rotations = geometry.view_rotations(3)  # axis views: exact permutations, so the views agree exactly
    views = [geometry.rotate_cube(cube, r) for r in rotations]
    fused, spread, coverage = geometry.realign_and_average(views, rotations, "in-plane")
    np.testing.assert_allclose(fused, cube, atol=1e-5)
    assert spread.max() < 1e-5 and coverage.min() == 3
    alone, _, _ = geometry.realign_and_average(views[:1], rotations[:1], "in-plane")
    np.testing.assert_allclose(alone, cube, atol=1e-5)  # one view is itself, whatever its weights


def test_in_plane_fusion_leaves_out_each_views_streaks_across_its_slices():
    """Slices sampled independently differ by a per-slice offset along their view's stacking axis: the plain mean keeps
    a third of every view's streaks, the in-plane fusion takes those frequencies from the other views."""
    side = 32
    truth = _smooth_cube(side, 1)
    rng = np.random.default_rng(2)
    rotations = geometry.view_rotations(3)
    views = [geometry.rotate_cube(truth, r) + rng.normal(0.0, truth.std(), side).astype(np.float32) for r in rotations]
    mean, spread_mean, _ = geometry.realign_and_average(views, rotations)
    fused, spread_fused, _ = geometry.realign_and_average(views, rotations, "in-plane")
    error_mean, error_fused = (float(np.sqrt(np.mean((v - truth) ** 2))) for v in (mean, fused))
    assert error_fused < 0.4 * error_mean
    np.testing.assert_allclose(spread_fused, spread_mean)  # the uncertainty stays the views' spread about their mean
    channels, _, _ = geometry.realign_and_average([np.stack([v, v]) for v in views], rotations, "in-plane")
    assert channels.shape == (2, side, side, side)
    np.testing.assert_allclose(channels[1], fused, atol=1e-5)


def test_in_plane_fusion_fills_a_views_uncovered_corners_from_the_mean():
    cube = np.full((16, 16, 16), 5.0, np.float32)
    rotations = geometry.view_rotations(4)
    views = [geometry.rotate_cube(cube, r, fill=0.0) for r in rotations]
    fused, _, _ = geometry.realign_and_average(views, rotations, "in-plane")
    assert np.abs(fused - 5.0).max() < 0.05


def test_unknown_fusion_is_refused():
    rotations = geometry.view_rotations(1)
    with pytest.raises(InputError, match="view fusion"):
        geometry.realign_and_average([np.zeros((4, 4, 4), np.float32)], rotations, "median")


def test_the_cli_offers_every_fusion():
    from xdiffusion import cli

    assert cli.FUSIONS == geometry.FUSIONS and cli.DEFAULT_SAMPLING["fusion"] in geometry.FUSIONS
