"""Held-out lesions: a second lesion model, used only to evaluate, never to train.

Written apart from `tumour` (the training recipe) and sharing none of its code, so that a model scored on these
lesions is scored on shapes and intensities it has not seen, not on new seeds of what it learned from:

- shape: a star-shaped body, its radius per direction the exponential of a sum of random waves on the sphere
  (cos(ω u·n + φ) for random unit vectors n), stretched along random axes; the tumour core and the necrosis are
  the same body shrunk with their own angular waves, so the enhancing shell is thick in some directions and thin
  in others. The size is met by the level of the radius field (bisection on the volume inside the brain).
- placement: any brain voxel at least 60 % of the lesion's equivalent radius from the brain's edge.
- intensities: each compartment's target is a point on the brain's own intensity range (1st to 99th percentile,
  0 to 1, beyond 1 brighter than any tissue), drawn per modality; the oedema blends in gradually from the core
  outwards (infiltration), and a smooth field varies every compartment by a few percent.
- mass effect: an expanding inclusion: tissue inside the lesion compressed evenly, outside pushed out by a
  displacement falling as 1/r² and tapered to zero at ``PUSH_REACH`` radii.

BraTS labels: 2 oedema, 1 necrosis, 3 enhancing; 1 and 3 lie inside the oedema's erosion (they never touch healthy
tissue), and necrosis touches only the enhancing shell when there is one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

NECROSIS, OEDEMA, ENHANCING = 1, 2, 3
# per modality and compartment: where the target intensity lies on the brain's 1st-99th percentile range (0-1)
APPEARANCE: dict[str, dict[int, tuple[float, float]]] = {
    "t1": {NECROSIS: (-0.05, 0.12), ENHANCING: (0.3, 0.5), OEDEMA: (0.25, 0.45)},
    "t1c": {NECROSIS: (-0.05, 0.12), ENHANCING: (1.0, 1.3), OEDEMA: (0.25, 0.45)},
    "t2": {NECROSIS: (0.95, 1.15), ENHANCING: (0.6, 0.8), OEDEMA: (0.75, 0.95)},
    "flair": {NECROSIS: (0.2, 0.5), ENHANCING: (0.65, 0.85), OEDEMA: (0.85, 1.1)},
}
WAVES = (4, 12)  # how many random waves shape the surface
WAVE_FREQUENCY = (1.0, 4.5)  # per unit of u·n: low = broad bulges, high = many small ones
WAVE_AMPLITUDE = (0.08, 0.4)  # total log-radius spread: near-spherical to knobbly
STRETCH = (1.0, 2.0)  # the body's longest over shortest axis
CORE_SHARE = (0.35, 0.8)  # tumour core radius over the whole lesion's, along each direction (before its own waves)
NECROSIS_SHARE = (0.45, 0.8)  # necrosis radius over the core's
SOLID_CHANCE = 0.25  # no necrosis: the core is all enhancing
NON_ENHANCING_CHANCE = 0.2  # no enhancing shell: the core is all necrosis / non-enhancing tumour
PLACEMENT_DEPTH = 0.6  # of the equivalent radius, from the brain's edge
INFILTRATION = (0.35, 0.8)  # oedema strength at its outer edge, relative to next to the core
HETEROGENEITY = 0.05  # amplitude of the smooth multiplicative variation inside the lesion
HETEROGENEITY_MM = 5.0
PUSH = (0.05, 0.25)  # compression of the lesion's own tissue, and the outward push just outside it
PUSH_REACH = 3.0  # in equivalent radii
BOX_RADII = 3.0  # the body is computed within this many equivalent radii of its centre


def _check(image: np.ndarray, brain_mask: np.ndarray, modality: str, spacing: Sequence[float], min_ml: float,
           max_ml: float) -> np.ndarray:
    if image.ndim != 3 or image.shape != brain_mask.shape:
        raise InputError(f"held-out lesion: image {image.shape} and brain mask {brain_mask.shape} must be 3D and the same shape")
    if modality not in APPEARANCE:
        raise InputError(f"held-out lesion: unknown modality '{modality}'; use one of {', '.join(APPEARANCE)}")
    spacing_mm = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_mm.shape != (3,) or np.any(spacing_mm <= 0):
        raise InputError(f"held-out lesion: spacing must be three positive numbers, got {list(spacing)}")
    if not 0 < min_ml <= max_ml:
        raise InputError(f"held-out lesion: need 0 < min_ml <= max_ml, got {min_ml}, {max_ml}")
    if not brain_mask.any():
        raise InputError("held-out lesion: the brain mask is empty")
    return spacing_mm


def _unit_vectors(count: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _angular_log_radius(directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """log r(u) on unit ``directions`` (3, ...): a random sum of waves cos(ω u·n + φ), scaled to a drawn spread."""
    count = int(rng.integers(WAVES[0], WAVES[1] + 1))
    normals = _unit_vectors(count, rng)
    frequencies = rng.uniform(*WAVE_FREQUENCY, size=count)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=count)
    weights = rng.normal(size=count)
    total = np.zeros(directions.shape[1:], dtype=np.float64)
    for normal, omega, phase, weight in zip(normals, frequencies, phases, weights):
        total += weight * np.cos(omega * np.tensordot(normal, directions, axes=1) + phase)
    return rng.uniform(*WAVE_AMPLITUDE) * total / np.sqrt(0.5 * count)


def _body(grid_mm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The stretched body's radial distance and its unit directions, on physical offsets (3, ...)."""
    axes = _unit_vectors(1, rng)[0]
    basis = np.linalg.qr(np.stack([axes, rng.normal(size=3), rng.normal(size=3)], axis=1))[0]
    stretch = np.sort(rng.uniform(*STRETCH, size=3))[::-1]
    stretch /= np.cbrt(np.prod(stretch))  # volume-preserving
    local = np.tensordot(basis.T, grid_mm, axes=1) / stretch[:, None, None, None]
    radius = np.sqrt(np.sum(local**2, axis=0))
    return radius, local / np.maximum(radius, 1e-9)


