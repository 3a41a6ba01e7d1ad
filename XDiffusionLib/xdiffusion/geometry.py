"""Cross-sectional geometry: planes and slice indices, the canonical cube, view rotations and view averaging.

One rule everywhere (CLI, library, Slicer module), stated in docs/geometry.md. Physical space is LPS millimetres,
arrays are in ITK index order (see io.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError
from .io import Geometry, Volume, to_sitk

PLANES = ("axial", "coronal", "sagittal")
# normal of each plane in LPS; cube axis c is the one that points most along PLANE_OF_CUBE_AXIS[c]'s normal
PLANE_NORMALS = {"sagittal": np.array([1.0, 0.0, 0.0]), "coronal": np.array([0.0, 1.0, 0.0]), "axial": np.array([0.0, 0.0, 1.0])}
PLANE_OF_CUBE_AXIS = ("sagittal", "coronal", "axial")
CUBE_AXIS_OF_PLANE = {plane: axis for axis, plane in enumerate(PLANE_OF_CUBE_AXIS)}
TIE_TOLERANCE_DEGREES = 5.0


# --- planes and slice indices -------------------------------------------------------------------------------------

def check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    return plane


def plane_axis(geometry: Geometry, plane: str) -> int:
    """The array axis whose direction lies closest to the plane's normal; a near-tie is refused, not guessed."""
    normal = PLANE_NORMALS[check_plane(plane)]
    angles = np.degrees(np.arccos(np.clip(np.abs(normal @ geometry.direction), 0.0, 1.0)))
    order = np.argsort(angles)
    if angles[order[1]] - angles[order[0]] < TIE_TOLERANCE_DEGREES:
        raise InputError(
            f"the {plane} plane is ambiguous on this oblique grid: array axes {order[0]} and {order[1]} are within "
            f"{TIE_TOLERANCE_DEGREES:g} degrees of its normal"
        )
    return int(order[0])


def middle_index(length: int) -> int:
    return length // 2


def check_slice_indices(geometry: Geometry, axis: int, indices: Sequence[int]) -> list[int]:
    """Raw 0-based ITK indices along ``axis``, validated, unique and sorted."""
    length = geometry.shape[axis]
    indices = [int(i) for i in indices]
    if not indices:
        raise InputError("no slice index given")
    bad = [i for i in indices if not 0 <= i < length]
    if bad:
        raise InputError(f"slice index {bad[0]} is outside 0..{length - 1} on that plane's axis")
    if len(set(indices)) != len(indices):
        raise InputError(f"slice indices repeat: {indices}")
    return sorted(indices)


def take_slices(volume: Volume, axis: int, indices: Sequence[int]) -> np.ndarray:
    """The 2D slices at ``indices`` along ``axis``, stacked on a leading axis (K, a, b), in index order."""
    return np.stack([np.take(volume.array, i, axis=axis) for i in indices])


# --- the canonical cube -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CubeFrame:
    """An isotropic cube of ``side`` voxels spanning ``size_mm`` around ``center``, axes ≈ (L, P, S).

    ``grid_axis[c]`` is the input grid's array axis that cube axis ``c`` runs along and ``grid_sign[c]`` whether it
    runs the same way (+1) or reversed (-1); ``axes`` holds the cube axes' physical directions as columns.
    """

    side: int
    size_mm: float
    center: np.ndarray
    axes: np.ndarray
    grid_axis: tuple[int, int, int]
    grid_sign: tuple[int, int, int]

    @property
    def voxel_mm(self) -> float:
        return self.size_mm / self.side

    @property
    def middle(self) -> float:
        return (self.side - 1) / 2.0

    @property
    def origin(self) -> np.ndarray:
        """Physical position of cube voxel (0, 0, 0)."""
        return self.center - self.axes @ np.full(3, self.middle * self.voxel_mm)

    def geometry(self) -> Geometry:
        return Geometry((self.side,) * 3, np.full(3, self.voxel_mm), self.origin, self.axes)

    def to_position(self, coordinate: np.ndarray | float) -> np.ndarray | float:
        """Cube voxel coordinate → normalised position in [-1, 1] (cube faces at ±1)."""
        return (np.asarray(coordinate) - self.middle) / (self.side / 2.0)

    def to_coordinate(self, position: np.ndarray | float) -> np.ndarray | float:
        return np.asarray(position) * (self.side / 2.0) + self.middle


