"""The slab model: a thick slice is the mean of the fine volume over its slab, not a sample at the slab's centre.

- `slab_positions`: where each output slice lies in the slabs (slab-index units).
- `slab_weights`: how much of each output slice lies in each slab (rows sum to 1: a slab's mean over the output).
- `slab_means`: an output averaged over each slab (the forward model, on the output's in-plane grid).
- `project_onto_slabs`: the slab-consistency projection every method ends with (unless turned off): for each slab,
  add the difference between the input slice and the output's slab mean to the output's slices in that slab, so
  averaging the output over each slab gives back the input slice up to float error. Where output slices straddle two
  slabs (the spacing does not divide the thickness), the same correction is the least-norm one,
  ``x + W^T (W W^T)^-1 (y - W x)``; when every output slice lies in one slab it is exactly "add the difference".
- `slab_average`: the simulation of a thick stack from a fine volume (the benchmark's and the tests' input).
"""

from __future__ import annotations

import numpy as np

from ..io import Geometry, Volume


def slab_positions(output: Geometry, slabs: Geometry, axis: int) -> np.ndarray:
    """Each output slice's centre along ``axis`` in slab-index units (slab ``i`` spans [i - 1/2, i + 1/2]): where in
    its slab an output slice lies, which the learned method is told."""
    step = np.zeros(3)
    step[axis] = 1.0
    first = slabs.physical_to_index(output.index_to_physical(np.zeros(3)))[axis]
    stride = slabs.physical_to_index(output.index_to_physical(step))[axis] - first
    return first + stride * np.arange(output.shape[axis])


def slab_weights(output: Geometry, slabs: Geometry, axis: int) -> np.ndarray:
    """(N slabs, M output slices): the fraction of slab ``i`` covered by output slice ``j``, each row normalised to sum
    to 1 (an end slab the output covers only partly is averaged over the part it covers). Both grids share their
    direction; ``slabs`` is the input's slabs (`stack.slab_grid`)."""
    centres = slab_positions(output, slabs, axis)
    half = float(output.spacing[axis] / slabs.spacing[axis]) / 2.0  # the grids share their direction
    lower, upper = centres - half, centres + half
    slab_lower = np.arange(slabs.shape[axis])[:, None] - 0.5
    overlap = np.clip(np.minimum(upper[None, :], slab_lower + 1.0) - np.maximum(lower[None, :], slab_lower), 0.0, None)
    totals = overlap.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("a slab is not covered by the output grid")
    return overlap / totals


def slab_means(array: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``array`` (on the output grid) averaged over each slab: the slab axis replaces ``axis``."""
    means = np.tensordot(weights, np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0), axes=(1, 0))
    return np.moveaxis(means, 0, axis)


def project_onto_slabs(array: np.ndarray, slabs: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """The nearest volume to ``array`` (least squares) whose slab means are ``slabs`` (the input slices on the output's
    in-plane grid, the slab axis at ``axis``). float32 out; the computation is float64."""
    residual = np.moveaxis(np.asarray(slabs, dtype=np.float64), axis, 0) - np.moveaxis(slab_means(array, weights, axis), axis, 0)
    gram = weights @ weights.T  # tridiagonal at most; diagonal when no output slice straddles two slabs
    coefficients = np.linalg.solve(gram, residual.reshape(residual.shape[0], -1)).reshape(residual.shape)
    correction = np.tensordot(weights.T, coefficients, axes=(1, 0))
    return (np.asarray(array, dtype=np.float64) + np.moveaxis(correction, 0, axis)).astype(np.float32)


def slab_consistency_error(array: np.ndarray, slabs: np.ndarray, weights: np.ndarray, axis: int) -> float:
    """Root mean square of (slab mean of ``array`` - input slice), in the input's units."""
    difference = slab_means(array, weights, axis) - np.asarray(slabs, dtype=np.float64)
    return float(np.sqrt(np.mean(difference**2)))


def slab_average(volume: Volume, axis: int, voxels_per_slab: int, start: int = 0, count: int | None = None) -> Volume:
    """A thick stack from a fine volume: the mean over each run of ``voxels_per_slab`` slices along ``axis``, from
    slice ``start`` (``count`` slabs, default as many as fit). Each thick voxel sits at its slab's centre, with the
    slab's thickness as its spacing: the geometry a scanner writes for contiguous thick slices."""
    k = int(voxels_per_slab)
    available = (volume.geometry.shape[axis] - start) // k
    count = available if count is None else int(count)
    if k < 1 or count < 1 or count > available:
        raise ValueError(f"cannot cut {count} slabs of {k} voxels from {volume.geometry.shape[axis]} slices starting at {start}")
    fine = np.moveaxis(volume.array.astype(np.float64), axis, 0)[start:start + count * k]
    thick = fine.reshape(count, k, *fine.shape[1:]).mean(axis=1)
    source = volume.geometry
    centre = np.zeros(3)
    centre[axis] = start + (k - 1) / 2.0
    spacing = source.spacing.copy()
    spacing[axis] *= k
    array = np.ascontiguousarray(np.moveaxis(thick, 0, axis).astype(np.float32))
    return Volume(array, Geometry(array.shape, spacing, source.index_to_physical(centre), source.direction))
