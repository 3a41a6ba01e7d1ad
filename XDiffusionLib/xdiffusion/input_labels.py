"""Tumour labels the user drew on the input slices (`reconstruct --input-segmentation`): every method tapers them
into the tumour labels it writes, and a label-conditioned model also draws its image from them.

The label file lies on the input's grid (a 3D input) or is a 2D file of the input slice's shape (a 2D input). Only
the labels on the chosen input slices are taken and checked, with exactly the indexing `InputSlices.images` was
taken with: the rest of the file is ignored, so a label volume drawn on one slice, or one holding other labels
elsewhere, is fine. Values are BraTS labels: 1 necrotic core, 2 oedema, 3 enhancing (4, the enhancing label of
releases before 2023, is read as 3), 0 none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from . import geometry
from .errors import InputError
from .io import read_image

if TYPE_CHECKING:
    from .reconstruct import InputSlices

BRATS_VALUES = (0, 1, 2, 3, 4)
GRID_ATOL = 1e-4  # mm and direction cosines, as `evaluate` compares grids: NIfTI stores geometry as float32


def model_uses_input_labels(model_dir: str | os.PathLike) -> bool:
    """Whether a model folder's config says it is conditioned on input labels (absent: a model from before them)."""
    try:
        config = json.loads((Path(model_dir) / "xdiffusion_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # loading the model reports an unreadable config in its own words
    return isinstance(config, dict) and config.get("label_conditioning") is True


def labels_read_for_image(method: str, model: Optional[str]) -> bool:
    """Whether the image itself reads the input labels: only a label-conditioned model's does. Every method turns
    them into the tumour labels it writes (`reconstruct.tapered_input_labels`)."""
    from .model_location import resolve_model_dir

    return method == "xdiffusion" and model_uses_input_labels(resolve_model_dir(model))


def read_input_labels(path: str | os.PathLike, inputs: InputSlices) -> list[np.ndarray]:
    """The labels of each chosen input slice, uint8 BraTS values 0-3, aligned with ``inputs.images``."""
    labels = read_image(path)
    if inputs.slice_position is not None:  # a 2D input: a 2D label file of its shape
        expected = inputs.images.shape[1:]
        if not labels.is_slice or labels.array.shape[:2] != expected:
            raise InputError(f"--input-segmentation {path}: shape {list(labels.array.shape)} does not match the 2D input's "
                             f"{list(expected)}; give a 2D label file of the input slice's size")
        chosen = labels.array[None, :, :, 0]
    else:
        grid = inputs.geometry
        if labels.geometry.shape != grid.shape:
            raise InputError(f"--input-segmentation {path}: shape {list(labels.geometry.shape)} does not match the input's "
                             f"{list(grid.shape)}; the labels must lie on the input's grid")
        if not labels.geometry.same_as(grid, atol=GRID_ATOL):
            differing = [part for part in ("spacing", "origin", "direction")
                         if not np.allclose(getattr(labels.geometry, part), getattr(grid, part), atol=GRID_ATOL)]
            raise InputError(f"--input-segmentation {path}: its {' and '.join(differing)} differ from the input's; the "
                             f"labels must lie on the input's grid")
        chosen = geometry.take_slices(labels, inputs.axis, inputs.indices)
    return [_brats(image, path) for image in chosen]


def _brats(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """One slice's labels as uint8 0-3 (4 read as 3); any other value is refused, naming it."""
    values = np.unique(image)
    bad = [v for v in values.tolist() if v not in BRATS_VALUES]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise InputError(f"--input-segmentation {path}: the input slices hold values {shown}; only BraTS labels 0-4 are "
                         f"understood (1 necrotic core, 2 oedema, 3 or 4 enhancing)")
    labels = image.astype(np.uint8)
    labels[labels == 4] = 3
    return labels


def labels_present(labels: Sequence[np.ndarray]) -> list[int]:
    """The BraTS labels (1-3) that occur on the input slices, for the provenance sidecar."""
    return sorted({int(v) for image in labels for v in np.unique(image)} - {0})
