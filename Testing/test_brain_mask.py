"""Brain masks and tissue classes for individual scans, on small synthetic heads built on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from xdiffusion.data.brain_mask import (mask_volume_ml, template_mask_on_subject, tissue_classes,
                                        whole_field_mask)
from xdiffusion.errors import InputError
from xdiffusion.io import Geometry, Volume, to_sitk

from head_phantom import SPACING, synthetic_head


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_template_mask_follows_the_subjects_head() -> None:
    template, template_mask = synthetic_head()
    subject, truth = synthetic_head(shape=(44, 50, 48), scale=(0.92, 1.05, 0.95), angle_degrees=8.0,
                                    shift_mm=(6.0, -4.0, 3.0))
    untouched = template_mask.array.copy()
    mask = template_mask_on_subject(subject, template, template_mask)
    assert mask.geometry.same_as(subject.geometry) and mask.array.dtype == np.uint8
    assert set(np.unique(mask.array).tolist()) == {0, 1}
    assert _dice(mask.array > 0, truth.array > 0) > 0.9
    # unregistered, the template mask would fit much worse (the head is moved, turned and reshaped)
    resampled = sitk.GetArrayFromImage(sitk.Resample(to_sitk(template_mask), to_sitk(truth), sitk.Transform(),
                                                     sitk.sitkNearestNeighbor)).T
    assert _dice(mask.array > 0, truth.array > 0) > _dice(resampled > 0, truth.array > 0) + 0.05
    assert abs(mask_volume_ml(mask) - mask_volume_ml(truth)) / mask_volume_ml(truth) < 0.1
    np.testing.assert_array_equal(template_mask.array, untouched)
    # deterministic: one thread, fixed sampling seed, whatever the caller's thread setting
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        again = template_mask_on_subject(subject, template, template_mask)
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2  # restored
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    np.testing.assert_array_equal(again.array, mask.array)


def test_template_mask_refuses_mismatched_template() -> None:
    template, template_mask = synthetic_head()
    other_grid = Volume(template_mask.array[:-1], Geometry(template_mask.array[:-1].shape, (SPACING,) * 3,
                                                           template.geometry.origin, np.eye(3)), {})
    with pytest.raises(InputError, match="not on one grid"):
        template_mask_on_subject(template, template, other_grid)


def test_tissue_classes_are_ordered_and_inside_the_mask() -> None:
    image, mask = synthetic_head()
    noisy = image.with_array(image.array + np.random.default_rng(0).normal(0, 3, image.geometry.shape).astype(np.float32))
    labels = tissue_classes(noisy, mask)
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array).tolist()) == {0, 1, 2, 3}
    assert not labels.array[mask.array == 0].any()
    means = [noisy.array[labels.array == k].mean() for k in (1, 2, 3)]
    assert means == sorted(means)  # darkest first: CSF, grey matter, white matter for a T1
    np.testing.assert_array_equal(labels.array == 3, (image.array == 120.0) & (mask.array > 0))
    np.testing.assert_array_equal(tissue_classes(noisy, mask).array, labels.array)
    with pytest.raises(InputError, match="too few"):
        tissue_classes(image, mask.with_array(np.zeros_like(mask.array)))


def test_whole_field_mask_and_volume() -> None:
    image, _ = synthetic_head(shape=(10, 12, 8))
    mask = whole_field_mask(image)
    assert mask.array.all() and mask.array.dtype == np.uint8
    assert mask_volume_ml(mask) == pytest.approx(10 * 12 * 8 * SPACING**3 / 1000.0)
