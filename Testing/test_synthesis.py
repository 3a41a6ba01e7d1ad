"""Label-driven synthesis, shared spatial augmentation and extent-preserving downsampling, on tiny volumes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from xdiffusion.data.synthesis import augment_subject, downsample, synthesise_from_labels
from xdiffusion.errors import InputError
from xdiffusion.io import Geometry, Volume

SIDE = 24


def _labels() -> Volume:
    grid = np.indices((SIDE, SIDE, SIDE))
    radius = np.sqrt(np.sum((grid - SIDE / 2) ** 2, axis=0))
    labels = np.zeros((SIDE, SIDE, SIDE), dtype=np.int32)
    labels[radius < 10] = 41  # sparse, non-consecutive label values like FreeSurfer's
    labels[radius < 6] = 2
    labels[(radius < 6) & (grid[0] > SIDE // 2)] = 1017
    return Volume(labels, Geometry(labels.shape, (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)))


def test_synthesis_is_deterministic_float32_and_leaves_torch_state() -> None:
    labels = _labels()
    state = torch.random.get_rng_state()
    first = synthesise_from_labels(labels, np.random.default_rng(7))
    assert torch.equal(state, torch.random.get_rng_state())
    second = synthesise_from_labels(labels, np.random.default_rng(7))
    other = synthesise_from_labels(labels, np.random.default_rng(8))
    assert first.dtype == np.float32 and first.shape == labels.array.shape
    assert np.array_equal(first, second) and not np.allclose(first, other)


def test_synthesis_gives_each_label_its_own_contrast() -> None:
    labels = _labels()
    contrasts = []
    for seed in range(4):
        image = synthesise_from_labels(labels, np.random.default_rng(seed))
        core = (np.indices(labels.array.shape) - SIDE / 2) ** 2
        deep = np.sum(core, axis=0) < 4**2  # away from blurred label borders
        means = [float(np.median(image[(labels.array == value) & deep])) for value in (2, 1017)]
        background = float(np.abs(image[labels.array == 0]).mean())
        assert background < 0.1 < max(means)  # background stays near 0 (noise only)
        contrasts.append(means[0] - means[1])
    assert len({np.sign(c) for c in contrasts}) == 2 or np.ptp(contrasts) > 0.1  # the contrast itself is random


def test_synthesis_rejects_bad_labels() -> None:
    labels = _labels()
    with pytest.raises(InputError, match="non-negative integers"):
        synthesise_from_labels(labels.with_array(labels.array - 5), np.random.default_rng(0))
    with pytest.raises(InputError, match="only background"):
        synthesise_from_labels(labels.with_array(np.zeros_like(labels.array)), np.random.default_rng(0))


def test_augment_warps_image_and_labels_identically() -> None:
    labels = _labels().array
    image = (labels > 0).astype(np.float32) * 100.0
    seg = (labels == 2).astype(np.uint8)
    images, maps = augment_subject({"t1": image}, {"labels": labels, "seg": seg}, np.random.default_rng(3))
    again = augment_subject({"t1": image}, {"labels": labels, "seg": seg}, np.random.default_rng(3))
    assert np.array_equal(images["t1"], again[0]["t1"]) and np.array_equal(maps["labels"], again[1]["labels"])
    assert images["t1"].dtype == np.float32 and maps["labels"].dtype == np.int32 and maps["seg"].dtype == np.uint8
    assert set(np.unique(maps["labels"]).tolist()) <= {0, 2, 41, 1017}  # nearest: no blended label values
    assert not np.array_equal(maps["labels"], labels)  # it did move
    inside = images["t1"] > 50.0
    agreement = np.mean(inside == (maps["labels"] > 0))
    assert agreement > 0.97  # one transform for both
    assert np.all(maps["labels"][maps["seg"] == 1] == 2)


def test_augment_rejects_mismatched_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="share one shape"):
        augment_subject({"t1": np.zeros((8, 8, 8))}, {"seg": np.zeros((8, 8, 9), np.uint8)}, rng)
    with pytest.raises(InputError, match="at least one"):
        augment_subject({}, {}, rng)
    with pytest.raises(InputError, match="both an image and a label map"):
        augment_subject({"x": np.zeros((8, 8, 8))}, {"x": np.zeros((8, 8, 8), np.uint8)}, rng)


def test_downsample_keeps_extent_and_labels() -> None:
    direction = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=float)
    geometry = Geometry((40, 20, 30), (0.5, 1.0, 1.0), (10.0, -5.0, 3.0), direction)
    labels = Volume(np.repeat(np.arange(40)[:, None, None] // 10, 600, axis=1).reshape(40, 20, 30).astype(np.int16),
                    geometry)
    small = downsample(labels, 20, labels=True)
    assert small.array.shape == (20, 10, 15) and small.array.dtype == np.int16
    assert set(np.unique(small.array).tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(small.geometry.extent_mm, geometry.extent_mm)
    np.testing.assert_allclose(small.geometry.center, geometry.center, atol=1e-9)
    image = downsample(labels.with_array(labels.array.astype(np.float32)), 20)
    assert image.array.dtype == np.float32 and 0 <= image.array.min() and image.array.max() <= 3
    assert downsample(labels, 64) is labels
    with pytest.raises(InputError, match="at least 2"):
        downsample(labels, 1)


def test_calls_are_fast_at_model_size() -> None:
    grid = np.indices((64, 64, 64))
    labels = (np.sqrt(np.sum((grid - 32) ** 2, axis=0)) // 4).astype(np.int32)  # 14 concentric labels
    volume = Volume(labels, Geometry(labels.shape, (1.5, 1.5, 1.5), (0, 0, 0), np.eye(3)))
    start = time.perf_counter()
    image = synthesise_from_labels(volume, np.random.default_rng(0))
    augment_subject({"image": image}, {"labels": labels}, np.random.default_rng(0), spacing=(1.5, 1.5, 1.5))
    assert time.perf_counter() - start < 4.0
