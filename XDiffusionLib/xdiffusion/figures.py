"""Side-by-side figures of a reconstruction against its reference (demo, reports): what a reader checks first.

Slices are shown in radiological convention from LPS-indexed arrays: for an axial slice anterior is up and the
patient's left on the right of the screen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import geometry
from .io import Volume, atomic_output

BRATS_COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.1), 3: (0.15, 0.35, 1.0)}
BRATS_NAMES = {1: "necrotic core", 2: "oedema", 3: "enhancing"}


def display_slice(volume: Volume, plane: str, index: Optional[int] = None) -> tuple[np.ndarray, float]:
    """A 2D array ready for imshow (rows = screen up→down) and its aspect ratio, for any grid orientation."""
    grid = volume.geometry
    axis = geometry.plane_axis(grid, plane)
    index = grid.shape[axis] // 2 if index is None else index
    image = np.take(volume.array, index, axis=axis).astype(np.float32)
    in_plane = [a for a in range(3) if a != axis]
    # screen right = patient left (+L) for axial/coronal, posterior (+P) for sagittal; screen up = anterior (-P) or superior (+S)
    right = np.array([1.0, 0, 0]) if plane != "sagittal" else np.array([0, 1.0, 0])
    up = np.array([0, -1.0, 0]) if plane == "axial" else np.array([0, 0, 1.0])
    projections = np.array([[grid.direction[:, a] @ right, grid.direction[:, a] @ up] for a in in_plane])
    if abs(projections[0, 0]) < abs(projections[1, 0]):  # the first in-plane axis runs vertically: transpose
        image, projections, in_plane = image.T, projections[::-1], in_plane[::-1]
    image = image.T  # rows ← second axis (vertical), columns ← first axis (horizontal)
    if projections[0, 0] < 0:
        image = image[:, ::-1]
    if projections[1, 1] > 0:
        image = image[::-1, :]
    aspect = grid.spacing[in_plane[1]] / grid.spacing[in_plane[0]]
    return np.ascontiguousarray(image), float(aspect)


def _shown_index(volume: Volume, plane: str, input_plane: str, input_index: int,
                 focus: Optional[Sequence[int]] = None) -> int:
    """The middle slice (or the one through ``focus``, a voxel), except in the input's plane: there, a slice 15 % of
    the axis away (the input is exact)."""
    axis = geometry.plane_axis(volume.geometry, plane)
    length = volume.geometry.shape[axis]
    if plane != input_plane:
        return length // 2 if focus is None else int(focus[axis])
    offset = max(1, round(0.15 * length))
    return input_index + offset if input_index + offset < length else max(0, input_index - offset)


def _overlay(axes, labels: np.ndarray, aspect: float) -> None:
    rgba = np.zeros((*labels.shape, 4))
    for label, colour in BRATS_COLOURS.items():
        rgba[labels == label] = (*colour, 0.55)
    axes.imshow(rgba, aspect=aspect, interpolation="nearest")


def comparison_figure(
    reference: Volume,
    prediction: Volume,
    path: Path,
    input_plane: str,
    input_index: int,
    reference_segmentation: Optional[Volume] = None,
    prediction_segmentation: Optional[Volume] = None,
    title: str = "",
    focus: Optional[Sequence[int]] = None,
) -> Path:
    """Input slice; reference vs reconstruction in three planes (through ``focus``, a voxel, where given: the tumour);
    absolute error; tumour overlays. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = np.percentile(reference.array, [0.5, 99.5])
    error = prediction.with_array(np.abs(prediction.array.astype(np.float32) - reference.array.astype(np.float32)))
    rows = [("reference", reference, reference_segmentation), ("reconstruction (generated)", prediction, prediction_segmentation)]
    figure, grid = plt.subplots(3, 4, figsize=(13, 9.6), dpi=100)
    image, aspect = display_slice(reference, input_plane, input_index)
    grid[0, 0].imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect)
    grid[0, 0].set_title(f"input: {input_plane} slice {input_index}")
    for column, plane in enumerate(geometry.PLANES, start=1):
        index = _shown_index(reference, plane, input_plane, input_index, focus)
        for row, (name, volume, segmentation) in enumerate(rows):
            axes = grid[row, column]
            image, aspect = display_slice(volume, plane, index)
            axes.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect)
            if segmentation is not None:
                _overlay(axes, display_slice(segmentation, plane, index)[0], aspect)
            axes.set_title(f"{name}\n{plane} slice {index}", fontsize=9)
        image, aspect = display_slice(error, plane, index)
        shown = grid[2, column].imshow(image, cmap="magma", vmin=0, vmax=(high - low) * 0.5, aspect=aspect)
        grid[2, column].set_title(f"|error| {plane}", fontsize=9)
    figure.colorbar(shown, ax=grid[2, 1:].tolist(), shrink=0.8, label="absolute error (input units)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in BRATS_COLOURS.values()]
    grid[1, 0].legend(handles, list(BRATS_NAMES.values()), loc="center", title="tumour labels")
    grid[2, 0].text(0.0, 0.5, "Generated by XDiffusion.\nSynthetic: a research tool,\nnot a diagnosis.", fontsize=11, va="center")
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    for axes in (grid[1, 0], grid[2, 0]):
        axes.axis("off")
    figure.suptitle(title or "XDiffusion reconstruction vs reference (radiological view: patient left on screen right)")
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", bbox_inches="tight")
    plt.close(figure)
    return Path(path)