def cube_frame_for_grid(geometry: Geometry, side: int) -> CubeFrame:
    """The cube for an input grid, from its metadata alone: the grid's largest extent, centred on the grid."""
    grid_axis = tuple(plane_axis(geometry, plane) for plane in PLANE_OF_CUBE_AXIS)
    if len(set(grid_axis)) != 3:
        raise InputError("the grid's axes do not map one-to-one onto sagittal, coronal and axial directions")
    grid_sign = tuple(int(np.sign(geometry.direction[c, a])) for c, a in enumerate(grid_axis))
    axes = np.stack([geometry.direction[:, a] * s for a, s in zip(grid_axis, grid_sign)], axis=1)
    size_mm = float(np.max(geometry.extent_mm))
    return CubeFrame(int(side), size_mm, geometry.center, axes, grid_axis, grid_sign)  # type: ignore[arg-type]


def _resample(image: sitk.Image, reference: Geometry, order: int, fill: float) -> np.ndarray:
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    reference_image = sitk.Image([int(n) for n in reference.shape], sitk.sitkUInt8)
    reference_image.SetSpacing([float(s) for s in reference.spacing])
    reference_image.SetOrigin([float(o) for o in reference.origin])
    reference_image.SetDirection([float(d) for d in reference.direction.ravel()])
    interpolator = sitk.sitkLinear if order == 1 else sitk.sitkNearestNeighbor
    resampled = sitk.Resample(image, reference_image, sitk.Transform(), interpolator, float(fill), image.GetPixelID())
    return sitk.GetArrayFromImage(resampled).T