def _level_for_volume(scaled: np.ndarray, allowed: np.ndarray, voxels: int) -> float:
    """The level t at which {scaled < t} inside ``allowed`` holds ``voxels`` voxels, by bisection."""
    low, high = 0.0, float(scaled[allowed].max()) + 1e-6
    for _ in range(40):
        middle = 0.5 * (low + high)
        if int(np.count_nonzero(allowed & (scaled < middle))) < voxels:
            low = middle
        else:
            high = middle
    return high


def _place(mask: np.ndarray, spacing: np.ndarray, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Any brain voxel deep enough that most of the lesion fits (the deepest ones in a brain too small for that)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deep = np.argwhere(depth >= min(PLACEMENT_DEPTH * radius_mm, float(depth.max())))
    return deep[rng.integers(len(deep))]


def _expand(image: np.ndarray, mask: np.ndarray, centre: np.ndarray, radius_mm: float, spacing: np.ndarray,
            strength: float) -> np.ndarray:
    """The expanding-inclusion warp of the module docstring, applied to brain voxels within ``PUSH_REACH`` radii."""
    reach = PUSH_REACH * radius_mm
    low = np.maximum(centre - np.ceil(reach / spacing).astype(int) - 1, 0)
    high = np.minimum(centre + np.ceil(reach / spacing).astype(int) + 2, image.shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    index = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in region], indexing="ij")).astype(np.float64)
    offset = (index - centre[:, None, None, None]) * spacing[:, None, None, None]
    rho = np.sqrt(np.sum(offset**2, axis=0))
    ratio = rho / radius_mm
    profile = np.where(ratio < 1.0, ratio, 1.0 / np.maximum(ratio, 1e-9) ** 2) * np.clip(1.0 - (rho / reach) ** 2, 0.0, 1.0) ** 2
    push_mm = strength * radius_mm * profile
    source = index - offset / np.maximum(rho, 1e-9) * push_mm / spacing[:, None, None, None]
    moved = image.copy()
    moved[region] = np.where(mask[region], ndimage.map_coordinates(image, source, order=1, mode="nearest"), image[region])
    return moved


