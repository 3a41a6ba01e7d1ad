"""Label-driven synthesis (SynthSeg/SynthSR style) and spatial augmentation, through TorchIO.

We have only a handful of real healthy brains, so most of the contrast variety the model sees is synthesised: each
anatomical label gets a random intensity, then blur, bias field, gamma and noise make a random MR-like contrast.
The per-label Gaussian tissue model is the one of ``tio.RandomLabelsToImage``, drawn here in numpy: TorchIO draws a
full-volume noise field per label, which took 3 s for CerebrA's 103 labels at 81x96x81 on 2 cores (this: ~20 ms).
Spatial augmentation warps images and label maps with one shared transform (labels by nearest neighbour). TorchIO
draws from torch's global RNG, so each call seeds torch from the caller's numpy rng inside a forked RNG state: one
numpy seed gives one result, and the caller's torch state is left untouched.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from ..errors import InputError
from ..io import Geometry, Volume

MEAN_RANGE = (0.05, 1.0)  # per-label mean intensity (background stays 0, as in skull-stripped scans)
STD_RANGE = (0.01, 0.08)
BLUR_MM = (0.0, 1.0)
BIAS_COEFFICIENTS = 0.3
LOG_GAMMA = (-0.4, 0.4)
NOISE_STD = (0.0, 0.03)
ELASTIC_CONTROL_POINTS = 7
ELASTIC_MAX_MM = 4.0
AFFINE_SCALES = 0.1
AFFINE_DEGREES = 10.0
AFFINE_TRANSLATION_MM = 5.0


def _seed_torch(rng: np.random.Generator) -> None:
    torch.manual_seed(int(rng.integers(0, 2**63 - 1)))


def _affine(spacing: Sequence[float]) -> np.ndarray:
    """TorchIO only needs voxel sizes here; orientation is irrelevant to these isotropic random transforms."""
    spacing_mm = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_mm.shape != (3,) or np.any(spacing_mm <= 0):
        raise InputError(f"synthesis: spacing must be three positive numbers, got {list(spacing)}")
    return np.diag([*spacing_mm, 1.0])


def _check_labels(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise InputError(f"synthesis: label map must be 3D, got shape {array.shape}")
    if not np.array_equal(array, np.round(array)) or array.min() < 0:
        raise InputError("synthesis: label map must hold non-negative integers")
    if not np.any(array):
        raise InputError("synthesis: label map holds only background (0)")
    # consecutive labels, 0 kept as 0: fewer, smaller integers for torchio without changing the partition
    _, consecutive = np.unique(array, return_inverse=True)
    consecutive = consecutive.reshape(array.shape)
    return consecutive if array.min() == 0 else consecutive + 1


def synthesise_from_labels(labels: Volume, rng: np.random.Generator) -> np.ndarray:
    """A random-contrast float32 image on the label map's grid; label 0 stays background.

    Each label gets a Gaussian intensity (random mean and spread), then a smooth bias field, a random gamma, a blur of
    up to 1 mm and Gaussian noise.
    """
    consecutive = _check_labels(labels.array)
    count = int(consecutive.max()) + 1
    means = rng.uniform(*MEAN_RANGE, size=count)
    stds = rng.uniform(*STD_RANGE, size=count)
    means[0] = stds[0] = 0.0
    tissue = np.clip(means[consecutive] + stds[consecutive] * rng.standard_normal(consecutive.shape), 0.0, None)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(tissue[None].astype(np.float32)),
                                                affine=_affine(labels.geometry.spacing)))
    transform = tio.Compose([
        tio.RandomBiasField(coefficients=BIAS_COEFFICIENTS),
        tio.RandomGamma(log_gamma=LOG_GAMMA),
        tio.RandomBlur(std=BLUR_MM),
        tio.RandomNoise(std=NOISE_STD),
    ])
    with torch.random.fork_rng(devices=[]):
        _seed_torch(rng)
        result = transform(subject)
    return result["image"].data[0].numpy().astype(np.float32)


def augment_subject(images: Mapping[str, np.ndarray], label_maps: Mapping[str, np.ndarray],
                    rng: np.random.Generator, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One random elastic + affine warp applied to every image (linear) and label map (nearest).

    Label maps keep their dtype and values; images come back float32 with 0 outside the warped field of view.
    """
    arrays = {**images, **label_maps}
    if not arrays:
        raise InputError("augment: give at least one image or label map")
    shapes = {name: array.shape for name, array in arrays.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 3 or any(other != shape for other in shapes.values()):
        raise InputError(f"augment: images and label maps must be 3D and share one shape, got {shapes}")
    overlap = set(images) & set(label_maps)
    if overlap:
        raise InputError(f"augment: name {sorted(overlap)[0]!r} is used for both an image and a label map")
    affine = _affine(spacing)
    extent = np.asarray(shape, dtype=np.float64) * np.diag(affine)[:3]
    # stay below TorchIO's folding bound (half the control-point spacing) on small volumes
    elastic_mm = tuple(float(min(ELASTIC_MAX_MM, 0.45 * side / (ELASTIC_CONTROL_POINTS - 2))) for side in extent)
    subject = tio.Subject(
        **{name: tio.ScalarImage(tensor=torch.from_numpy(np.asarray(array, dtype=np.float32)[None]), affine=affine)
           for name, array in images.items()},
        **{name: tio.LabelMap(tensor=torch.from_numpy(np.asarray(array).astype(np.int64)[None]), affine=affine)
           for name, array in label_maps.items()},
    )
    transform = tio.Compose([
        tio.RandomElasticDeformation(num_control_points=ELASTIC_CONTROL_POINTS, max_displacement=elastic_mm),
        tio.RandomAffine(scales=AFFINE_SCALES, degrees=AFFINE_DEGREES, translation=AFFINE_TRANSLATION_MM,
                         default_pad_value=0.0),
    ])
    with torch.random.fork_rng(devices=[]):
        _seed_torch(rng)
        result = transform(subject)
    warped_images = {name: result[name].data[0].numpy().astype(np.float32) for name in images}
    warped_labels = {name: result[name].data[0].numpy().astype(np.asarray(label_maps[name]).dtype)
                     for name in label_maps}
    return warped_images, warped_labels


def downsample(volume: Volume, max_side: int, labels: bool = False) -> Volume:
    """Shrink a volume so its longest axis has ``max_side`` voxels, keeping its physical extent and orientation.

    Synthesis and augmentation cost grows with the voxel count; working at the model's cube size keeps each call
    fast. Images are low-pass filtered first (no aliasing); label maps use nearest neighbour.
    """
    if max_side < 2:
        raise InputError(f"downsample: max_side must be at least 2, got {max_side}")
    old_shape = np.asarray(volume.geometry.shape, dtype=np.float64)
    factor = max(1.0, float(old_shape.max()) / max_side)
    if factor == 1.0:
        return volume
    new_shape = tuple(max(1, int(round(n / factor))) for n in old_shape)
    zoom = np.asarray(new_shape) / old_shape
    if labels:
        array = ndimage.zoom(volume.array, zoom, order=0, mode="nearest", grid_mode=True)
    else:
        smoothed = ndimage.gaussian_filter(volume.array.astype(np.float32), np.maximum((1.0 / zoom - 1.0) / 2.0, 0))
        array = ndimage.zoom(smoothed, zoom, order=1, mode="nearest", grid_mode=True).astype(np.float32)
    geometry = volume.geometry
    spacing = geometry.spacing / zoom
    # the first voxel's centre moves by half the growth of a voxel, so the grid covers the same physical box
    origin = geometry.origin + geometry.direction @ ((spacing - geometry.spacing) / 2.0)
    return Volume(array, Geometry(array.shape, spacing, origin, geometry.direction), dict(volume.metadata))
