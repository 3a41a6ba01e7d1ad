"""Training samples: a volume seen in cross-section, exactly as the model will see it at inference.

A sample holds K input slices of the canonical cube, a view rotation R, a target depth d, the modality, and the
target slice of the rotated cube (image + tumour channels). Inputs are built with the same functions inference uses
(`geometry.extrude_in_cube` and `model_space`), so training and inference cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .. import geometry
from ..errors import InputError
from ..io import Volume
from ..model_space import (TUMOUR_LABELS, IntensityScale, conditioning_slots, extruded_label_maps, image_in_view,  # noqa: F401
                           sample_in_view, tumour_channels, view_plane_points)

AXIS_VIEW_SHARE, PRESET_VIEW_SHARE = 0.6, 0.3  # the rest are uniformly random rotations
PRESET_VIEWS = 9
MAX_DRAWS = 50
SLAB_SHARE = 0.35  # share of slab-conditioned samples whose inputs are thick slices (slab means)
SLAB_MM = (2.0, 8.0)  # clinical thick-slice range the slab inputs are drawn from
TUMOUR_INPUT_SHARE = 0.5  # share of inputs drawn through the tumour, when the cube has one (a user points at it)
ATLAS_SHARE = 0.75  # share of an atlas-conditioned model's samples that see the atlas (the rest: withheld)


@dataclass(frozen=True)
class TrainingCube:
    """One volume (real, synthesised or with a painted tumour) resampled into the canonical cube."""

    image: np.ndarray  # (S, S, S) float32, the volume's own intensity units
    tumour: np.ndarray  # (S, S, S) uint8, BraTS labels 0..3
    modality: str
    voxel_mm: float = 0.0  # the cube's voxel size; 0 where unknown (cubes cached before it was recorded)
    atlas_draws: tuple = ()  # `atlas_draws.AtlasDraw`s: input slices with the atlas registered to them

    def __post_init__(self) -> None:
        # C order: resampled and cached cubes come Fortran-ordered (SimpleITK's axes), and every np.take of one slice
        # of such a cube copied the whole cube first (10 ms each; two thirds of the time spent building a sample)
        object.__setattr__(self, "image", np.ascontiguousarray(self.image))
        object.__setattr__(self, "tumour", np.ascontiguousarray(self.tumour))

    @property
    def side(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class SampleOptions:
    """What a model's samples carry, from its config (`XDiffusionConfig`): the training stream and the validator
    build exactly what the model was built to read."""

    max_inputs: int = 4
    tumour_in_target: bool = True
    label_conditioning: bool = False
    slab_conditioning: bool = False
    atlas_conditioning: bool = False

    @classmethod
    def from_config(cls, config) -> "SampleOptions":
        return cls(config.max_inputs, config.tumour_in_target, config.label_conditioning, config.slab_conditioning,
                   config.atlas_conditioning)


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
    return TrainingCube(np.maximum(cube, 0).astype(np.float32), labels, modality, float(frame.size_mm / side))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3D rotation, drawn from ``rng`` (SciPy's, so the stream stays seed-deterministic)."""
    return Rotation.random(random_state=rng).as_matrix()


