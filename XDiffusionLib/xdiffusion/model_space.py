"""The model's own space, shared by training samples (`data/samples.py`) and inference (`pipeline.py`): intensities
mapped to [-1, 1] (`IntensityScale`), the cube coordinates a view's slice samples, an image or prior sampled there,
the input slots and the label maps the denoiser reads, and the conditioning of every slice of every view.

No torch and no training code here: inference imports this module, never the training data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from . import geometry
from .errors import InputError

TUMOUR_LABELS = (1, 2, 3)


@dataclass(frozen=True)
class IntensityScale:
    """Maps input intensities to the model's [-1, 1] range and back, from the input slices alone."""

    scale: float

    @classmethod
    def from_slices(cls, slices: Sequence[np.ndarray]) -> "IntensityScale":
        values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in slices])
        values = values[np.isfinite(values) & (values > 0)]
        if values.size == 0:
            raise InputError("the input slices hold no positive intensities (an empty slice or background only)")
        return cls(float(np.percentile(values, 99.5)) or float(values.max()))

    def normalise(self, image: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(image, dtype=np.float32) / self.scale * 2.0 - 1.0, -1.0, 2.0)

    def restore(self, model_values: np.ndarray) -> np.ndarray:
        return (np.asarray(model_values, dtype=np.float32) + 1.0) * 0.5 * self.scale



def view_plane_points(rotation: np.ndarray, side: int, depth_index: float) -> np.ndarray:
    """Cube coordinates (3, S, S) sampled by slice ``depth_index`` of the view with rotation R."""
    middle = (side - 1) / 2.0
    i, j = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64), indexing="ij")
    view = np.stack([i, j, np.full_like(i, depth_index)]).reshape(3, -1) - middle
    return (rotation.T @ view + middle).reshape(3, side, side)



