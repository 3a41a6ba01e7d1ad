"""Tumour-label baselines: what the input slices' own labels say about the tumour in 3D, with no model at all.

A tumour-segmenting model has to beat these to be worth its cost. Both see only the labels of the given input slices
(BraTS labels 0-3, 4 read as 3) and the output grid; distances are in millimetres (the grid's spacing), so they
hold on anisotropic grids.

- ``copy_to_neighbours``: every output slice within ``reach_mm`` of an input slice takes that (nearest) input
  slice's labels; beyond, nothing. By default the reach is the radius of the circle as large as the largest
  whole-tumour cross-section among the inputs: a tumour about as deep as it is wide.
- ``ellipsoid_from_slices``: per BraTS region (whole tumour, tumour core, enhancing) and input slice, an ellipsoid
  fitted to the region's mask in that slice: in plane, the ellipse with the same centre and second moments (a
  uniform ellipse of semi-axes a, b has variances a²/4 and b²/4 along its axes); through the plane, centred on the
  slice, with a semi-axis of sqrt(a b) (as deep as it is wide on average: one cut through the middle of a tumour
  says nothing more). Several input slices give the union of their ellipsoids. The regions are nested as BraTS
  labels are: whole tumour painted 2 (oedema), then tumour core 1 (necrosis), then enhancing 3.

And one shape prior that is not a baseline of the issue but the same idea without the ellipse:

- ``taper_from_slices``: the ellipsoid's taper applied to the region's own outline. Through the plane, at offset z,
  the section is the input slice's mask scaled about its centroid by sqrt(1 - (z / c)²), with the ellipsoid's depth
  semi-axis c = sqrt(a b); on the input slice it is the mask itself (lobes, notches and all), and for an elliptical
  mask it is the ellipsoid exactly. It has no parameter of its own: on the validation split
  (`benchmarks/tumour_shape_validation.py`) this plain taper scored above deeper, shallower and fuller ones
  (docs/model.md, "Tumour labels").

All keep the input slices' own labels on the input slices, as every image method keeps the input slices' pixels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError
from .evaluate import ENHANCING, TUMOUR_CORE, WHOLE_TUMOUR
from .geometry import check_slice_indices
from .io import Geometry, Volume

REGION_PAINT = ((WHOLE_TUMOUR, 2), (TUMOUR_CORE, 1), (ENHANCING, 3))  # painted in this order: inner regions last


def input_labels(labels: Volume, axis: int, indices: Sequence[int]) -> np.ndarray:
    """The label slices at ``indices`` along array ``axis``, shape (K, a, b), BraTS labels with 4 read as 3."""
    array = np.asarray(labels.array)
    values = np.rint(array)
    if not np.array_equal(values, array) or not np.isin(values, (0, 1, 2, 3, 4)).all():
        raise InputError("the labels must be BraTS labels 0-4")
    chosen = check_slice_indices(labels.geometry, axis, indices)
    slices = np.take(values.astype(np.uint8), chosen, axis=axis)
    slices = np.moveaxis(slices, axis, 0)
    slices[slices == 4] = 3
    return slices


def largest_cross_section(labels: np.ndarray, axis: int) -> int:
    """The index along ``axis`` of the slice with the most whole-tumour voxels (the first, on a tie): where one would
    outline the tumour."""
    tumour = np.isin(np.asarray(labels), WHOLE_TUMOUR)
    return int(np.argmax(tumour.sum(axis=tuple(a for a in range(3) if a != axis))))


def _check(geometry: Geometry, axis: int, indices: Sequence[int], slices: np.ndarray) -> tuple[list[int], np.ndarray]:
    if not 0 <= axis < 3:
        raise InputError(f"input axis {axis}: an array axis is 0, 1 or 2")
    chosen = [int(i) for i in indices]
    if sorted(chosen) != chosen or len(set(chosen)) != len(chosen):
        raise InputError(f"input slice indices {chosen} must be distinct and ascending")
    check_slice_indices(geometry, axis, chosen)
    slices = np.asarray(slices)
    in_plane = tuple(n for a, n in enumerate(geometry.shape) if a != axis)
    if slices.shape != (len(chosen), *in_plane):
        raise InputError(f"label slices of shape {slices.shape} do not fit {len(chosen)} slices of {in_plane} on axis {axis}")
    return chosen, slices


def _equivalent_radius_mm(slices: np.ndarray, pixel_mm2: float) -> float:
    """The radius of the circle as large as the largest whole-tumour cross-section among ``slices``."""
    largest = max((int(np.isin(s, WHOLE_TUMOUR).sum()) for s in slices), default=0)
    return float(np.sqrt(largest * pixel_mm2 / np.pi))


def copy_to_neighbours(geometry: Geometry, axis: int, indices: Sequence[int], slices: np.ndarray,
                       reach_mm: Optional[float] = None) -> np.ndarray:
    """Labels on ``geometry``: each input slice's labels copied to the slices within ``reach_mm`` of it (the
    nearest input slice wins); ``reach_mm`` None: the equivalent radius of the largest whole-tumour cross-section."""
    chosen, slices = _check(geometry, axis, indices, slices)
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if reach_mm is None:
        reach_mm = _equivalent_radius_mm(slices, float(np.prod(np.delete(spacing, axis))))
    if reach_mm < 0:
        raise InputError(f"reach {reach_mm} mm: must not be negative")
    positions = np.arange(geometry.shape[axis])
    distance = np.abs(positions[:, None] - np.asarray(chosen)[None, :]) * spacing[axis]
    nearest = distance.argmin(axis=1)
    stack = np.where((distance.min(axis=1) <= reach_mm + 1e-9)[:, None, None], slices[nearest], 0).astype(np.uint8)
    return np.moveaxis(stack, 0, axis)


def _ellipse(mask: np.ndarray, spacing_2d: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(centre in mm, axes as columns, semi-axes in mm) of the moment-matched ellipse of a 2D mask; None if empty.
    Each pixel counts as a uniform square, so a single pixel still has a size."""
    points = np.argwhere(mask) * spacing_2d
    if len(points) == 0:
        return None
    centre = points.mean(axis=0)
    covariance = np.cov(points.T, bias=True) if len(points) > 1 else np.zeros((2, 2))
    covariance = covariance + np.diag(spacing_2d**2 / 12.0)  # a pixel's own extent
    variances, axes = np.linalg.eigh(covariance)
    return centre, axes, 2.0 * np.sqrt(np.maximum(variances, 0.0))


