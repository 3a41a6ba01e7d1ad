"""Synthetic BraTS-style tumours painted into healthy brains, so the model sees pathology we have no real scans of.

A tumour is three nested sub-regions with BraTS labels: 1 necrotic core, 3 enhancing rim around it, 2 oedema around
both. Shapes are ellipsoids roughened by smoothed noise; surrounding tissue is pushed outwards (mass effect) before
the tumour is painted; intensities follow a per-modality contrast table. Everything is drawn from the caller's rng,
so one seed gives one tumour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

NECROTIC, OEDEMA, ENHANCING = 1, 2, 3
# Appearance per modality and region, as a multiple of the median brain intensity (necrotic core, enhancing rim:
# replaced tissue) or of the underlying tissue (oedema: infiltrated tissue keeps its texture).
TUMOUR_CONTRAST: dict[str, dict[int, float]] = {
    "t1": {NECROTIC: 0.45, OEDEMA: 0.85, ENHANCING: 0.85},
    "t1c": {NECROTIC: 0.45, OEDEMA: 0.85, ENHANCING: 1.45},
    "t2": {NECROTIC: 1.8, OEDEMA: 1.5, ENHANCING: 1.25},
    "flair": {NECROTIC: 1.1, OEDEMA: 1.65, ENHANCING: 1.3},
}
DIAMETER_MM = (20.0, 70.0)  # whole tumour (oedema included); BraTS whole tumours are typically 30-80 mm across
AXIS_SCALE = (0.75, 1.25)  # ellipsoid semi-axes as multiples of the drawn radius
MASS_EFFECT = (0.1, 0.3)  # peak fraction by which tissue near the tumour is pushed outwards
MASS_EFFECT_REACH = 3.0  # displacement fades to zero at this many tumour radii
CONTRAST_JITTER = 0.1
TEXTURE = 0.06  # relative noise inside replaced regions
ROUGHNESS = 0.25  # relative amplitude of the noise that roughens each boundary
NOISE_SIGMA_MM = 3.0
NOISE_CLIP = 1.5
OUTER_REACH = 1.0 / (1.0 - ROUGHNESS * NOISE_CLIP)  # farthest extent of the outer boundary, in tumour radii


def _check_inputs(image: np.ndarray, brain_mask: np.ndarray, modality: str, spacing: Sequence[float]) -> np.ndarray:
    if image.ndim != 3 or image.shape != brain_mask.shape:
        raise InputError(f"tumour: image {image.shape} and brain mask {brain_mask.shape} must be 3D and the same shape")
    if modality not in TUMOUR_CONTRAST:
        raise InputError(f"tumour: unknown modality '{modality}'; use one of {', '.join(TUMOUR_CONTRAST)}")
    spacing_mm = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_mm.shape != (3,) or np.any(spacing_mm <= 0):
        raise InputError(f"tumour: spacing must be three positive numbers, got {list(spacing)}")
    if not brain_mask.any():
        raise InputError("tumour: the brain mask is empty")
    return spacing_mm


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    return q if np.linalg.det(q) > 0 else -q


def _smooth_noise(shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), NOISE_SIGMA_MM / spacing)
    return noise / max(float(noise.std()), 1e-6)


def _roughness(shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A factor around 1 that roughens a boundary; clipped so a region reaches at most ``OUTER_REACH`` radii."""
    noise = np.clip(_smooth_noise(shape, spacing, rng), -NOISE_CLIP, NOISE_CLIP)
    return 1.0 + ROUGHNESS * noise


