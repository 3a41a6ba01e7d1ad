"""xdiffusion.label_baselines: the tumour-label baselines built from the input slices' labels alone."""

from __future__ import annotations

import numpy as np
import pytest

from xdiffusion.errors import InputError
from xdiffusion.evaluate import dice
from xdiffusion.io import Geometry, Volume
from xdiffusion.label_baselines import (copy_to_neighbours, ellipsoid_from_slices, ellipsoid_sections, input_labels,
                                        taper_from_slices)

SPACING = (1.0, 2.0, 1.5)


def grid(shape=(40, 30, 36), spacing=SPACING) -> Geometry:
    return Geometry(shape, spacing, (0.0, 0.0, 0.0), np.eye(3))


def ellipsoid_labels(geometry: Geometry, centre_mm, semi_mm, label: int = 2) -> np.ndarray:
    """A true ellipsoid (axis-aligned, in mm) painted ``label``."""
    coords = np.meshgrid(*(np.arange(n) * s for n, s in zip(geometry.shape, geometry.spacing)), indexing="ij")
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip(coords, centre_mm, semi_mm)) <= 1.0
    return np.where(inside, label, 0).astype(np.uint8)


def test_input_labels_takes_the_slices_and_reads_four_as_three():
    geometry = grid()
    array = np.zeros(geometry.shape, dtype=np.uint8)
    array[10:14, 5:9, 7] = 4
    slices = input_labels(Volume(array, geometry), 2, [7, 20])
    assert slices.shape == (2, 40, 30) and set(np.unique(slices[0])) == {0, 3} and not slices[1].any()
    with pytest.raises(InputError, match="BraTS"):
        input_labels(Volume(np.full(geometry.shape, 7, np.uint8), geometry), 2, [7])


def test_copy_reaches_as_far_as_asked_in_millimetres():
    geometry = grid()
    slices = np.zeros((1, 40, 30), dtype=np.uint8)
    slices[0, 10:20, 10:20] = 2
    copied = copy_to_neighbours(geometry, 2, [18], slices, reach_mm=3.0)  # 1.5 mm slices: two each side
    assert [z for z in range(36) if copied[:, :, z].any()] == [16, 17, 18, 19, 20]
    np.testing.assert_array_equal(copied[:, :, 16], slices[0])
    assert not copy_to_neighbours(geometry, 2, [18], slices, reach_mm=0.0)[:, :, 17].any()


def test_copy_default_reach_is_the_equivalent_radius_and_nearest_input_wins():
    geometry = grid()
    slices = np.zeros((2, 40, 30), dtype=np.uint8)
    slices[0, 10:20, 10:15] = 2  # 10 x 5 pixels of 1 x 2 mm = 100 mm²: radius sqrt(100 / pi) = 5.64 mm
    slices[1, 12:14, 12:14] = 3
    copied = copy_to_neighbours(geometry, 2, [10, 17], slices)
    reach_slices = int(np.floor(np.sqrt(100 / np.pi) / 1.5))  # 3 slices of 1.5 mm
    covered = [z for z in range(36) if copied[:, :, z].any()]
    assert covered == list(range(10 - reach_slices, 17 + reach_slices + 1))
    assert (copied[:, :, 13] == slices[0]).all() and (copied[:, :, 14] == slices[1]).all()  # 13 is nearer 10, 14 nearer 17


def test_ellipsoid_from_a_middle_cut_recovers_a_true_ellipsoid():
    """A cut through the centre of an ellipsoid whose through-plane semi-axis is the geometric mean of the others:
    the fit must find it again (Dice near 1)."""
    geometry = grid((60, 50, 60))
    a, b = 14.0, 9.0
    truth = ellipsoid_labels(geometry, (30.0, 50.0, 45.0), (a, b, np.sqrt(a * b)))
    middle = 30  # 45 mm / 1.5 mm
    guess = ellipsoid_from_slices(geometry, 2, [middle], input_labels(Volume(truth, geometry), 2, [middle]))
    assert dice(truth > 0, guess > 0) > 0.9
    np.testing.assert_array_equal(guess[:, :, middle] > 0, truth[:, :, middle] > 0)  # the given slice, as given


def test_ellipsoid_nests_the_regions_as_brats_labels():
    geometry = grid()
    slices = np.zeros((1, 40, 30), dtype=np.uint8)
    slices[0, 8:32, 6:24] = 2  # oedema around
    slices[0, 14:26, 11:19] = 1  # necrotic core
    slices[0, 18:22, 13:17] = 3  # enhancing
    guess = ellipsoid_from_slices(geometry, 2, [18], slices)
    whole, core, enhancing = (np.isin(guess, r) for r in ((1, 2, 3), (1, 3), (3,)))
    assert enhancing.any() and (core >= enhancing).all() and (whole >= core).all()
    assert whole.sum() > core.sum() > enhancing.sum()
    assert not ellipsoid_from_slices(geometry, 2, [18], np.zeros_like(slices)).any()  # nothing in: nothing out


