"""Synthetic tumours (the training recipe): reproducible, inside the brain, nested, sized, varied, with the right
contrast and a mass effect that stays near the tumour."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from xdiffusion.data.tumour import (ENHANCING, MASS_EFFECT_REACH, MAX_BRAIN_SHARE, NECROTIC, OEDEMA, TUMOUR_CONTRAST,
                                    VOLUME_ML, paint_tumour)
from xdiffusion.errors import InputError

SIDE = 64
SPACING = (2.0, 2.0, 2.0)  # a 112 mm brain: room for every tumour size


def brain_phantom(flat: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, brain mask, white matter) of a ball brain: a cortex shell, white matter, two ventricles; ``flat``:
    one intensity everywhere (100)."""
    grid = np.indices((SIDE, SIDE, SIDE)).astype(np.float32) - SIDE / 2
    radius = np.sqrt(np.sum(grid**2, axis=0))
    mask = radius < 28
    ventricles = (np.abs(np.abs(grid[0]) - 5) < 2.5) & (np.abs(grid[1]) < 9) & (np.abs(grid[2]) < 4)
    white = mask & (radius < 24) & ~ventricles
    if flat:
        return np.where(mask, 100.0, 0.0).astype(np.float32), mask, white
    texture = 8.0 * np.sin(grid[0] / 2.0) * np.sin(grid[1] / 2.0)
    image = np.where(white, 110.0, np.where(ventricles, 30.0, 70.0)) + texture
    return np.where(mask, image, 0.0).astype(np.float32), mask, white


def volume_ml(labels: np.ndarray, spacing=SPACING) -> float:
    return float((labels > 0).sum() * np.prod(spacing)) / 1000.0


def sphericity(mask: np.ndarray) -> float:
    """pi^(1/3) (6 V)^(2/3) / A from a marching-cubes surface: 1 for a ball, lower for lobed or elongated shapes."""
    vertices, faces, _, _ = measure.marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
    return float(np.pi ** (1 / 3) * (6 * mask.sum()) ** (2 / 3) / measure.mesh_surface_area(vertices, faces))


def test_reproducible_from_seed_and_varies_between_seeds() -> None:
    image, mask, _ = brain_phantom()
    first = paint_tumour(image, mask, "t2", np.random.default_rng(3), SPACING)
    second = paint_tumour(image, mask, "t2", np.random.default_rng(3), SPACING)
    other = paint_tumour(image, mask, "t2", np.random.default_rng(4), SPACING)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8


@pytest.mark.parametrize("seed", range(8))
def test_labels_inside_brain_nested_sized_and_in_white_matter(seed: int) -> None:
    image, mask, white = brain_phantom()
    _, seg = paint_tumour(image, mask, "flair", np.random.default_rng(seed), SPACING)
    whole = seg > 0
    assert not np.any(seg[~mask])
    assert VOLUME_ML[0] * 0.9 <= volume_ml(seg) <= VOLUME_ML[1] * 1.1
    assert ndimage.label(whole)[1] == 1
    assert (whole & white).any()  # centred in white matter (the centre itself lies in the tumour)
    core = np.isin(seg, (NECROTIC, ENHANCING))
    assert core.any() and (seg == OEDEMA).any()
    assert not ndimage.binary_dilation(core)[~whole].any()  # the core never touches healthy tissue
    if (seg == ENHANCING).any() and (seg == NECROTIC).any():  # necrosis inside an enhancing rim
        assert set(np.unique(seg[ndimage.binary_dilation(seg == NECROTIC)]).tolist()) <= {NECROTIC, ENHANCING}


def test_small_brains_get_small_tumours() -> None:
    image, mask, _ = brain_phantom()
    for seed in range(6):
        _, seg = paint_tumour(image, mask, "t1", np.random.default_rng(seed), (1.0, 1.0, 1.0))
        assert volume_ml(seg, (1, 1, 1)) <= MAX_BRAIN_SHARE * mask.sum() / 1000.0 * 1.1


def test_varied_volumes_profiles_and_shapes() -> None:
    image, mask, _ = brain_phantom()
    volumes, shapes, profiles = [], [], set()
    for seed in range(40):  # the rarest profile (non-enhancing, 15 %) is missed by 20 seeds 4 % of the time
        _, seg = paint_tumour(image, mask, "t1c", np.random.default_rng(seed), SPACING)
        volumes.append(volume_ml(seg))
        shapes.append(sphericity(seg > 0))
        profiles.add(((seg == NECROTIC).any(), (seg == ENHANCING).any()))
    assert min(volumes) < 5.0 and max(volumes) > 30.0  # log-uniform over 1-80 ml
    assert {(True, True), (False, True), (True, False)} <= profiles  # rim-enhancing, solid, non-enhancing
    assert np.ptp(shapes) > 0.2 and np.std(shapes) > 0.05, shapes


@pytest.mark.parametrize("modality", sorted(TUMOUR_CONTRAST))
def test_intensity_changes_have_the_right_sign(modality: str) -> None:
    image, mask, _ = brain_phantom(flat=True)
    expected = {"t1": {NECROTIC: -1, OEDEMA: -1}, "t1c": {NECROTIC: -1, ENHANCING: +1},
                "t2": {NECROTIC: +1, OEDEMA: +1, ENHANCING: +1}, "flair": {OEDEMA: +1, ENHANCING: +1}}[modality]
    seen = set()
    for seed in range(6):
        painted, seg = paint_tumour(image, mask, modality, np.random.default_rng(seed), SPACING)
        for label, sign in expected.items():
            if (seg == label).sum() > 20:
                seen.add(label)
                assert np.sign(float(painted[seg == label].mean()) - 100.0) == sign, (modality, label, seed)
    assert seen == set(expected)


def test_mass_effect_moves_tissue_near_the_tumour_only() -> None:
    image, mask, _ = brain_phantom()
    moved_near = []
    for seed in range(6):
        painted, seg = paint_tumour(image, mask, "t1", np.random.default_rng(seed), SPACING)
        distance_mm = ndimage.distance_transform_edt(seg == 0, sampling=SPACING)
        radius_mm = (3.0 * 1.1 * volume_ml(seg) * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
        assert np.array_equal(painted[~mask], image[~mask])  # background untouched
        far = distance_mm > MASS_EFFECT_REACH * radius_mm + 2 * SPACING[0]
        assert np.array_equal(painted[far], image[far])
        near = (distance_mm > 4) & (distance_mm < 12) & mask
        moved_near.append(np.mean(np.abs(painted[near] - image[near]) > 1.0))
    assert max(moved_near) > 0.3  # textured tissue around the tumour moved


def test_anisotropic_spacing_and_bad_inputs() -> None:
    image, mask, _ = brain_phantom()
    _, seg = paint_tumour(image[:, :, ::2], mask[:, :, ::2], "t1", np.random.default_rng(0), spacing=(2, 2, 4))
    assert seg.any() and seg.shape == (SIDE, SIDE, SIDE // 2)
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown modality 'pd'"):
        paint_tumour(image, mask, "pd", rng)
    with pytest.raises(InputError, match="same shape"):
        paint_tumour(image, mask[:-1], "t1", rng)
    with pytest.raises(InputError, match="brain mask is empty"):
        paint_tumour(image, np.zeros_like(mask), "t1", rng)
    with pytest.raises(InputError, match="spacing must be three positive"):
        paint_tumour(image, mask, "t1", rng, spacing=(1, 0, 1))
