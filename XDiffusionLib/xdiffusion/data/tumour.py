"""Synthetic BraTS-style tumours painted into healthy brains, so the model sees pathology we have no real scans of.

A tumour is nested BraTS regions: 2 oedema outermost, inside it the tumour core, made of 3 an enhancing rim and 1 a
necrotic core (a profile may leave out the necrosis, the enhancement, or keep the core small in much oedema). The
whole tumour is a union of 1-4 ellipsoidal lobes with a noise-roughened boundary, its volume drawn log-uniformly in
1-80 ml (at most a quarter of the brain) and met to the voxel by thresholding, centred in white-matter-like tissue
and clipped to the brain. Surrounding tissue is pushed outwards (mass effect); intensities follow a per-modality
contrast table. Everything is drawn from the caller's rng, so one seed gives one tumour.

The evaluation's lesions come from `heldout_lesions`, written apart with its own shape and intensity model; this
module must not share code with it, so that held-out lesions test more than held-out seeds of this recipe.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

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
# profile: (tumour-core share of the whole tumour, has a necrotic core, has an enhancing part), and how often
PROFILES: dict[str, tuple[tuple[float, float], bool, bool]] = {
    "rim-enhancing": ((0.25, 0.6), True, True),
    "solid-enhancing": ((0.2, 0.6), False, True),
    "non-enhancing": ((0.15, 0.5), True, False),
    "oedema-dominant": ((0.04, 0.15), True, True),
}
PROFILE_WEIGHTS = (0.45, 0.2, 0.15, 0.2)
VOLUME_ML = (1.0, 80.0)  # whole tumour, drawn log-uniformly
MAX_BRAIN_SHARE = 0.25  # a small brain (a test phantom, a child) gets a tumour of at most this share of it
LOBE_COUNT_WEIGHTS = (0.4, 0.3, 0.2, 0.1)  # 1, 2, 3 or 4 lobes
LOBE_OFFSET = (0.4, 1.0)  # a further lobe's centre from the first, in equivalent-sphere radii
LOBE_SIZE = (0.5, 0.9)  # a further lobe's mean semi-axis, in equivalent-sphere radii
AXIS_SCALE = (0.6, 1.5)  # a lobe's semi-axes as multiples of its mean size: round to elongated
ROUGHNESS = (0.03, 0.4)  # relative amplitude of the boundary noise: smooth to irregular
NOISE_SIGMA_MM = (2.0, 6.0)  # correlation length of that noise: fine-grained to lumpy
NOISE_CLIP = 1.5
FIELD_REACH = 2.2  # the shape is computed within this many equivalent radii of the centre
RIM_MM = (1.5, 5.0)  # enhancing rim thickness
MASS_EFFECT = (0.0, 0.3)  # peak fraction by which tissue near the tumour is pushed outwards
MASS_EFFECT_REACH = 2.5  # displacement fades to zero at this many equivalent radii from the centre
DEEP_MM = 8.0  # white matter lies at least this deep in the brain (below the cortex)
WHITE_MATTER_BAND = 0.1  # a voxel is white-matter-like within this share of the deep intensity range of its mode
CONTRAST_JITTER = 0.15
TEXTURE = 0.06  # relative noise inside replaced regions


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
    return Rotation.random(random_state=rng).as_matrix()


def _smooth_noise(shape: tuple[int, ...], spacing: np.ndarray, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise correlated over ``sigma_mm``, clipped at ``NOISE_CLIP``."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_mm / spacing)
    return np.clip(noise / max(float(noise.std()), 1e-6), -NOISE_CLIP, NOISE_CLIP)


def _box(centre: np.ndarray, radius_mm: float, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    low = np.maximum(np.floor(centre).astype(int) - half, 0)
    high = np.minimum(np.ceil(centre).astype(int) + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _offsets_mm(box: tuple[slice, ...], centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(3, *box) physical offsets of the box's voxels from the tumour centre."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
    return np.stack([(grid - np.float32(c)) * np.float32(h) for grid, c, h in zip(grids, centre, spacing)])


def _pick_centre(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A white-matter-like voxel: deep in the brain (below the cortex) and near the commonest deep intensity.

    Deep inside an adult brain white matter is the majority tissue whatever the contrast, so the mode of the deep
    intensities finds it without tissue labels. Searched on every second voxel of large grids, for speed.
    """
    stride = 2 if min(mask.shape) >= 64 else 1
    coarse = mask[::stride, ::stride, ::stride]
    depth = ndimage.distance_transform_edt(coarse, sampling=spacing * stride)
    deep = depth >= min(DEEP_MM, 0.5 * float(depth.max()))
    values = ndimage.uniform_filter(np.asarray(image, dtype=np.float32), 3)[::stride, ::stride, ::stride][deep]
    low, high = np.percentile(values, (1, 99))
    counts, edges = np.histogram(values, bins=32, range=(low, high + 1e-6))
    mode = 0.5 * (edges[counts.argmax()] + edges[counts.argmax() + 1])
    white = deep.copy()
    white[deep] = np.abs(values - mode) <= WHITE_MATTER_BAND * (high - low) + 1e-6
    candidates = np.argwhere(white if white.sum() >= 8 else deep)
    centre = candidates[rng.integers(len(candidates))] * stride
    if not mask[tuple(centre)]:  # the coarse voxel's corner left the brain: its nearest brain voxel instead
        box = tuple(slice(int(c), int(c) + stride) for c in centre)
        centre = centre + np.argwhere(mask[box])[0]
    return centre.astype(np.float64)


