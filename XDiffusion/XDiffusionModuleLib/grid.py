"""Slice planes, indices and positions on a volume node's own grid, with numpy and VTK only.

Slicer's IJK index order is ITK's (i, j, k), and a node's IJK-to-RAS matrix differs from the LPS one the library
reads from a file only by the sign of the first two rows. The plane rule below is the library's
(`xdiffusion.geometry.plane_axis`: the array axis closest to the plane's normal, a near-tie refused), restated here
so that the panel works before the library is installed; `Testing/test_slicer_scene.py` checks that both agree.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import vtk

PLANES = ("axial", "coronal", "sagittal")
PLANE_NORMALS = {"sagittal": (1.0, 0.0, 0.0), "coronal": (0.0, 1.0, 0.0), "axial": (0.0, 0.0, 1.0)}  # RAS (and LPS)
SLICE_VIEW_PLANES = {"Axial": "axial", "Coronal": "coronal", "Sagittal": "sagittal"}
VIEW_ORIENTATION = {plane: orientation for orientation, plane in SLICE_VIEW_PLANES.items()}
TIE_TOLERANCE_DEGREES = 5.0  # the library's
NEAR_ISOTROPIC_RATIO = 1.5  # the library's (`xdiffusion.upsample.stack`): a thick slice is thicker than this x in-plane


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def dimensions(node) -> tuple[int, int, int]:
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"{node.GetName()} has no voxels")
    return tuple(int(n) for n in image.GetDimensions())


def world_to_node(node) -> np.ndarray:
    """RAS in the world (where slice views are) to RAS in the node's own frame (where its grid is); identity
    unless the node sits under a linear transform."""
    parent = node.GetParentTransformNode()
    if parent is None or not parent.IsTransformToWorldLinear():
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformFromWorld(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def plane_of_slice_view(orientation: str) -> Optional[str]:
    """'Axial' (a slice node's orientation) -> 'axial'; None for a reformatted (oblique) view."""
    return SLICE_VIEW_PLANES.get(orientation)


def plane_axis_of_matrix(matrix: np.ndarray, plane: str) -> int:
    """The IJK axis whose direction lies closest to the plane's normal; a near-tie is refused, not guessed."""
    if plane not in PLANE_NORMALS:
        raise ValueError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")
    directions = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    cosines = np.clip(np.abs(np.asarray(PLANE_NORMALS[plane]) @ directions), 0.0, 1.0)
    angles = np.degrees(np.arccos(cosines))
    order = np.argsort(angles)
    if angles[order[1]] - angles[order[0]] < TIE_TOLERANCE_DEGREES:
        raise ValueError(f"the {plane} plane is ambiguous on this oblique grid: array axes {order[0]} and {order[1]} "
                         f"are within {TIE_TOLERANCE_DEGREES:g} degrees of its normal")
    return int(order[0])


def plane_axis(node, plane: str) -> int:
    return plane_axis_of_matrix(ijk_to_ras(node), plane)


def slice_count(node, plane: str) -> int:
    return dimensions(node)[plane_axis(node, plane)]


def slice_index_at(node, plane: str, world_ras: Sequence[float]) -> int:
    """The raw 0-based index, along the plane's axis, of the slice through a point in world RAS (a slice view's
    centre), clipped to the volume."""
    local = world_to_node(node) @ np.append(np.asarray(world_ras, dtype=np.float64), 1.0)
    ijk = np.linalg.solve(ijk_to_ras(node), local)[:3]
    axis = plane_axis(node, plane)
    return int(np.clip(np.rint(ijk[axis]), 0, dimensions(node)[axis] - 1))


def slice_index_in_view(node, plane: str, slice_to_ras: np.ndarray) -> int:
    """The slice a slice view shows: where its plane (a slice node's SliceToRAS, world RAS) crosses the line through
    the volume's centre along the plane's axis. Unlike the view's centre, this does not move when the view is panned,
    and a view moved onto `slice_centre(index)` reads back ``index`` on an oblique volume too."""
    axis = plane_axis(node, plane)
    to_world = np.linalg.inv(world_to_node(node)) @ ijk_to_ras(node)
    centre = (np.asarray(dimensions(node), dtype=np.float64) - 1.0) / 2.0
    normal, point = np.asarray(slice_to_ras)[:3, 2], np.asarray(slice_to_ras)[:3, 3]
    step = to_world[:3, axis]
    if abs(normal @ step) < 1e-9 * np.linalg.norm(step):  # the view is parallel to the axis: it shows no one slice
        return slice_index_at(node, plane, point)
    index = centre[axis] + normal @ (point - (to_world @ np.append(centre, 1.0))[:3]) / (normal @ step)
    return int(np.clip(np.rint(index), 0, dimensions(node)[axis] - 1))


def slice_centre(node, plane: str, index: int) -> np.ndarray:
    """The world RAS point at the centre of the slice ``index`` along the plane's axis (where a slice view goes)."""
    axis = plane_axis(node, plane)
    ijk = (np.asarray(dimensions(node), dtype=np.float64) - 1.0) / 2.0
    ijk[axis] = float(index)
    local = ijk_to_ras(node) @ np.append(ijk, 1.0)
    return (np.linalg.inv(world_to_node(node)) @ local)[:3]


def single_slice_axis(node) -> Optional[int]:
    """The IJK axis of length 1 when the node holds one 2D slice, else None."""
    shape = dimensions(node)
    flat = [axis for axis, length in enumerate(shape) if length == 1]
    return flat[0] if len(flat) == 1 else None


def is_single_slice(node) -> bool:
    return node is not None and node.GetImageData() is not None and single_slice_axis(node) is not None


def plane_of_single_slice(node) -> str:
    """The plane a single slice lies in: its normal (the flat axis) is closest to that plane's normal."""
    axis = single_slice_axis(node)
    if axis is None:
        raise ValueError(f"{node.GetName()} is not a single slice")
    direction = ijk_to_ras(node)[:3, axis]
    direction = direction / np.linalg.norm(direction)
    return max(PLANES, key=lambda plane: abs(np.asarray(PLANE_NORMALS[plane]) @ direction))


def thick_slice_axis(node) -> Optional[int]:
    """The IJK axis of a thick-slice stack (`xdiffusion upsample`'s rule: the largest spacing, more than
    ``NEAR_ISOTROPIC_RATIO`` times the larger in-plane spacing, at least 2 slices, no axis of length 1), else None."""
    if node is None or node.GetImageData() is None or single_slice_axis(node) is not None or min(dimensions(node)) < 2:
        return None
    spacing = np.linalg.norm(ijk_to_ras(node)[:3, :3], axis=0)
    axis = int(np.argmax(spacing))
    in_plane = max(spacing[a] for a in range(3) if a != axis)
    return axis if spacing[axis] > NEAR_ISOTROPIC_RATIO * in_plane else None


def is_thick_stack(node) -> bool:
    return thick_slice_axis(node) is not None


def choose_slice_indices(length: int, current: int, count: int, spread: str) -> list[int]:
    """The input slices: ``spread`` 'even' spaces ``count`` slices evenly through the volume (the current one among
    them); 'neighbours' takes the current slice and the adjacent ones around it."""
    if count < 1 or length < 1:
        raise ValueError("need at least one slice")
    count = min(count, length)
    current = int(np.clip(current, 0, length - 1))
    if spread == "neighbours":
        start = int(np.clip(current - (count - 1) // 2, 0, length - count))
        return list(range(start, start + count))
    if spread != "even":
        raise ValueError(f"unknown spread {spread!r}; use 'even' or 'neighbours'")
    step = length / count
    others = [int(round((i + 0.5) * step - 0.5)) for i in range(count)]
    others.remove(min(others, key=lambda i: abs(i - current)))  # the current slice replaces its nearest even slice
    chosen = sorted({current, *others})
    extra = (i for i in range(length) if i not in chosen)
    while len(chosen) < count:  # rounding collisions on short axes
        chosen = sorted({*chosen, next(extra)})
    return chosen


def same_grid(first: np.ndarray, second: np.ndarray, shape_first, shape_second, atol: float = 1e-4) -> bool:
    return tuple(shape_first) == tuple(shape_second) and np.allclose(first, second, atol=atol)


def index_map(source_matrix: np.ndarray, source_shape, target_matrix: np.ndarray, target_shape,
              atol: float = 1e-3) -> Optional[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """How to put an image on ``source``'s grid onto ``target``'s when both hold the same voxel centres in another
    index order (Slicer's reader reverses an axis of a left-handed file): for each target IJK axis, the source axis it
    reads and whether it runs backwards. None when the grids hold different voxels."""
    mapping = np.linalg.solve(source_matrix, target_matrix)  # target IJK -> source IJK
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    rounded = np.rint(linear)
    if not np.allclose(linear, rounded, atol=atol) or sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1]:
        return None
    axes = tuple(int(np.argmax(np.abs(rounded[:, column]))) for column in range(3))
    if sorted(axes) != [0, 1, 2]:
        return None
    flips = tuple(bool(rounded[axes[column], column] < 0) for column in range(3))
    for column, (axis, flipped) in enumerate(zip(axes, flips)):
        if int(source_shape[axis]) != int(target_shape[column]):
            return None
        expected = (int(target_shape[column]) - 1) if flipped else 0
        if abs(offset[axis] - expected) > atol:
            return None
    return axes, flips


def array_on_grid(array_kji: np.ndarray, source_matrix: np.ndarray, target_matrix: np.ndarray,
                  target_shape) -> Optional[np.ndarray]:
    """``array_kji`` (a node's voxels, slicer order k, j, i) on the source grid, re-indexed onto the target grid;
    None when the two grids do not hold the same voxel centres."""
    source_shape = array_kji.shape[::-1]
    found = index_map(source_matrix, source_shape, target_matrix, target_shape)
    if found is None:
        return None
    axes, flips = found
    ijk = np.transpose(array_kji)  # i, j, k
    ijk = np.transpose(ijk, axes)
    for column, flipped in enumerate(flips):
        if flipped:
            ijk = np.flip(ijk, axis=column)
    return np.ascontiguousarray(np.transpose(ijk))
