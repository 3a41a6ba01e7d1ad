"""A thick-slice stack, and the isotropic grid it is upsampled onto.

A clinical 2D acquisition stores N thick slices: along its slice axis each voxel is the mean over a slab as thick as
the slice spacing (contiguous slabs, no gap: a file carries no separate slice thickness), while in-plane it is
fine. `thick_stack` recognises one and refuses what is not: a single slice, and a near-isotropic volume (slice
spacing within `NEAR_ISOTROPIC_RATIO` of the in-plane spacing). `isotropic_grid` is the output grid; the rule is
in docs/upsample.md and the test file checks it voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import geometry
from ..errors import InputError
from ..io import Geometry, Volume

NEAR_ISOTROPIC_RATIO = 1.5  # a slice spacing at most this many times the in-plane spacing is not a thick stack


@dataclass(frozen=True)
class ThickStack:
    """A volume of thick slices along ``axis`` (its largest spacing): slab ``i`` is the mean over the slab of
    thickness ``thickness_mm`` centred on slice ``i``."""

    volume: Volume
    axis: int

    @property
    def geometry(self) -> Geometry:
        return self.volume.geometry

    @property
    def count(self) -> int:
        return int(self.geometry.shape[self.axis])

    @property
    def thickness_mm(self) -> float:
        return float(self.geometry.spacing[self.axis])

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        first, second = (a for a in range(3) if a != self.axis)
        return first, second

    @property
    def in_plane_mm(self) -> float:
        """The finer in-plane spacing: the default output spacing."""
        return float(min(self.geometry.spacing[a] for a in self.in_plane_axes))

    @property
    def plane(self) -> str:
        """The anatomical plane the slices lie in: the plane whose normal is closest to the slice axis (the plane
        rule of `geometry.plane_axis`, asked the other way round; an oblique stack gets its nearest plane)."""
        normal = self.geometry.direction[:, self.axis]
        return max(geometry.PLANES, key=lambda plane: abs(float(geometry.PLANE_NORMALS[plane] @ normal)))

    def slices(self) -> np.ndarray:
        """The thick slices, (N, a, b) in slab order."""
        return np.moveaxis(self.volume.array, self.axis, 0)


def thick_stack(volume: Volume, name: str = "the input") -> ThickStack:
    """``volume`` as a thick-slice stack, or an `InputError` saying in one line why it is not one."""
    shape, spacing = volume.geometry.shape, volume.geometry.spacing
    if volume.metadata.get("source_dimension") == "2" or min(shape) == 1:
        raise InputError(f"{name} is a single 2D slice; upsample needs a stack of at least 2 thick slices "
                         "(for one slice, use `xdiffusion reconstruct`)")
    axis = int(np.argmax(spacing))
    in_plane = float(max(spacing[a] for a in range(3) if a != axis))
    if spacing[axis] <= NEAR_ISOTROPIC_RATIO * in_plane:
        raise InputError(f"{name} is already near-isotropic: its largest spacing ({spacing[axis]:g} mm) is within "
                         f"{NEAR_ISOTROPIC_RATIO:g}x of its in-plane spacing ({in_plane:g} mm); upsample takes thick "
                         "slices only")
    return ThickStack(volume, axis)


def _count(extent_mm: float, spacing_mm: float) -> int:
    """round(extent / spacing), at least 1 (a hair of float error never tips a whole voxel)."""
    return max(1, int(np.floor(extent_mm / spacing_mm + 0.5 + 1e-9)))


def check_output_spacing(spacing_mm: float) -> float:
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise InputError(f"--output-spacing must be a positive number of millimetres, got {spacing_mm}")
    return float(spacing_mm)


def isotropic_grid(stack: ThickStack, spacing_mm: Optional[float] = None) -> Geometry:
    """The output grid: the input's direction; every axis spans the input's outer voxel edges (along the slice axis:
    first slab centre minus half the slab thickness to last slab centre plus half) with round(extent / MM) voxels of
    MM each, centred on the input's centre, so each end lies within MM / 2 of the edge it spans. MM defaults to the
    finer in-plane spacing; where it equals an in-plane spacing, that axis keeps the input's voxels exactly."""
    source = stack.geometry
    spacing_mm = check_output_spacing(stack.in_plane_mm if spacing_mm is None else spacing_mm)
    if spacing_mm >= stack.thickness_mm:
        raise InputError(f"--output-spacing {spacing_mm:g} mm is not finer than the slabs ({stack.thickness_mm:g} mm); "
                         "nothing to upsample")
    shape = tuple(_count(float(extent), spacing_mm) for extent in source.extent_mm)
    voxels = float(np.prod(np.asarray(shape, dtype=np.float64)))
    from ..io import MAX_VOXELS

    if voxels > MAX_VOXELS:
        raise InputError(f"--output-spacing {spacing_mm:g} mm would make {list(shape)} voxels, too many; choose a "
                         "coarser spacing")
    spacing = np.full(3, spacing_mm)
    origin = source.center - source.direction @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * spacing)
    return Geometry(shape, spacing, origin, source.direction)


def slab_grid(stack: ThickStack, output: Geometry) -> Geometry:
    """The input's slabs on the output's in-plane grid: the output's in-plane axes, the input's slice axis. The slab
    consistency of an output is measured here (it is the input's own grid when the in-plane spacing is kept)."""
    source = stack.geometry
    shape = list(output.shape)
    spacing = output.spacing.copy()
    shape[stack.axis], spacing[stack.axis] = stack.count, stack.thickness_mm
    origin = source.center - source.direction @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * spacing)
    return Geometry(tuple(shape), spacing, origin, source.direction)