def _box(centre: np.ndarray, radius_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    low = np.maximum(np.floor(centre).astype(int) - half, 0)
    high = np.minimum(np.ceil(centre).astype(int) + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _offsets_mm(box: tuple[slice, ...], centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(3, *box) physical offsets of the box's voxels from the tumour centre."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in box], indexing="ij")
    return np.stack([(grid - c) * h for grid, c, h in zip(grids, centre, spacing)])


def _pick_centre(brain_mask: np.ndarray, radius_mm: float, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A voxel deep enough in the brain that most of the tumour fits; the deepest ones if the brain is small."""
    depth = ndimage.distance_transform_edt(brain_mask, sampling=spacing)
    candidates = np.argwhere(depth >= min(0.9 * radius_mm, 0.5 * float(depth.max())))
    return candidates[rng.integers(len(candidates))].astype(np.float64)


def _mass_effect(image: np.ndarray, mask: np.ndarray, centre: np.ndarray, radius_mm: float, spacing: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Push tissue radially away from the centre: the output at offset v samples the input at v (1 - k(|v|)).

    k(ρ) = a (1 - (ρ/ρmax)²)² is smooth, zero beyond ρmax, and keeps ρ (1 - k) increasing (a < 0.5), so the warp
    never folds. Only voxels inside the brain mask change, so a skull-stripped background stays clean.
    """
    reach = MASS_EFFECT_REACH * radius_mm
    amplitude = rng.uniform(*MASS_EFFECT)
    box = _box(centre, reach, spacing, image.shape)
    offsets = _offsets_mm(box, centre, spacing)
    q = np.clip(np.sum(offsets**2, axis=0) / reach**2, 0.0, 1.0)
    shrink = 1.0 - amplitude * (1.0 - q) ** 2
    source = centre[:, None, None, None] + offsets * shrink[None] / spacing[:, None, None, None]
    moved = image.copy()
    warped = ndimage.map_coordinates(image, source, order=1, mode="nearest")
    moved[box] = np.where(mask[box], warped, image[box])
    return moved


def _regions(inside: np.ndarray, offsets: np.ndarray, radius_mm: float, spacing: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Nested labels in the box: each boundary is its own roughened ellipsoid, clipped inside the outer one.

    The outer region is clipped to the brain (``inside``) before the inner ones are fitted in, so the nesting holds at
    the brain's edge too.
    """
    box_shape = inside.shape
    axes = radius_mm * rng.uniform(*AXIS_SCALE, size=3)
    local = np.tensordot(_random_rotation(rng).T, offsets, axes=1) / axes[:, None, None, None]
    distance = np.sqrt(np.sum(local**2, axis=0))  # 1 on the mean outer ellipsoid
    # inner radii as fractions of the outer one, with at least 1.5 voxels between boundaries
    step = 1.5 * float(spacing.min()) / radius_mm
    enhancing_radius = max(rng.uniform(0.4, 0.65), 3 * step)
    necrotic_radius = max(enhancing_radius * rng.uniform(0.35, 0.7), step)
    outer = (distance * _roughness(box_shape, spacing, rng) < 1.0) & inside
    middle = distance * _roughness(box_shape, spacing, rng) < enhancing_radius
    inner = distance * _roughness(box_shape, spacing, rng) < necrotic_radius
    middle &= ndimage.binary_erosion(outer)
    inner &= ndimage.binary_erosion(middle)
    labels = np.zeros(box_shape, dtype=np.uint8)
    labels[outer] = OEDEMA
    labels[middle] = ENHANCING
    labels[inner] = NECROTIC
    return labels


def paint_tumour(image: np.ndarray, brain_mask: np.ndarray, modality: str, rng: np.random.Generator,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image with a tumour, BraTS labels uint8)``; the tumour lies inside ``brain_mask``.

    ``image`` is a healthy volume of ``modality`` (t1, t1c, t2, flair) in any intensity units.
    """
    spacing_mm = _check_inputs(image, brain_mask, modality, spacing)
    mask = brain_mask > 0
    radius = 0.5 * rng.uniform(*DIAMETER_MM)
    centre = _pick_centre(mask, radius, spacing_mm, rng)
    reference = float(np.median(image[mask]))
    result = _mass_effect(np.asarray(image, dtype=np.float32), mask, centre, radius, spacing_mm, rng)

    box = _box(centre, OUTER_REACH * AXIS_SCALE[1] * radius, spacing_mm, image.shape)
    offsets = _offsets_mm(box, centre, spacing_mm)
    seg = np.zeros(image.shape, dtype=np.uint8)
    seg[box] = _regions(mask[box], offsets, radius, spacing_mm, rng)

    painted = result[box]
    labels = seg[box]
    contrast = TUMOUR_CONTRAST[modality]
    for label in (OEDEMA, ENHANCING, NECROTIC):  # outer first, so inner regions overwrite the blended edges
        factor = contrast[label] * (1.0 + rng.uniform(-CONTRAST_JITTER, CONTRAST_JITTER))
        weight = np.clip(ndimage.gaussian_filter((labels == label).astype(np.float32), 0.6), 0.0, 1.0)
        weight[labels == label] = 1.0
        if label == OEDEMA:
            target = painted * factor
        else:
            texture = 1.0 + TEXTURE * rng.standard_normal(labels.shape)
            target = (reference * factor * texture).astype(np.float32)
        painted = painted + weight * (target - painted)
    result[box] = np.where(mask[box], painted, result[box])
    return result.astype(np.float32), seg
