"""The registered atlas as a conditioning channel in training (issue 13, item 4).

At inference `atlas.atlas_in_cube` registers the template to the user's input slices (a 2D affine and B-spline per
slice, seconds on one core). A training sample needs that guess for its own input slices, far too slow to compute
while training, so each training cube carries a few precomputed draws: a choice of input slices (axis, positions,
slab thickness) and the atlas registered to exactly those slices by the same function inference calls, with the cube
itself as the input grid. An atlas-conditioned model takes a sample's input slices from one of its cube's draws
(`samples.ATLAS_SHARE` of samples) and sees the atlas withheld otherwise, so the same model reconstructs without any template
(`--prior none`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import geometry
from ..atomic_files import atomic_output
from ..io import Geometry, Volume

ATLAS_DRAWS_VERSION = 1  # in the draw cache's file name: bump when what a draw computes changes


@dataclass(frozen=True)
class AtlasDraw:
    """One choice of input slices of a training cube and the atlas guess registered to them."""

    axis: int
    positions: tuple[int, ...]
    thickness: int  # cube slices averaged into each input (1: a thin slice)
    guess: np.ndarray  # (S, S, S) float16, the cube's intensity units; the input slices lie in it


def cube_grid(side: int, voxel_mm: float) -> Geometry:
    """A training cube seen as an input grid (identity axes, centred at the origin): its cube frame
    (`geometry.cube_frame_for_grid`) is the cube itself, voxel for voxel."""
    return geometry.CubeFrame(side, side * voxel_mm, np.zeros(3), np.eye(3), (0, 1, 2), (1, 1, 1)).geometry()


def register_draw(image: np.ndarray, voxel_mm: float, axis: int, positions: Sequence[int], thickness: int,
                  template: Volume) -> AtlasDraw:
    """The atlas guess for these input slices of a cube, as `reconstruct --prior atlas` computes it for a user."""
    from ..atlas import atlas_in_cube  # SimpleITK: only where draws are built, never in a packed GPU run
    from ..reconstruct import InputSlices
    from .samples import slab_mean

    side = image.shape[0]
    grid = cube_grid(side, voxel_mm)
    slices = np.stack([slab_mean(image, axis, p, thickness) for p in positions]).astype(np.float32)
    inputs = InputSlices(grid, axis, tuple(int(p) for p in positions), slices, np.dtype(np.float32))
    guess = atlas_in_cube(inputs, geometry.cube_frame_for_grid(grid, side), template, warnings=[])
    return AtlasDraw(axis, tuple(int(p) for p in positions), int(thickness), guess.astype(np.float16))


def save_draws(path: Path, draws: Sequence[AtlasDraw]) -> None:
    """All draws of one cube in one file, written atomically (a killed build leaves no half file to reuse)."""
    width = max(len(d.positions) for d in draws)
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, axis=np.array([d.axis for d in draws]), thickness=np.array([d.thickness for d in draws]),
                     positions=np.array([list(d.positions) + [-1] * (width - len(d.positions)) for d in draws]),
                     guess=np.stack([d.guess for d in draws]))


def load_draws(path: Path) -> tuple[AtlasDraw, ...]:
    with np.load(path, allow_pickle=False) as data:
        return tuple(AtlasDraw(int(axis), tuple(int(p) for p in positions if p >= 0), int(thickness), guess)
                     for axis, positions, thickness, guess in zip(data["axis"], data["positions"], data["thickness"],
                                                                   data["guess"]))


def draws_path(cube_path: Path, count: int, options: object) -> Path:
    """Beside the cube; the name holds what the draws depend on (recipe version, count, the sample options that
    choose their inputs), so a cache made for other settings is never reused."""
    key = hashlib.sha256(f"{ATLAS_DRAWS_VERSION} {count} {options!r}".encode()).hexdigest()[:12]
    return cube_path.with_name(f"{cube_path.stem}.atlas-{key}.npz")


def cube_draws(image: np.ndarray, voxel_mm: float, choices: Sequence[tuple[int, Sequence[int], int]], template: Volume,
               cache: Optional[Path] = None) -> tuple[AtlasDraw, ...]:
    """The draws for ``choices`` (axis, positions, thickness) of one cube, read from ``cache`` when it holds them."""
    if cache is not None and cache.is_file():
        return load_draws(cache)
    draws = tuple(register_draw(image, voxel_mm, axis, positions, thickness, template)
                  for axis, positions, thickness in choices)
    if cache is not None:
        save_draws(cache, draws)
    return draws
