"""Training samples: a volume seen in cross-section, exactly as the model will see it at inference.

A sample holds K input slices of the canonical cube, a view rotation R, a target depth d, the modality, and the
target slice of the rotated cube (image + tumour channels). Inputs are built with the same functions inference uses
(`geometry.extrude_in_cube`, `normalise_intensities`), so training and inference cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .. import geometry
from ..errors import InputError
from ..io import Volume

TUMOUR_LABELS = (1, 2, 3)
AXIS_VIEW_SHARE, PRESET_VIEW_SHARE = 0.6, 0.3  # the rest are uniformly random rotations
PRESET_VIEWS = 9
MAX_DRAWS = 50


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


@dataclass(frozen=True)
class TrainingCube:
    """One volume (real, synthesised or with a painted tumour) resampled into the canonical cube."""

    image: np.ndarray  # (S, S, S) float32, the volume's own intensity units
    tumour: np.ndarray  # (S, S, S) uint8, BraTS labels 0..3
    modality: str

    @property
    def side(self) -> int:
        return int(self.image.shape[0])


def make_training_cube(image: Volume, modality: str, side: int, tumour: Volume | None = None) -> TrainingCube:
    """Resample a volume (and its tumour labels) into the cube chosen by the same rule as at inference."""
    frame = geometry.cube_frame_for_grid(image.geometry, side)
    cube = geometry.volume_to_cube(image, frame, order=1)
    labels = (
        geometry.volume_to_cube(tumour.with_array(tumour.array.astype(np.uint8)), frame, order=0)
        if tumour is not None
        else np.zeros_like(cube, dtype=np.uint8)
    )
    labels = np.where(labels == 4, 3, labels).astype(np.uint8)
    return TrainingCube(np.maximum(cube, 0).astype(np.float32), labels, modality)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3D rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


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


def input_positions(rng: np.random.Generator, side: int, count: int) -> list[int]:
    """K slice positions: evenly spread across the middle of the cube, or one slice and its close neighbours."""
    low, high = int(side * 0.2), int(side * 0.8)
    if count == 1:
        return [int(rng.integers(low, high))]
    if rng.random() < 0.5:
        positions = np.linspace(low, high, count) + rng.integers(-2, 3, size=count)
    else:
        gap = int(rng.integers(1, max(2, side // 16) + 1))
        start = int(rng.integers(low, max(low + 1, high - gap * (count - 1))))
        positions = start + gap * np.arange(count)
    return sorted({int(np.clip(p, 0, side - 1)) for p in positions})


class SampleGenerator(torch.utils.data.Dataset):
    """An endless, seed-deterministic stream of training samples over a set of cubes (item i is always the same)."""

    def __init__(self, cubes: Sequence[TrainingCube], modalities: Sequence[str], max_inputs: int = 4, seed: int = 0, length: int = 10**9):
        if not cubes:
            raise InputError("no training cubes: fetch the data first (xdiffusion fetch-data)")
        unknown = {cube.modality for cube in cubes} - set(modalities)
        if unknown:
            raise InputError(f"training cubes have modalities {sorted(unknown)} that the model does not list")
        self.cubes = list(cubes)
        self.modalities = list(modalities)
        self.max_inputs = max_inputs
        self.seed = seed
        self.length = length
        self.preset_rotations = geometry.view_rotations(PRESET_VIEWS)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        return {key: torch.from_numpy(np.asarray(value, dtype=np.float32)) for key, value in self.sample(rng).items()}

    def choose_rotation(self, rng: np.random.Generator) -> np.ndarray:
        draw = rng.random()
        if draw < AXIS_VIEW_SHARE:
            return self.preset_rotations[int(rng.integers(0, 3))]
        if draw < AXIS_VIEW_SHARE + PRESET_VIEW_SHARE:
            return self.preset_rotations[int(rng.integers(3, PRESET_VIEWS))]
        return random_rotation(rng)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        for _ in range(MAX_DRAWS):
            cube = self.cubes[int(rng.integers(0, len(self.cubes)))]
            side = cube.side
            axis = int(rng.integers(0, 3))
            positions = input_positions(rng, side, int(rng.integers(1, self.max_inputs + 1)))
            raw_slices = [np.take(cube.image, p, axis=axis) for p in positions]
            if max(float(s.max()) for s in raw_slices) > 0:
                break  # a user never reconstructs from empty background slices; neither do we train on them
        else:
            raise InputError(f"{MAX_DRAWS} draws in a row gave only empty input slices: are the training cubes blank?")
        scale = IntensityScale.from_slices(raw_slices)
        slices = [geometry.CubeSlice(scale.normalise(s), axis, float((p - (side - 1) / 2) / (side / 2))) for s, p in zip(raw_slices, positions)]
        return build_sample(cube, scale, slices, self.choose_rotation(rng), int(rng.integers(0, side)), self.modalities.index(cube.modality), self.max_inputs)


def conditioning_slots(slices: Sequence[geometry.CubeSlice], side: int, max_inputs: int) -> dict[str, np.ndarray]:
    """The K input slots: images, presence, plane axis and position (empty slots zero)."""
    if len(slices) > max_inputs:
        raise InputError(f"{len(slices)} input slices given; this model takes at most {max_inputs}")
    inputs = np.zeros((max_inputs, side, side), dtype=np.float32)
    present, plane, position = (np.zeros(max_inputs, dtype=np.float32) for _ in range(3))
    for slot, cube_slice in enumerate(slices):
        inputs[slot], present[slot], plane[slot], position[slot] = cube_slice.image, 1.0, cube_slice.axis, cube_slice.position
    return {"inputs": inputs, "input_present": present, "input_plane": plane, "input_position": position}


def build_sample(
    cube: TrainingCube,
    scale: IntensityScale,
    slices: Sequence[geometry.CubeSlice],
    rotation: np.ndarray,
    depth_index: int,
    modality_index: int,
    max_inputs: int,
) -> dict[str, np.ndarray]:
    side = cube.side
    points = view_plane_points(rotation, side, depth_index)
    image = ndimage.map_coordinates(scale.normalise(cube.image), points, order=1, mode="constant", cval=-1.0)
    labels = ndimage.map_coordinates(cube.tumour, points, order=0, mode="constant", cval=0)
    extruded, distance = geometry.extrude_in_cube(slices, side)
    guess, known_distance = sample_in_view(extruded, distance, points)
    return {
        "target": np.concatenate([image[None], tumour_channels(labels)]),
        **conditioning_slots(slices, side, max_inputs),
        "guess": guess[None],
        "known_distance": known_distance[None],
        "rotation": np.asarray(rotation, dtype=np.float32),
        "depth": np.float32((depth_index - (side - 1) / 2) / (side / 2)),
        "modality": np.float32(modality_index),
    }
