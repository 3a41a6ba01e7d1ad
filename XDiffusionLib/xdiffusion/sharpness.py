"""Sharpness of a reconstruction against its truth: the mean 3D Sobel gradient magnitude of the prediction over the
reference's, inside the brain eroded and without the input slices (`sharpness`). One of `evaluate_volumes`' metrics."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

SHARPNESS_PERCENTILE = 99.5  # of the reference inside the brain: both volumes are divided by it
SHARPNESS_EROSION = 3  # voxels (Euclidean) cut from the brain mask's edge, the grid's edge included
SHARPNESS_INPUT_MARGIN = 1  # an input slice and this many neighbours on each side are left out
SOBEL_UNIT_RAMP = 32.0  # scipy's 3D Sobel of a ramp rising 1 per voxel: 2 (central difference) x 4 x 4 (smoothing)


def sobel_magnitude(array: np.ndarray) -> np.ndarray:
    """The 3D Sobel gradient magnitude in voxel units: each axis's Sobel derivative divided by ``SOBEL_UNIT_RAMP``, so
    a ramp rising by 1 per voxel has magnitude 1 (edges of the grid: nearest value repeated)."""
    array = np.asarray(array, dtype=np.float64)
    return np.sqrt(sum((ndimage.sobel(array, axis=axis, mode="nearest") / SOBEL_UNIT_RAMP) ** 2 for axis in range(array.ndim)))


def sharpness_region(brain: np.ndarray, input_axis: Optional[int] = None, input_indices: Sequence[int] = ()) -> np.ndarray:
    """Where sharpness is averaged: ``brain`` eroded by ``SHARPNESS_EROSION`` voxels (Euclidean; the grid's edge
    counts as outside, so a brain cut by the grid is eroded there too), without the input slices along
    ``input_axis`` and their ``SHARPNESS_INPUT_MARGIN`` neighbours on each side (copies of the truth, and the seam
    between a copied slice and a generated one)."""
    padded = np.pad(np.asarray(brain, dtype=bool), 1, constant_values=False)
    region = ndimage.distance_transform_edt(padded)[(slice(1, -1),) * padded.ndim] > SHARPNESS_EROSION
    if input_axis is not None:
        length = region.shape[input_axis]
        for index in input_indices:
            low, high = max(0, int(index) - SHARPNESS_INPUT_MARGIN), min(length, int(index) + SHARPNESS_INPUT_MARGIN + 1)
            np.moveaxis(region, input_axis, 0)[low:high] = False
    return region


def sharpness(reference: np.ndarray, prediction: np.ndarray, brain: np.ndarray, input_axis: Optional[int] = None,
              input_indices: Sequence[int] = ()) -> Optional[float]:
    """Mean Sobel gradient magnitude of the prediction over that of the reference, inside ``sharpness_region``.

    Both volumes are divided by the reference's ``SHARPNESS_PERCENTILE`` inside ``brain`` and clipped to [0, 1]
    first. 1 = as sharp as the truth; below 1 = blurred; noise raises it too, so a good value lies in a band around
    1, not as high as possible. ``None`` when the region is empty or the reference has no gradient there.
    """
    brain = np.asarray(brain, dtype=bool)
    if not brain.any():
        return None
    top = float(np.percentile(reference[brain], SHARPNESS_PERCENTILE))
    if top <= 0:
        return None
    region = sharpness_region(brain, input_axis, input_indices)
    if not region.any():
        return None
    ref, pred = (np.clip(np.asarray(a, dtype=np.float64) / top, 0.0, 1.0) for a in (reference, prediction))
    truth = float(sobel_magnitude(ref)[region].mean())
    return float(sobel_magnitude(pred)[region].mean()) / truth if truth > 0 else None
