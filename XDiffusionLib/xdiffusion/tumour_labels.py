"""Tumour labels of a reconstruction, on the output grid itself (the input's resolution, not the model's cube).

Each output slice parallel to the input plane is labelled by the label net (`model.label_net`) from the reconstructed
slice, its nearest input slice, that slice's labels, the signed distance between them and the ellipsoid baseline's
guess on that plane. Labels on the input slices
come from the user (`--input-segmentation`) and are kept exactly; without them the same network first segments the
input slices themselves. Only the tumour components that reach an input slice's labels are kept.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from .label_baselines import ellipsoid_sections
from .model_space import IntensityScale
from .model.label_net import TumourLabelNet, label_net_inputs, predict_labels

BATCH = 16


def segment_input_slices(net: TumourLabelNet, images: Sequence[np.ndarray], scale: IntensityScale,
                         device: str | torch.device = "cpu") -> list[np.ndarray]:
    """The network's labels for each input slice on its own (no labels given, distance 0)."""
    inputs = np.stack([label_net_inputs(scale.normalise(image), scale.normalise(image), None, 0.0) for image in images])
    return list(predict_labels(net, inputs, BATCH, device))


def label_volume(net: TumourLabelNet, image: np.ndarray, axis: int, spacing: Sequence[float], indices: Sequence[int],
                 input_images: Sequence[np.ndarray], scale: IntensityScale,
                 input_labels: Optional[Sequence[np.ndarray]] = None,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """BraTS labels (uint8) for the reconstructed ``image`` (input units, on the input grid of voxel ``spacing`` in mm),
    slice by slice along the input ``axis``; ``input_labels`` (one 2D map per input slice) are pasted back exactly."""
    given = list(input_labels) if input_labels is not None else segment_input_slices(net, input_images, scale, device)
    stacked = np.moveaxis(image, axis, 0)
    positions = np.asarray(indices)
    depth_mm, in_plane_mm = float(spacing[axis]), np.delete(np.asarray(spacing, np.float64), axis)
    offsets_mm = (np.arange(stacked.shape[0])[:, None] - positions[None, :]) * depth_mm
    nearest = np.abs(offsets_mm).argmin(axis=1)
    guesses = [ellipsoid_sections(known, in_plane_mm, depth_mm, offsets_mm[:, k]) for k, known in enumerate(given)]
    labels = np.zeros(stacked.shape, dtype=np.uint8)
    for start in range(0, stacked.shape[0], BATCH):
        rows = range(start, min(start + BATCH, stacked.shape[0]))
        batch = np.stack([label_net_inputs(scale.normalise(stacked[z]), scale.normalise(input_images[nearest[z]]),
                                           given[nearest[z]], float(offsets_mm[z, nearest[z]]), guesses[nearest[z]][z])
                          for z in rows])
        labels[start:start + len(rows)] = predict_labels(net, batch, BATCH, device)
    for index, known in zip(indices, given):
        labels[index] = known
    return np.moveaxis(keep_tumour_seen(labels, indices), 0, axis)


def keep_tumour_seen(labels: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Only the tumour the input slices show: the whole-tumour components (6-connected, in 3D, axis 0 the input axis)
    that reach an input slice's labels. The network labels every output slice, also far beyond the lesion, where it
    was never trained (its training targets lie within the tumour's extent + 12 mm); a tumour is one connected
    object, and the one asked for is the one on the input slice."""
    components, count = ndimage.label(labels > 0)
    if count == 0:
        return labels
    seen = np.unique(np.concatenate([components[index].ravel() for index in indices]))
    return np.where(np.isin(components, seen[seen > 0]), labels, 0).astype(np.uint8)