def volume_to_cube(volume: Volume, frame: CubeFrame, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a whole volume into the cube (training only: inference never sees more than its input slices)."""
    image = to_sitk(volume.with_array(volume.array.astype(np.float32 if order == 1 else volume.array.dtype)))
    return _resample(image, frame.geometry(), order, fill)


def cube_to_grid(cube: np.ndarray, frame: CubeFrame, geometry: Geometry, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Resample a cube onto an output grid (trilinear for intensities, nearest for labels)."""
    image = to_sitk(Volume(np.ascontiguousarray(cube), frame.geometry()))
    return _resample(image, geometry, order, fill)


@dataclass(frozen=True)
class CubeSlice:
    """One input slice placed in the cube: its image on the cube's S×S plane, normal axis and position."""

    image: np.ndarray
    axis: int
    position: float


def slice_to_cube(slice_2d: np.ndarray, geometry: Geometry, grid_axis: int, index: float, frame: CubeFrame) -> CubeSlice:
    """Bring an input slice onto the cube plane it lies in (in-plane linear resampling, position kept exact); a
    continuous ``index`` places any plane parallel to the grid's slices."""
    cube_axis = frame.grid_axis.index(grid_axis)
    in_plane = [c for c in range(3) if c != cube_axis]
    slice_center = np.array([(n - 1) / 2.0 for n in geometry.shape], dtype=np.float64)
    slice_center[grid_axis] = index
    cube_coordinate = frame.geometry().physical_to_index(geometry.index_to_physical(slice_center))[cube_axis]
    u, v = np.meshgrid(np.arange(frame.side, dtype=np.float64), np.arange(frame.side, dtype=np.float64), indexing="ij")
    points = np.zeros((frame.side, frame.side, 3))
    points[..., in_plane[0]] = u
    points[..., in_plane[1]] = v
    points[..., cube_axis] = cube_coordinate
    grid_index = geometry.physical_to_index(frame.geometry().index_to_physical(points))
    grid_in_plane = [a for a in range(3) if a != grid_axis]
    image = ndimage.map_coordinates(
        slice_2d.astype(np.float32), [grid_index[..., grid_in_plane[0]], grid_index[..., grid_in_plane[1]]], order=1, mode="constant", cval=0.0
    )
    return CubeSlice(image.astype(np.float32), cube_axis, float(frame.to_position(cube_coordinate)))


def extrude_in_cube(slices: Sequence[CubeSlice], side: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cube voxel takes the value of its nearest input plane: the extrude baseline, and the model's prior.

    Returns the extruded cube and each voxel's distance to its nearest input plane in cube half-widths.
    """
    coordinates = np.arange(side, dtype=np.float64)
    middle = (side - 1) / 2.0
    if slices and len({cube_slice.axis for cube_slice in slices}) == 1:  # one plane: a 1D nearest-slice lookup
        axis = slices[0].axis
        distances = np.abs(coordinates[None] - np.array([s.position * (side / 2.0) + middle for s in slices])[:, None]) / (side / 2.0)
        nearest = distances.argmin(axis=0)  # first slice wins ties, as in the general case below
        images = np.stack([np.asarray(s.image, dtype=np.float32) for s in slices])[nearest]
        shape = [1, 1, 1]
        shape[axis] = side
        distance = np.broadcast_to(distances.min(axis=0).reshape(shape), (side,) * 3)
        return np.moveaxis(images, 0, axis).astype(np.float32), np.ascontiguousarray(distance, dtype=np.float32)
    best = np.full((side,) * 3, np.inf)
    cube = np.zeros((side,) * 3, dtype=np.float32)
    for cube_slice in slices:
        position = cube_slice.position * (side / 2.0) + middle
        distance_1d = np.abs(coordinates - position) / (side / 2.0)
        shape = [1, 1, 1]
        shape[cube_slice.axis] = side
        distance = np.broadcast_to(distance_1d.reshape(shape), (side,) * 3)
        values = np.expand_dims(cube_slice.image, cube_slice.axis)
        closer = distance < best
        cube = np.where(closer, np.broadcast_to(values, (side,) * 3), cube)
        best = np.where(closer, distance, best)
    return cube.astype(np.float32), best.astype(np.float32)


# --- views --------------------------------------------------------------------------------------------------------

def rotation_with_stacking_normal(normal: np.ndarray) -> np.ndarray:
    """A rotation R whose view stacks slices along ``normal`` (a cube direction): R^T e2 = normal."""
    normal = np.asarray(normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)
    reference = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = reference - (reference @ normal) * normal
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    return np.stack([u, v, normal])


def _fibonacci_hemisphere(count: int) -> list[np.ndarray]:
    golden = np.pi * (3.0 - np.sqrt(5.0))
    points = []
    for i in range(count):
        z = 1.0 - (i + 0.5) / count
        radius = np.sqrt(1.0 - z * z)
        points.append(np.array([radius * np.cos(golden * i), radius * np.sin(golden * i), z]))
    return points


def view_rotations(count: int) -> np.ndarray:
    """N view rotations: the axial, coronal and sagittal views first, then well-spread oblique ones."""
    if count < 1:
        raise InputError(f"number of views must be at least 1, got {count}")
    s = 1.0 / np.sqrt(2.0)
    normals = [
        np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]),
        np.array([s, s, 0.0]), np.array([0.0, s, s]), np.array([s, 0.0, s]),
        np.array([s, -s, 0.0]), np.array([0.0, s, -s]), np.array([-s, 0.0, s]),
    ]
    normals += [n / np.linalg.norm(n) for n in (np.array(v, float) for v in ([1, 1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, -1]))]
    if count > len(normals):
        normals += _fibonacci_hemisphere(count - len(normals))
    return np.stack([rotation_with_stacking_normal(n) for n in normals[:count]])


def view_transform(rotation: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) mapping a view voxel c to the cube coordinate R^T (c - m) + m it samples, as
    `scipy.ndimage.affine_transform` takes them (no grid of coordinates is built)."""
    middle = np.full(3, (side - 1) / 2.0)
    inverse = np.asarray(rotation, dtype=np.float64).T
    return inverse, middle - inverse @ middle


def resample_view(cube: np.ndarray, rotation: np.ndarray, order: int = 1, mode: str = "constant",
                  fill: float = 0.0) -> np.ndarray:
    """The view volume V_R(c) = cube(R^T (c - m) + m) of an (S, S, S) cube, in the cube's dtype."""
    matrix, offset = view_transform(rotation, cube.shape[-1])
    return ndimage.affine_transform(cube, matrix, offset, order=order, mode=mode, cval=fill)


def rotate_cube(cube: np.ndarray, rotation: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """The view volume V_R(c) = cube(R^T (c - m) + m); axis-aligned views are exact permutations."""
    permutation = _as_signed_permutation(rotation)
    if permutation is not None:
        return _permute(cube, *permutation)
    return resample_view(cube, rotation, order, fill=fill).astype(cube.dtype)


def _sampled_inside(rotation: np.ndarray, side: int, tolerance: float = 1e-6) -> np.ndarray:
    """Which view voxels sample a point inside the cube, one coordinate axis at a time (no (3, S, S, S) grid)."""
    matrix, offset = view_transform(rotation, side)
    index = np.arange(side, dtype=np.float64)
    inside = np.ones((side,) * 3, dtype=bool)
    for row, shift in zip(matrix, offset):
        coordinate = (row[0] * index[:, None, None] + row[1] * index[None, :, None]) + (row[2] * index[None, None, :] + shift)
        inside &= (coordinate >= -tolerance) & (coordinate <= side - 1 + tolerance)
    return inside


def realign_view(view_volume: np.ndarray, rotation: np.ndarray, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Undo a view (apply R^T) and say which cube voxels the view fully covered (1) or not (0).

    A cube voxel counts as covered only if every view voxel its interpolation reads was itself sampled from inside
    the cube, so neither the view's empty corners nor its fill-blurred edges leak into the average.
    """
    side = view_volume.shape[-1]
    inverse = rotation.T
    permutation = _as_signed_permutation(inverse)
    if permutation is not None:
        return _permute(view_volume, *permutation), np.ones((side,) * 3, dtype=np.float32)
    covered = resample_view(_sampled_inside(rotation, side).astype(np.float32), inverse, order=1, fill=0.0)
    realigned = resample_view(view_volume, inverse, order=order, mode="nearest")
    return realigned.astype(view_volume.dtype), (covered >= 1.0 - 1e-5).astype(np.float32)


FUSIONS = ("mean", "in-plane")
# Where the in-plane weighting takes over, in cycles per cube voxel: below the first edge every view counts alike (the
# views agree on coarse anatomy), above the second each frequency is taken from the views whose slice planes hold it.
IN_PLANE_BAND = (0.03, 0.10)
IN_PLANE_FLOOR = 0.02  # a view's weight along its own stacking axis: small, never zero (one view alone stays itself)


def check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise InputError(f"unknown view fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
    return fusion


def realign_and_average(
    view_volumes: Sequence[np.ndarray], rotations: Sequence[np.ndarray], fusion: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse N view volumes in the cube frame, weighting each voxel by the views that covered it.

    ``view_volumes`` are (S, S, S) or (C, S, S, S). ``fusion="mean"`` averages the covering views. ``"in-plane"``
    (`fuse_in_plane`) takes each spatial frequency from the views whose slices contain it. Returns the fused
    volume, the standard deviation across the covering views about their mean (the uncertainty map) and the number
    of covering views per voxel.
    """
    check_fusion(fusion)
    total = total_squares = coverage = None
    realigned_views = []
    for volume, rotation in zip(view_volumes, rotations):
        channels = volume if volume.ndim == 4 else volume[None]
        realigned = [realign_view(channel, np.asarray(rotation)) for channel in channels]
        valid = realigned[0][1]
        values = np.stack([values for values, _ in realigned]).astype(np.float64) * valid  # valid is 0 or 1
        total = values if total is None else total + values
        total_squares = values * values if total_squares is None else total_squares + values * values
        coverage = valid if coverage is None else coverage + valid
        if fusion == "in-plane":
            realigned_views.append((values, valid))
    if total is None or total_squares is None or coverage is None:
        raise ValueError("no views to average")
    weight = np.maximum(coverage, 1.0)
    mean = total / weight
    variance = np.maximum(total_squares / weight - mean * mean, 0.0)
    spread = np.sqrt(variance).astype(np.float32)
    normals = [np.asarray(r)[2] for r in rotations]  # R^T e2, the stacking normal, is R's last row
    fused = fuse_in_plane(realigned_views, normals, mean) if fusion == "in-plane" else mean
    squeeze = view_volumes[0].ndim == 3
    fused = fused.astype(np.float32)
    return (fused[0] if squeeze else fused), (spread[0] if squeeze else spread), coverage.astype(np.float32)


def fuse_in_plane(realigned_views: Sequence[tuple[np.ndarray, np.ndarray]], normals: Sequence[np.ndarray],
                  mean: np.ndarray) -> np.ndarray:
    """Fuse realigned views frequency by frequency, each weighted by how far the frequency lies in its slice plane.

    A view's slices are sampled independently of each other, so its detail along its own stacking axis is noise
    (streaks), while its detail within its slices is drawn by the model; averaging all views keeps both, blurred
    together. Here the weight of view v at spatial frequency k is 1 - cos²(k, n_v) (n_v its stacking axis) above
    `IN_PLANE_BAND`, 1 below it, never below `IN_PLANE_FLOOR`. ``realigned_views`` are ((C, S, S, S) values, coverage)
    pairs; voxels a view did not cover take ``mean`` (the plain average) before the transform.
    """
    shape = mean.shape[-3:]
    frequencies = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), np.fft.rfftfreq(shape[2]), indexing="ij", sparse=True)
    squared = sum(f * f for f in frequencies)
    low, high = IN_PLANE_BAND
    directional = np.clip((np.sqrt(squared) - low) / (high - low), 0.0, 1.0)
    numerator = denominator = 0.0
    for (values, valid), normal in zip(realigned_views, normals):
        filled = values + (1.0 - valid) * mean
        along = sum(f * n for f, n in zip(frequencies, normal)) ** 2 / np.maximum(squared, 1e-12)
        weight = (1.0 - directional) + directional * np.maximum(1.0 - along, IN_PLANE_FLOOR)
        numerator = numerator + weight * np.fft.rfftn(filled, axes=(-3, -2, -1))
        denominator = denominator + weight
    return np.fft.irfftn(numerator / denominator, s=shape, axes=(-3, -2, -1))


def _as_signed_permutation(rotation: np.ndarray) -> tuple[list[int], list[int]] | None:
    """(source axis, sign) per output axis when R is a signed permutation, else None."""
    rounded = np.round(rotation)
    if not np.allclose(rotation, rounded, atol=1e-9):
        return None
    # V(c) = cube(R^T (c - m) + m): output axis i reads cube axis j where R^T[j, i] = R[i, j] != 0
    sources = [int(np.flatnonzero(rounded[i])[0]) for i in range(3)]
    signs = [int(rounded[i, sources[i]]) for i in range(3)]
    return sources, signs


def _permute(volume: np.ndarray, sources: list[int], signs: list[int]) -> np.ndarray:
    lead = volume.ndim - 3
    moved = np.transpose(volume, list(range(lead)) + [lead + s for s in sources])
    flips = tuple(lead + i for i in range(3) if signs[i] < 0)
    return np.ascontiguousarray(np.flip(moved, flips) if flips else moved)
