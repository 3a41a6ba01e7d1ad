"""Brain masks and tissue classes for individual scans that ship neither.

The mask is the ICBM 2009c template's brain mask carried onto the subject: the template head (skull on, the
contrast closest to the subject's) is registered to the subject with an affine transform (SimpleITK, Mattes mutual
information, a similarity stage then a full affine stage, each coarse to fine), and the template mask is resampled
through it. An affine mask follows the subject's head size, shape and pose but not its individual gyri: it is a
brain-and-CSF envelope, a few millimetres loose or tight at the cortex, which is what skull stripping for training
and tumour placement need. Registration runs single-threaded with a fixed sampling seed, so the same inputs give
the same mask on every machine with the same SimpleITK.

The tissue classes are a k-means of the intensities inside the mask (three classes, ordered by mean intensity):
a label map that follows the individual's own anatomy, for label-driven synthesis of random contrasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import Volume, itk_single_threaded, to_sitk

LEVELS_MM = (8.0, 4.0, 2.0)  # coarse-to-fine working resolutions of the similarity and the affine stage
HISTOGRAM_BINS = 32
SAMPLING_SHARE = 0.2
ITERATIONS = 200
TISSUE_CLASSES = 3


@dataclass(frozen=True)
class Registration:
    transform: sitk.Transform  # maps subject (fixed) points to template (moving) points
    metric: float  # Mattes mutual information at the end (more negative is better)


def _shrink_factors(image: sitk.Image, levels_mm: tuple[float, ...]) -> list[int]:
    finest = float(min(image.GetSpacing()))
    return [max(1, int(round(level / finest))) for level in levels_mm]


def _stage(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, levels_mm: tuple[float, ...],
           seed: int) -> tuple[sitk.Transform, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_SHARE, seed + 1)  # SimpleITK reads seed 0 as "use the wall clock"
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=ITERATIONS,
                                                    relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(_shrink_factors(fixed, levels_mm))
    method.SetSmoothingSigmasPerLevel([level / 2.0 for level in levels_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    method.SetNumberOfThreads(1)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as error:
        raise InputError(f"template registration failed ({str(error).strip().splitlines()[-1][:160]})") from None
    if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
        result = result.GetNthTransform(0)
    return result, float(method.GetMetricValue())


def register_template(subject: Volume, template: Volume, seed: int = 0) -> Registration:
    """Affine transform from subject space to template space (similarity stage, then affine; coarse to fine)."""
    if seed < 0:
        raise InputError(f"template registration: seed must be 0 or more, got {seed}")
    fixed = sitk.Cast(to_sitk(subject), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(template), sitk.sitkFloat32)
    with itk_single_threaded():
        start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
        similarity, _ = _stage(fixed, moving, start, LEVELS_MM[:2], seed)
        similarity = sitk.Similarity3DTransform(similarity)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(similarity.GetCenter())
        affine.SetMatrix(similarity.GetMatrix())
        affine.SetTranslation(similarity.GetTranslation())
        result, metric = _stage(fixed, moving, affine, LEVELS_MM[1:], seed)
    return Registration(result, metric)


def template_mask_on_subject(subject: Volume, template: Volume, template_mask: Volume, seed: int = 0) -> Volume:
    """The template's brain mask (uint8 0/1) on the subject's grid, through an affine template registration."""
    if not template.geometry.same_as(template_mask.geometry, atol=1e-3):
        raise InputError("template mask: the template image and its brain mask are not on one grid")
    registration = register_template(subject, template, seed)
    moving = to_sitk(template_mask.with_array((template_mask.array > 0.5).astype(np.float32)))
    reference = to_sitk(subject.with_array(np.zeros(subject.geometry.shape, np.float32)))  # only its grid is used
    with itk_single_threaded():
        # linear interpolation of the 0/1 mask then a 0.5 threshold: a smoother edge than nearest neighbour
        resampled = sitk.Resample(moving, reference, registration.transform, sitk.sitkLinear, 0.0)
    mask = sitk.GetArrayFromImage(resampled).T >= 0.5
    if not mask.any():
        raise InputError("template mask: the registered template mask misses the subject's field of view")
    return subject.with_array(mask.astype(np.uint8))


def whole_field_mask(subject: Volume) -> Volume:
    """Every voxel: for a crop that lies wholly inside the brain (no skull, no background to remove)."""
    return subject.with_array(np.ones(subject.geometry.shape, dtype=np.uint8))


def mask_volume_ml(mask: Volume) -> float:
    return float(np.count_nonzero(mask.array) * np.prod(mask.geometry.spacing) / 1000.0)


def tissue_classes(image: Volume, mask: Volume, classes: int = TISSUE_CLASSES, iterations: int = 50) -> Volume:
    """Labels 1..classes inside the mask (k-means of intensity, ordered darkest first), 0 outside (uint8).

    Deterministic: the centres start at evenly spaced intensity quantiles and move by Lloyd's iterations.
    """
    inside = mask.array > 0
    values = image.array[inside].astype(np.float64)
    if values.size < classes * 10:
        raise InputError(f"tissue classes: the brain mask holds {values.size} voxels; too few for {classes} classes")
    centres = np.quantile(values, (np.arange(classes) + 0.5) / classes)
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(classes)])
        if np.allclose(updated, centres, rtol=0, atol=1e-6 * max(1.0, float(np.abs(values).max()))):
            break
        centres = updated
    order = np.argsort(centres)
    nearest = np.argmin(np.abs(values[:, None] - centres[order][None, :]), axis=1)
    labels = np.zeros(image.geometry.shape, dtype=np.uint8)
    labels[inside] = (nearest + 1).astype(np.uint8)
    return image.with_array(labels)