def slab_mean(volume: np.ndarray, axis: int, centre: int, thickness: int) -> np.ndarray:
    """The mean over ``thickness`` cube slices centred on ``centre``: what a thick clinical slice measures."""
    low = max(0, centre - thickness // 2)
    high = min(volume.shape[axis], low + thickness)
    return np.take(volume, np.arange(low, high), axis=axis).mean(axis=axis)


def input_positions(rng: np.random.Generator, side: int, count: int, through: Sequence[int] = ()) -> list[int]:
    """K slice positions: evenly spread across the middle of the cube, or one slice and its close neighbours;
    with ``through`` (positions crossing a tumour), one slice always lies on one of them."""
    low, high = int(side * 0.2), int(side * 0.8)
    if count == 1:
        return [int(rng.choice(through))] if len(through) else [int(rng.integers(low, high))]
    if len(through):
        anchor = int(rng.choice(through))
        others = input_positions(rng, side, count - 1)
        return sorted({anchor, *others})
    if rng.random() < 0.5:
        positions = np.linspace(low, high, count) + rng.integers(-2, 3, size=count)
    else:
        gap = int(rng.integers(1, max(2, side // 16) + 1))
        start = int(rng.integers(low, max(low + 1, high - gap * (count - 1))))
        positions = start + gap * np.arange(count)
    return sorted({int(np.clip(p, 0, side - 1)) for p in positions})


class SampleGenerator(torch.utils.data.Dataset):
    """An endless, seed-deterministic stream of training samples over a set of cubes (item i is always the same)."""

    def __init__(self, cubes: Sequence[TrainingCube], modalities: Sequence[str], max_inputs: int = 4, seed: int = 0,
                 length: int = 10**9, options: SampleOptions | None = None):
        if not cubes:
            raise InputError("no training cubes: fetch the data first (xdiffusion fetch-data)")
        unknown = {cube.modality for cube in cubes} - set(modalities)
        if unknown:
            raise InputError(f"training cubes have modalities {sorted(unknown)} that the model does not list")
        self.cubes = list(cubes)
        self.modalities = list(modalities)
        self.options = options or SampleOptions(max_inputs)
        if self.options.atlas_conditioning and not any(cube.atlas_draws for cube in self.cubes):
            raise InputError("an atlas-conditioned model trains on cubes with atlas draws: none has any (data.atlas_draws "
                             "must be at least 1; a GPU pack carries none)")
        self.max_inputs = self.options.max_inputs
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
        options = self.options
        for _ in range(MAX_DRAWS):
            cube = self.cubes[int(rng.integers(0, len(self.cubes)))]
            side = cube.side
            atlas = None
            if options.atlas_conditioning and cube.atlas_draws and rng.random() < ATLAS_SHARE:
                atlas = cube.atlas_draws[int(rng.integers(0, len(cube.atlas_draws)))]
                axis, positions, thickness = atlas.axis, list(atlas.positions), atlas.thickness
            else:
                axis, positions, thickness = choose_inputs(rng, cube, options)
            raw_slices = [slab_mean(cube.image, axis, p, thickness) for p in positions]
            if max(float(s.max()) for s in raw_slices) > 0:
                break  # a user never reconstructs from empty background slices; neither do we train on them
        else:
            raise InputError(f"{MAX_DRAWS} draws in a row gave only empty input slices: are the training cubes blank?")
        scale = IntensityScale.from_slices(raw_slices)
        slices = [geometry.CubeSlice(scale.normalise(s), axis, float((p - (side - 1) / 2) / (side / 2))) for s, p in zip(raw_slices, positions)]
        labels = [tumour_channels(np.take(cube.tumour, p, axis=axis)) for p in positions] if options.label_conditioning else None
        return build_sample(cube, scale, slices, self.choose_rotation(rng), int(rng.integers(0, side)),
                            self.modalities.index(cube.modality), options, labels, thickness / (side / 2.0),
                            None if atlas is None else atlas.guess)


def choose_inputs(rng: np.random.Generator, cube: TrainingCube, options: SampleOptions) -> tuple[int, list[int], int]:
    """One draw of a sample's input slices: axis, positions (through the tumour for a share of label-conditioned
    samples) and slab thickness in cube slices (1, a thin slice, unless this is a thick-slice sample)."""
    side = cube.side
    axis = int(rng.integers(0, 3))
    through: Sequence[int] = ()
    if options.label_conditioning and cube.tumour.any() and rng.random() < TUMOUR_INPUT_SHARE:
        through = np.flatnonzero(np.moveaxis(cube.tumour, axis, 0).reshape(side, -1).any(axis=1))
    positions = input_positions(rng, side, int(rng.integers(1, options.max_inputs + 1)), through)
    thickness = 1
    if options.slab_conditioning and rng.random() < SLAB_SHARE:
        thickness = max(1, int(round(rng.uniform(*SLAB_MM) / (cube.voxel_mm or 240.0 / side))))
    return axis, positions, thickness


def atlas_draw_choices(rng: np.random.Generator, cube: TrainingCube, options: SampleOptions, count: int) -> list[tuple[int, list[int], int]]:
    """``count`` input-slice choices for a cube's atlas draws, drawn as training draws inputs, none of them empty."""
    choices = []
    for _ in range(count * MAX_DRAWS):
        axis, positions, thickness = choose_inputs(rng, cube, options)
        if max(float(slab_mean(cube.image, axis, p, thickness).max()) for p in positions) > 0:
            choices.append((axis, positions, thickness))
            if len(choices) == count:
                return choices
    raise InputError(f"a training cube gave only empty input slices in {count * MAX_DRAWS} draws: is it blank?")


def build_sample(
    cube: TrainingCube,
    scale: IntensityScale,
    slices: Sequence[geometry.CubeSlice],
    rotation: np.ndarray,
    depth_index: int,
    modality_index: int,
    options: SampleOptions | int,
    input_label_maps: Optional[Sequence[np.ndarray]] = None,
    slab_thickness: Optional[float] = None,
    atlas_guess: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """One sample; ``options`` may be a plain max_inputs (the original image+tumour target, no extra conditioning).
    ``atlas_guess``: the atlas registered to these input slices (S³, the cube's units), for atlas-conditioned models;
    None withholds it."""
    options = options if isinstance(options, SampleOptions) else SampleOptions(int(options))
    side = cube.side
    points = view_plane_points(rotation, side, depth_index)
    image = ndimage.map_coordinates(scale.normalise(cube.image), points, order=1, mode="constant", cval=-1.0)
    extruded, distance = geometry.extrude_in_cube(slices, side)
    guess, known_distance = sample_in_view(extruded, distance, points)
    target = image[None]
    if options.tumour_in_target:
        labels = ndimage.map_coordinates(cube.tumour, points, order=0, mode="constant", cval=0)
        target = np.concatenate([target, tumour_channels(labels)])
    extra: dict[str, np.ndarray] = {}
    if options.label_conditioning:
        label_cube = extruded_label_maps(slices, input_label_maps, side)
        extra["label_guess"] = (-np.ones((3, side, side), np.float32) if label_cube is None
                                else np.stack([image_in_view(m, points) for m in label_cube]))
    if options.atlas_conditioning:
        present = atlas_guess is not None
        extra["atlas_guess"] = (image_in_view(scale.normalise(atlas_guess.astype(np.float32)), points) if present
                                else -np.ones((side, side), np.float32))[None]
        extra["atlas_present"] = np.full((1, side, side), float(present), np.float32)
    thickness = (slab_thickness if slab_thickness is not None else 2.0 / side) if options.slab_conditioning else None
    return {
        "target": target.astype(np.float32),
        **conditioning_slots(slices, side, options.max_inputs, thickness),
        **extra,
        "guess": guess[None],
        "known_distance": known_distance[None],
        "rotation": np.asarray(rotation, dtype=np.float32),
        "depth": np.float32((depth_index - (side - 1) / 2) / (side / 2)),
        "modality": np.float32(modality_index),
    }