def _region_inside(slice_labels: np.ndarray, region: Sequence[int], spacing_2d: np.ndarray, depth_spacing_mm: float,
                   offsets_mm: np.ndarray, outline: bool = False) -> np.ndarray:
    """(D, H, W): inside the ellipsoid fitted to ``region`` of one input slice, on planes ``offsets_mm`` from it; with
    ``outline``, inside the region's own mask tapered as that ellipsoid tapers (``taper_from_slices``)."""
    mask = np.isin(slice_labels, region)
    fitted = _ellipse(mask, spacing_2d)
    if fitted is None:
        return np.zeros((len(offsets_mm), *slice_labels.shape), dtype=bool)
    centre, axes, semi = fitted
    grid_2d = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(slice_labels.shape, spacing_2d)), indexing="ij"), axis=-1)
    depth_semi = max(float(np.sqrt(semi[0] * semi[1])), depth_spacing_mm / 2.0)
    through = (np.asarray(offsets_mm, dtype=np.float64) / depth_semi) ** 2
    if outline:
        return np.stack([_scaled_mask(mask, grid_2d, centre, spacing_2d, float(np.sqrt(1.0 - t))) if t < 1.0
                         else np.zeros(mask.shape, dtype=bool) for t in through])
    local = (grid_2d - centre) @ axes / np.maximum(semi, 1e-6)  # in-plane, in semi-axis units
    return (local**2).sum(axis=-1)[None, :, :] + through[:, None, None] <= 1.0


def _scaled_mask(mask: np.ndarray, grid_mm: np.ndarray, centre_mm: np.ndarray, spacing_2d: np.ndarray, factor: float) -> np.ndarray:
    """``mask`` scaled about ``centre_mm`` by ``factor``: each pixel looks up where it comes from (bilinear, half in)."""
    if factor >= 1.0:
        return mask.copy()
    source = (centre_mm + (grid_mm - centre_mm) / factor) / spacing_2d
    return ndimage.map_coordinates(mask.astype(np.float32), np.moveaxis(source, -1, 0), order=1, cval=0.0) >= 0.5


def ellipsoid_sections(slice_labels: np.ndarray, spacing_2d: Sequence[float], depth_spacing_mm: float,
                       offsets_mm: Sequence[float]) -> np.ndarray:
    """(D, H, W) labels of the ellipsoids fitted to one input slice (``ellipsoid_from_slices`` with that slice alone), on
    the planes ``offsets_mm`` away from it: the shape guess the label net reads beside the image."""
    offsets = np.asarray(offsets_mm, dtype=np.float64).reshape(-1)
    output = np.zeros((len(offsets), *np.shape(slice_labels)), dtype=np.uint8)
    for region, label in REGION_PAINT:
        output[_region_inside(np.asarray(slice_labels), region, np.asarray(spacing_2d, np.float64), depth_spacing_mm, offsets)] = label
    return output


def ellipsoid_from_slices(geometry: Geometry, axis: int, indices: Sequence[int], slices: np.ndarray) -> np.ndarray:
    """Labels on ``geometry``: per BraTS region, the union of the ellipsoids fitted to the region in each input slice
    (module docstring), painted whole tumour 2, tumour core 1, enhancing 3; the input slices keep their labels."""
    return _shape_from_slices(geometry, axis, indices, slices, outline=False)


def taper_from_slices(geometry: Geometry, axis: int, indices: Sequence[int], slices: np.ndarray) -> np.ndarray:
    """Labels on ``geometry``: as ``ellipsoid_from_slices``, with each region's own outline tapered in place of its
    ellipse (module docstring)."""
    return _shape_from_slices(geometry, axis, indices, slices, outline=True)


def _shape_from_slices(geometry: Geometry, axis: int, indices: Sequence[int], slices: np.ndarray, outline: bool) -> np.ndarray:
    chosen, slices = _check(geometry, axis, indices, slices)
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    spacing_2d = np.delete(spacing, axis)
    depth_mm = np.arange(geometry.shape[axis]) * spacing[axis]
    in_plane = [n for a, n in enumerate(geometry.shape) if a != axis]
    output = np.zeros((geometry.shape[axis], *in_plane), dtype=np.uint8)
    for region, label in REGION_PAINT:
        inside = np.zeros(output.shape, dtype=bool)
        for image, index in zip(slices, chosen):
            inside |= _region_inside(image, region, spacing_2d, float(spacing[axis]), depth_mm - index * spacing[axis], outline)
        output[inside] = label
    output[chosen] = slices  # the given slices, as given
    return np.moveaxis(output, 0, axis)