def image_in_view(cube: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A cube in model units at cube ``points``; outside the cube is background (-1)."""
    return ndimage.map_coordinates(cube, points, order=1, mode="constant", cval=-1.0).astype(np.float32)



def sample_in_view(extruded: np.ndarray, distance: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The extrude prior and distance-to-known-plane at cube ``points`` (training and inference share this)."""
    known = ndimage.map_coordinates(distance, points, order=1, mode="nearest")
    return image_in_view(extruded, points), known.astype(np.float32)



def tumour_channels(labels: np.ndarray) -> np.ndarray:
    """One channel per BraTS sub-region, in {-1, 1} (diffusion works on a symmetric range)."""
    return np.stack([np.where(labels == label, 1.0, -1.0) for label in TUMOUR_LABELS]).astype(np.float32)



def extruded_label_maps(slices: Sequence[geometry.CubeSlice], label_images: Optional[Sequence[np.ndarray]],
                        side: int) -> Optional[np.ndarray]:
    """(3, S, S, S): each voxel takes its nearest input slice's label maps ((3, S, S) in {-1, 1}, `tumour_channels`),
    as the extrude prior does the image; None when no input slice shows a tumour (or none are given): every view's
    maps are then -1, and training and inference both skip the extrusion."""
    if label_images is None or max(float(m.max()) for m in label_images) <= -1.0:
        return None
    return np.stack([geometry.extrude_in_cube([geometry.CubeSlice(maps[channel], s.axis, s.position)
                                               for s, maps in zip(slices, label_images)], side)[0]
                     for channel in range(len(TUMOUR_LABELS))])



def conditioning_slots(slices: Sequence[geometry.CubeSlice], side: int, max_inputs: int,
                       slab_thickness: Optional[float] = None) -> dict[str, np.ndarray]:
    """The K input slots: images, presence, plane axis and position (empty slots zero); with ``slab_thickness``
    (cube half-widths; 2 / S for a thin slice) each present slot also carries its slab thickness."""
    if len(slices) > max_inputs:
        raise InputError(f"{len(slices)} input slices given; this model takes at most {max_inputs}")
    inputs = np.zeros((max_inputs, side, side), dtype=np.float32)
    present, plane, position = (np.zeros(max_inputs, dtype=np.float32) for _ in range(3))
    for slot, cube_slice in enumerate(slices):
        inputs[slot], present[slot], plane[slot], position[slot] = cube_slice.image, 1.0, cube_slice.axis, cube_slice.position
    slots = {"inputs": inputs, "input_present": present, "input_plane": plane, "input_position": position}
    if slab_thickness is not None:
        slots["input_thickness"] = present * np.float32(slab_thickness)
    return slots




def cube_in_view(cube: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """A (S, S, S) cube in model units as view volume (axis 2 the stacking axis); outside the cube is background (-1)."""
    return geometry.resample_view(cube, rotation, order=1, fill=-1.0).astype(np.float32)


def known_view_slices(slices: Sequence[geometry.CubeSlice], rotation: np.ndarray, side: int) -> dict[int, np.ndarray]:
    """View slice index → known image, for views that stack parallel to an input slice lying on a cube plane."""
    known = {}
    for cube_slice in slices:
        normal = np.zeros(3)
        normal[cube_slice.axis] = 1.0
        alignment = float(rotation[2] @ normal)
        coordinate = cube_slice.position * side / 2.0 + (side - 1) / 2.0
        if abs(abs(alignment) - 1.0) > 1e-9 or abs(coordinate - round(coordinate)) > 0.25:
            continue
        depth = int(round(np.sign(alignment) * (round(coordinate) - (side - 1) / 2.0) + (side - 1) / 2.0))
        known[depth] = ndimage.map_coordinates(geometry.extrude_in_cube([cube_slice], side)[0],
                                               view_plane_points(rotation, side, depth), order=0,
                                               mode="nearest").astype(np.float32)
    return known


def view_conditioning(slices: Sequence[geometry.CubeSlice], rotations: np.ndarray, modality: int, config,
                      input_label_maps: Optional[Sequence[np.ndarray]] = None, slab_thickness: Optional[float] = None,
                      atlas: Optional[np.ndarray] = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What the denoiser reads for every view × depth of a reconstruction (``config``: its `XDiffusionConfig`): the
    input slots shared by all slices, and the per-slice rest in the order (view, depth).

    ``input_label_maps``: (3, S, S) maps in {-1, 1} per input slice (label-conditioned models; none given = no
    tumour); ``slab_thickness``: the inputs' slab thickness in cube half-widths (slab-conditioned models; default a
    thin slice, 2 / S); ``atlas``: the atlas registered to the inputs, an S³ cube in model units (atlas-conditioned
    models; None withholds it)."""
    side = config.cube_size
    extruded, distance = geometry.extrude_in_cube(slices, side)
    labels = extruded_label_maps(slices, input_label_maps, side) if config.label_conditioning else None
    guesses, knowns, label_guesses, atlas_guesses = [], [], [], []
    for rotation in rotations:
        guesses.append(np.moveaxis(cube_in_view(extruded, rotation), -1, 0))
        if config.atlas_conditioning:
            atlas_guesses.append(-np.ones((side,) * 3, np.float32) if atlas is None else np.moveaxis(cube_in_view(atlas, rotation), -1, 0))
        knowns.append(np.moveaxis(geometry.resample_view(distance, rotation, order=1, mode="nearest").astype(np.float32), -1, 0))
        if labels is not None:
            label_guesses.append(np.stack([np.moveaxis(cube_in_view(m, rotation), -1, 0) for m in labels], axis=1))
        elif config.label_conditioning:
            label_guesses.append(-np.ones((side, 3, side, side), np.float32))
    thickness = (slab_thickness if slab_thickness is not None else 2.0 / side) if config.slab_conditioning else None
    depth = (np.arange(side) - (side - 1) / 2.0) / (side / 2.0)
    batch = {
        **({"label_guess": np.concatenate(label_guesses)} if config.label_conditioning else {}),
        **({"atlas_guess": np.concatenate(atlas_guesses)[:, None],
            "atlas_present": np.full((len(rotations) * side, 1, side, side), float(atlas is not None), np.float32)}
           if config.atlas_conditioning else {}),
        "guess": np.concatenate(guesses)[:, None],
        "known_distance": np.concatenate(knowns)[:, None],
        "rotation": np.repeat(rotations, side, axis=0),
        "depth": np.tile(depth, len(rotations)),
        "modality": np.full(len(rotations) * side, modality),
    }
    return conditioning_slots(slices, side, config.max_inputs, thickness), batch