def test_ellipsoid_sections_are_the_one_slice_ellipsoid_on_the_planes_asked_for():
    """The label net's shape guess is the baseline itself, plane by plane, at signed millimetre offsets."""
    geometry = grid()
    slices = np.zeros((1, 40, 30), dtype=np.uint8)
    slices[0, 8:32, 6:24] = 2
    slices[0, 14:26, 11:19] = 1
    volume = ellipsoid_from_slices(geometry, 2, [18], slices)
    spacing = np.asarray(geometry.spacing)
    offsets = (np.array([0, 3, 7, -5]) * spacing[2]).tolist()
    sections = ellipsoid_sections(slices[0], spacing[:2], float(spacing[2]), offsets)
    for section, z in zip(sections[1:], (21, 25, 13)):
        np.testing.assert_array_equal(section, volume[:, :, z])
    assert not ellipsoid_sections(slices[0], spacing[:2], float(spacing[2]), [200.0]).any()  # far beyond: nothing


def test_ellipsoid_of_several_slices_is_the_union_of_each_slice_s_ellipsoid():
    geometry = grid()
    slices = np.zeros((2, 40, 30), dtype=np.uint8)
    slices[:, 15:25, 12:18] = 2
    both = ellipsoid_from_slices(geometry, 2, [10, 20], slices)
    each = [ellipsoid_from_slices(geometry, 2, [z], slices[i:i + 1]) for i, z in enumerate((10, 20))]
    np.testing.assert_array_equal(both > 0, (each[0] > 0) | (each[1] > 0))
    depth = [z for z in range(36) if both[:, :, z].any()]
    assert depth[0] < 10 and depth[-1] > 20 and np.mean(depth) == pytest.approx(15.0)


def test_taper_of_an_elliptical_cut_is_the_ellipsoid():
    """For an elliptical mask the tapered outline and the fitted ellipsoid are one shape (up to pixel rounding)."""
    geometry = grid((60, 40, 50))
    truth = ellipsoid_labels(geometry, (30.0, 40.0, 37.5), (16.0, 22.0, np.sqrt(16.0 * 22.0)))
    given = input_labels(Volume(truth, geometry), 2, [25])
    tapered, fitted = taper_from_slices(geometry, 2, [25], given), ellipsoid_from_slices(geometry, 2, [25], given)
    assert dice(tapered > 0, fitted > 0) > 0.97 and dice(tapered > 0, truth > 0) > 0.93


def test_taper_keeps_the_outline_and_shrinks_it_towards_its_centroid():
    """An L-shaped cut: the input plane keeps the L itself (the ellipsoid would not), each section is the L scaled
    down about its centroid, smaller with distance, and nothing lies beyond the depth semi-axis."""
    geometry = grid((40, 40, 36), (1.0, 1.0, 1.0))
    slices = np.zeros((1, 40, 40), dtype=np.uint8)
    slices[0, 8:32, 8:16] = 2
    slices[0, 24:32, 8:32] = 2
    tapered = taper_from_slices(geometry, 2, [18], slices)
    np.testing.assert_array_equal(tapered[:, :, 18], slices[0])
    assert not (ellipsoid_from_slices(geometry, 2, [18], slices)[:, :, 19] == tapered[:, :, 19]).all()
    areas = [int((tapered[:, :, 18 + dz] > 0).sum()) for dz in range(0, 18)]
    assert all(a >= b for a, b in zip(areas, areas[1:])) and areas[0] > areas[5] > areas[10] > 0
    np.testing.assert_array_equal(tapered[:, :, 18 - 6], tapered[:, :, 18 + 6])  # symmetric about the input plane
    section = tapered[:, :, 18 + 8] > 0
    assert (section <= (slices[0] > 0)).all()  # the L scaled towards its centroid stays inside the L
    empty_corner = np.zeros((40, 40), dtype=bool)
    empty_corner[8:22, 18:32] = True  # the notch of the L stays empty on every plane
    assert not (tapered[empty_corner.nonzero()[0], empty_corner.nonzero()[1], :] > 0).any()


def test_taper_nests_the_regions_and_keeps_the_given_labels():
    geometry = grid()
    slices = np.zeros((1, 40, 30), dtype=np.uint8)
    slices[0, 8:32, 6:24] = 2
    slices[0, 14:26, 11:19] = 3
    slices[0, 17:23, 13:17] = 1
    tapered = taper_from_slices(geometry, 2, [18], slices)
    np.testing.assert_array_equal(tapered[:, :, 18], slices[0])
    for z in range(36):
        core = np.isin(tapered[:, :, z], (1, 3))
        assert (core <= (tapered[:, :, z] > 0)).all()
    assert not taper_from_slices(geometry, 2, [18], np.zeros_like(slices)).any()


def test_baselines_refuse_slices_that_do_not_fit():
    geometry = grid()
    with pytest.raises(InputError, match="do not fit"):
        copy_to_neighbours(geometry, 2, [5], np.zeros((1, 30, 40), np.uint8))
    with pytest.raises(InputError, match="ascending"):
        ellipsoid_from_slices(geometry, 2, [9, 5], np.zeros((2, 40, 30), np.uint8))
    with pytest.raises(InputError, match="do not fit"):
        taper_from_slices(geometry, 2, [5], np.zeros((1, 30, 40), np.uint8))
    with pytest.raises(InputError):
        copy_to_neighbours(geometry, 2, [99], np.zeros((1, 40, 30), np.uint8))