def _lesion_labels(inside: np.ndarray, grid_mm: np.ndarray, centre: tuple[int, ...], voxels: int,
                   rng: np.random.Generator) -> np.ndarray:
    """BraTS labels on the box: the whole lesion (``voxels`` of the brain inside the star-shaped body, the piece
    holding the centre), the core and the necrosis inside successive erosions, by the module's profile chances."""
    distance, directions = _body(grid_mm, rng)
    outer = distance / np.exp(_angular_log_radius(directions, rng))
    whole = inside & (outer < _level_for_volume(outer, inside, voxels))
    pieces = ndimage.label(whole)[0]
    if whole[centre]:
        whole = pieces == pieces[centre]
    level = float(outer[whole].max()) if whole.any() else 0.0
    core_level = rng.uniform(*CORE_SHARE) * level
    core = ndimage.binary_erosion(whole) & (distance / np.exp(_angular_log_radius(directions, rng)) < core_level)
    necrosis_level = rng.uniform(*NECROSIS_SHARE) * core_level
    necrosis = ndimage.binary_erosion(core) & (distance / np.exp(_angular_log_radius(directions, rng)) < necrosis_level)
    kind = rng.random()
    labels = np.zeros(whole.shape, dtype=np.uint8)
    labels[whole] = OEDEMA
    if kind < NON_ENHANCING_CHANCE:
        labels[core] = NECROSIS
    else:
        labels[core] = ENHANCING
        if kind >= NON_ENHANCING_CHANCE + SOLID_CHANCE:
            labels[necrosis] = NECROSIS
    return labels


def _appearance(tissue: np.ndarray, labels: np.ndarray, modality: str, floor: float, span: float, spacing: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """The lesion's intensities over ``tissue`` (the box after the mass effect): replaced core compartments, an
    oedema whose strength fades from the core outwards, all under one smooth variation."""
    variation = ndimage.gaussian_filter(rng.normal(size=labels.shape), HETEROGENEITY_MM / spacing)
    variation = 1.0 + HETEROGENEITY * variation / max(float(variation.std()), 1e-9)
    core = np.isin(labels, (NECROSIS, ENHANCING))
    oedema = labels == OEDEMA
    painted = tissue.astype(np.float64)
    if oedema.any():
        from_core = ndimage.distance_transform_edt(~core, sampling=spacing) if core.any() else np.zeros(labels.shape)
        edge = rng.uniform(*INFILTRATION)
        strength = np.clip(1.0 - (1.0 - edge) * from_core / max(float(from_core[oedema].max()), 1e-6), edge, 1.0)
        target = floor + rng.uniform(*APPEARANCE[modality][OEDEMA]) * span
        painted[oedema] = ((1.0 - strength) * painted + strength * target * variation)[oedema]
    for label in (ENHANCING, NECROSIS):
        region = labels == label
        painted[region] = (floor + rng.uniform(*APPEARANCE[modality][label]) * span) * variation[region]
    return painted.astype(np.float32)


def paint_heldout_lesion(image: np.ndarray, brain_mask: np.ndarray, modality: str, rng: np.random.Generator,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0), min_ml: float = 5.0,
                         max_ml: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image with a held-out lesion, BraTS labels uint8)``: whole lesion ``min_ml``-``max_ml`` ml
    (log-uniform; less only where the brain cannot hold it), inside ``brain_mask``."""
    spacing_mm = _check(image, brain_mask, modality, spacing, min_ml, max_ml)
    mask = brain_mask > 0
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    target_ml = float(np.exp(rng.uniform(np.log(min_ml), np.log(max_ml))))
    radius_mm = float(np.cbrt(3.0 * target_ml * 1000.0 / (4.0 * np.pi)))
    centre = _place(mask, spacing_mm, radius_mm, rng)

    half = np.ceil(BOX_RADII * radius_mm / spacing_mm).astype(int)
    low, high = np.maximum(centre - half, 0), np.minimum(centre + half + 1, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    grid_mm = np.stack(np.meshgrid(*[((np.arange(s.start, s.stop) - c) * h).astype(np.float32)
                                     for s, c, h in zip(box, centre, spacing_mm)], indexing="ij"))
    labels_box = _lesion_labels(mask[box], grid_mm, tuple(int(c) for c in centre - low),
                                max(int(round(target_ml / voxel_ml)), 1), rng)

    lesion_mm3 = max(float(np.count_nonzero(labels_box)), 1.0) * voxel_ml * 1000.0
    result = _expand(np.asarray(image, dtype=np.float32), mask, centre.astype(np.float64),
                     float(np.cbrt(3.0 * lesion_mm3 / (4.0 * np.pi))), spacing_mm, rng.uniform(*PUSH))
    floor, ceiling = np.percentile(np.asarray(image, dtype=np.float64)[mask], (1, 99))
    painted = _appearance(result[box], labels_box, modality, float(floor), max(float(ceiling - floor), 1e-6), spacing_mm, rng)
    result[box] = np.where(labels_box > 0, painted, result[box])
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[box] = labels_box
    return result, labels
