"""Shared fixtures: small synthetic volumes on explicit, varied grids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xdiffusion.io import Geometry, Volume


def smooth_head(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A smooth, head-like blob with internal structure, so interpolation errors are small but not zero."""
    rng = np.random.default_rng(seed)
    centred = [(np.arange(n) - (n - 1) / 2) / (n / 2) for n in shape]
    x, y, z = np.meshgrid(*centred, indexing="ij")
    head = (x**2 / 0.7**2 + y**2 / 0.8**2 + z**2 / 0.75**2) < 1.0
    texture = ndimage.gaussian_filter(rng.random(shape), 2.0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    return (head * (200.0 + 400.0 * texture)).astype(np.float32)


def oriented_volume(array: np.ndarray, direction: np.ndarray, spacing=(1.0, 1.2, 2.0), origin=(-40.0, 12.5, 7.0)) -> Volume:
    return Volume(array, Geometry(array.shape, spacing, origin, np.asarray(direction, dtype=np.float64)))


def flip_axis(volume: Volume, axis: int) -> Volume:
    """The same physical image stored with ``axis`` reversed (e.g. an LPS copy turned LPI)."""
    geometry = volume.geometry
    last = np.zeros(3)
    last[axis] = geometry.shape[axis] - 1
    direction = geometry.direction.copy()
    direction[:, axis] *= -1
    flipped = Geometry(geometry.shape, geometry.spacing, geometry.index_to_physical(last), direction)
    return Volume(np.ascontiguousarray(np.flip(volume.array, axis)), flipped)


@pytest.fixture(autouse=True)
def float32_on_every_cpu(monkeypatch):
    """`--precision auto` takes bfloat16 on a CPU that runs it natively: pinned to float32 here, so that the suite's
    numbers are the same on every CI machine (test_precision covers bfloat16)."""
    monkeypatch.setattr("xdiffusion.compute.cpu_runs_bfloat16", lambda *args: False)


@pytest.fixture
def head_volume() -> Volume:
    return oriented_volume(smooth_head((40, 44, 36)), np.eye(3))
