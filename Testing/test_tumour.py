"""Synthetic tumours: reproducible, inside the brain, nested, with the right contrast and a mass effect."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xdiffusion.data.tumour import ENHANCING, NECROTIC, OEDEMA, TUMOUR_CONTRAST, paint_tumour
from xdiffusion.errors import InputError

SIDE = 48


def _brain(flat: bool = True) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices((SIDE, SIDE, SIDE)).astype(np.float32)
    mask = (np.sum((grid - SIDE / 2) ** 2, axis=0) < 21.0**2).astype(np.uint8)
    texture = 100.0 if flat else 100.0 + 30.0 * np.sin(grid[0] / 2.0) * np.sin(grid[1] / 2.0)
    return np.where(mask > 0, texture, 0.0).astype(np.float32), mask


def test_reproducible_from_seed_and_varies_between_seeds() -> None:
    image, mask = _brain()
    first = paint_tumour(image, mask, "t2", np.random.default_rng(3))
    second = paint_tumour(image, mask, "t2", np.random.default_rng(3))
    other = paint_tumour(image, mask, "t2", np.random.default_rng(4))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8


@pytest.mark.parametrize("seed", range(6))
def test_labels_inside_brain_nested_and_sized(seed: int) -> None:
    image, mask = _brain()
    _, seg = paint_tumour(image, mask, "flair", np.random.default_rng(seed))
    assert set(np.unique(seg).tolist()) == {0, NECROTIC, OEDEMA, ENHANCING}
    assert not np.any(seg[mask == 0])
    volumes = {label: int((seg == label).sum()) for label in (NECROTIC, OEDEMA, ENHANCING)}
    assert volumes[OEDEMA] > volumes[ENHANCING] > 0 and volumes[NECROTIC] > 0
    whole = seg > 0
    # whole tumour diameter roughly within the drawn 10-45 mm (rough edges and clipping allowed)
    diameter = 2.0 * (3.0 * whole.sum() / (4.0 * np.pi)) ** (1.0 / 3.0)
    assert 5.0 < diameter < 55.0
    # nesting: the core touches only the enhancing rim; the rim never touches healthy tissue
    assert set(np.unique(seg[ndimage.binary_dilation(seg == NECROTIC)]).tolist()) <= {NECROTIC, ENHANCING}
    assert 0 not in set(np.unique(seg[ndimage.binary_dilation(seg == ENHANCING)]).tolist())
    assert ndimage.label(seg == NECROTIC)[1] >= 1


@pytest.mark.parametrize("modality", sorted(TUMOUR_CONTRAST))
def test_intensity_changes_have_the_right_sign(modality: str) -> None:
    image, mask = _brain()
    painted, seg = paint_tumour(image, mask, modality, np.random.default_rng(11))
    mean = {label: float(painted[seg == label].mean()) for label in (NECROTIC, OEDEMA, ENHANCING)}
    expected = {"t1": {NECROTIC: -1, OEDEMA: -1}, "t1c": {NECROTIC: -1, ENHANCING: +1},
                "t2": {NECROTIC: +1, OEDEMA: +1, ENHANCING: +1}, "flair": {OEDEMA: +1, ENHANCING: +1}}[modality]
    for label, sign in expected.items():
        assert np.sign(mean[label] - 100.0) == sign, (modality, label, mean[label])
    if modality == "t1c":
        assert mean[ENHANCING] > mean[OEDEMA] > mean[NECROTIC]


def test_mass_effect_moves_tissue_near_the_tumour_only() -> None:
    image, mask = _brain(flat=False)
    painted, seg = paint_tumour(image, mask, "t1", np.random.default_rng(5))
    distance = ndimage.distance_transform_edt(seg == 0)
    near = (distance > 2) & (distance < 6) & (mask > 0)
    assert np.mean(np.abs(painted[near] - image[near]) > 1.0) > 0.3  # textured tissue around the tumour moved
    assert np.array_equal(painted[mask == 0], image[mask == 0])  # background untouched
    radius = 0.5 * 45.0
    far = (distance > 3.0 * radius + 2) & (mask > 0)
    if far.any():
        assert np.array_equal(painted[far], image[far])


def test_anisotropic_spacing_and_bad_inputs() -> None:
    image, mask = _brain()
    _, seg = paint_tumour(image[:, :, ::2], mask[:, :, ::2], "t1", np.random.default_rng(0), spacing=(1, 1, 2))
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