def _lobe_field(offsets: np.ndarray, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Distance in lobe units to the nearest of 1-4 random ellipsoidal lobes (below 1: inside a lobe's mean size);
    the first lobe sits on the centre, so the centre is always the field's minimum."""
    count = 1 + int(rng.choice(len(LOBE_COUNT_WEIGHTS), p=LOBE_COUNT_WEIGHTS))
    field = None
    for lobe in range(count):
        if lobe == 0:
            shift, size = np.zeros(3), 1.0
        else:
            direction = rng.standard_normal(3)
            shift = direction / np.linalg.norm(direction) * rng.uniform(*LOBE_OFFSET) * radius_mm
            size = rng.uniform(*LOBE_SIZE)
        axes = (radius_mm * size * rng.uniform(*AXIS_SCALE, size=3)).astype(np.float32)
        moved = offsets - shift.astype(np.float32)[:, None, None, None]
        local = np.tensordot(_random_rotation(rng).T.astype(np.float32), moved, axes=1) / axes[:, None, None, None]
        distance = np.sqrt(np.sum(local**2, axis=0))
        field = distance if field is None else np.minimum(field, distance)
    return field


def _threshold_region(field: np.ndarray, allowed: np.ndarray, voxels: int) -> np.ndarray:
    """The connected piece around the allowed minimum of ``field`` grown by raising the level until it holds at least
    ``voxels`` voxels, or everything it can reach (or just short of it, where a lobe joining overshoots more than
    stopping short would miss). The piece only grows with the level, so the level is found by
    galloping up from the plain ``voxels``-th value (enough when nothing is cut off) and then bisecting."""
    values = np.sort(field[allowed])
    if voxels <= 0 or values.size == 0:
        return np.zeros(field.shape, dtype=bool)
    seed = np.unravel_index(np.argmin(np.where(allowed, field, np.inf)), field.shape)

    def piece(index: int) -> np.ndarray:
        pieces, _ = ndimage.label(allowed & (field <= values[index]))
        return pieces == pieces[seed]

    low = min(voxels, values.size) - 1
    high, step = low, max(voxels // 16, 1)
    region = piece(high)
    while region.sum() < voxels and high < values.size - 1:
        low, high, step = high + 1, min(high + step, values.size - 1), 2 * step
        region = piece(high)
    while low < high:  # piece(high) is large enough (or all there is); piece(low - 1) is not
        middle = (low + high) // 2
        candidate = piece(middle)
        if candidate.sum() >= voxels:
            high, region = middle, candidate
        else:
            low = middle + 1
    if high > 0 and region.sum() > 1.1 * voxels:  # a lobe joined at this level: keep the closer of with and without
        smaller = piece(high - 1)
        if voxels / max(int(smaller.sum()), 1) < region.sum() / voxels:
            return smaller
    return region


def _tumour_regions(inside: np.ndarray, offsets: np.ndarray, voxels: int,
                    radius_mm: float, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BraTS labels in the box: the whole tumour (``voxels`` of the brain-clipped lobe field), the tumour core inside
    its erosion, and, per profile, a necrotic core at least ``RIM_MM`` deep in the tumour core (so it touches only
    the enhancing rim) or a core that is all one label."""
    sigma = rng.uniform(*NOISE_SIGMA_MM)
    lobes = _lobe_field(offsets, radius_mm, rng)
    whole = _threshold_region(lobes * (1.0 + rng.uniform(*ROUGHNESS) * _smooth_noise(inside.shape, spacing, sigma, rng)),
                              inside, voxels)
    name = str(rng.choice(list(PROFILES), p=PROFILE_WEIGHTS))
    share, necrotic, enhancing = PROFILES[name]
    core_field = lobes * (1.0 + rng.uniform(*ROUGHNESS) * _smooth_noise(inside.shape, spacing, sigma, rng))
    core = _threshold_region(core_field, ndimage.binary_erosion(whole), int(round(rng.uniform(*share) * whole.sum())))
    labels = np.zeros(inside.shape, dtype=np.uint8)
    labels[whole] = OEDEMA
    labels[core] = ENHANCING if enhancing else NECROTIC
    if necrotic and enhancing and core.any():
        depth = ndimage.distance_transform_edt(core, sampling=spacing)
        rim = min(rng.uniform(*RIM_MM), 0.5 * float(depth.max()))
        labels[depth > max(rim, 1.01 * float(spacing.max()))] = NECROTIC
    return labels


def _mass_effect(image: np.ndarray, mask: np.ndarray, centre: np.ndarray, radius_mm: float, spacing: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Push tissue radially away from the centre: the output at offset v samples the input at v (1 - k(|v|)).

    k(ρ) = a (1 - (ρ/ρmax)²)² is smooth, zero beyond ρmax, and keeps ρ (1 - k) increasing (a < 0.5), so the warp
    never folds. Only voxels inside the brain mask change, so a skull-stripped background stays clean.
    """
    amplitude = rng.uniform(*MASS_EFFECT)
    reach = MASS_EFFECT_REACH * radius_mm
    box = _box(centre, reach, spacing, image.shape)
    offsets = _offsets_mm(box, centre, spacing)
    q = np.clip(np.sum(offsets**2, axis=0) / reach**2, 0.0, 1.0)
    shrink = 1.0 - amplitude * (1.0 - q) ** 2
    source = centre.astype(np.float32)[:, None, None, None] + offsets * shrink[None] / spacing.astype(np.float32)[:, None, None, None]
    moved = image.copy()
    warped = ndimage.map_coordinates(image, source, order=1, mode="nearest")
    moved[box] = np.where(mask[box], warped, image[box])
    return moved


def paint_tumour(image: np.ndarray, brain_mask: np.ndarray, modality: str, rng: np.random.Generator,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image with a tumour, BraTS labels uint8)``; the tumour lies inside ``brain_mask``.

    ``image`` is a healthy volume of ``modality`` (t1, t1c, t2, flair) in any intensity units.
    """
    spacing_mm = _check_inputs(image, brain_mask, modality, spacing)
    mask = brain_mask > 0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    volume_ml = min(float(np.exp(rng.uniform(*np.log(VOLUME_ML)))), MAX_BRAIN_SHARE * float(mask.sum()) * voxel_ml)
    voxels = max(int(round(volume_ml / voxel_ml)), 1)
    radius = float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))  # of the sphere as large
    centre = _pick_centre(image, mask, spacing_mm, rng)

    box = _box(centre, FIELD_REACH * radius, spacing_mm, image.shape)
    offsets = _offsets_mm(box, centre, spacing_mm)
    seg = np.zeros(image.shape, dtype=np.uint8)
    seg[box] = _tumour_regions(mask[box], offsets, voxels, radius, spacing_mm, rng)

    reference = float(np.median(image[mask]))
    result = _mass_effect(np.asarray(image, dtype=np.float32), mask, centre, radius, spacing_mm, rng)
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
