"""The `atlas` baseline: guess the brain from one slice the classic way, by warping a population template onto it.

1. The template (`atlas_templates.py`: the shipped ICBM 2009c T1 ``brain`` or ``head``, a TRAINING source, chosen by
   name or by ``auto`` from the input slices; ``--atlas PATH`` for your own) is put on the input grid by physical
   space: a rigid translation, grid centre onto grid centre (SimpleITK's geometry initialiser, from metadata only),
   then resampled linearly onto the input grid.
2. The template's through-plane position is not known from one slice: a few template slices around the input's
   position are tried (``OFFSETS_MM``), each aligned to the input slice(s) with a quick 2D affine registration (Mattes
   mutual information, so any contrast works); the offset with the best summed metric is kept, for all inputs.
3. Each input slice gets a 2D affine + B-spline (deformable) registration of its matching template slice.
4. Every output slice takes the template slice at the same offset and warps it with the transform of its nearest
   (informative) input slice. The model's atlas prior (`atlas_in_cube`) takes the same steps 1-3 on the template
   slices near the inputs only, then warps the template straight onto the cube's planes: never onto the whole grid.
5. Intensities: a lookup table from template to input intensities, fitted on the registered input slice(s) (median
   input value per template-intensity quantile bin, linearly interpolated). It is not forced to be monotonic, so a
   T1 template can stand in for a T2 or FLAIR input.

Input slices with no tissue (`reconstruct.is_informative`: empty, constant, a speck) are left out of steps 2, 3 and 5.
Every fallback is reported as one line in ``warnings`` (the CLI prints it as `warning: ...`): a slice left out, the
centre-of-mass initialiser replaced by grid centring, an affine that failed (centring alone), a B-spline that failed
(affine alone), offset 0 when no template position has tissue at the input slices.

It sees exactly what the model sees (``InputSlices``: the chosen slices and the grid's metadata), never the volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .atlas_templates import choose_template, load_template
from .errors import InputError
from .geometry import CubeFrame
from .io import Geometry, Volume, _itk_reason, itk_single_threaded, to_sitk
from .reconstruct import MIN_TISSUE_PIXELS, background_value, is_informative

OFFSETS_MM = tuple(np.arange(-20.0, 20.1, 4.0))  # through-plane positions of the template tried against the input
BSPLINE_MESH = 6  # control-point mesh of the deformable stage, per in-plane axis
HISTOGRAM_BINS = 32
INTENSITY_BINS = 24


def template_on_grid(template: Volume, grid: Geometry, centred_on: Optional[Geometry] = None) -> np.ndarray:
    """The template resampled onto ``grid``, its centre on the centre of ``centred_on`` (default ``grid``; both in
    LPS, metadata only): the rigid translation of SimpleITK's geometry initialiser, without allocating ``centred_on``."""
    moving, centre_grid = to_sitk(template), centred_on if centred_on is not None else grid
    centre = _grid_image(centre_grid, [1, 1, 1]).TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in centre_grid.shape])
    moving_centre = moving.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in moving.GetSize()])
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetTranslation([m - c for m, c in zip(moving_centre, centre)])
    resampled = sitk.Resample(moving, _grid_image(grid), transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled).T


def _grid_image(grid: Geometry, size: Optional[Sequence[int]] = None) -> sitk.Image:
    """An empty image with ``grid``'s geometry (``size`` voxels: a stand-in that only carries the geometry)."""
    image = sitk.Image([int(n) for n in (grid.shape if size is None else size)], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in grid.spacing])
    image.SetOrigin([float(o) for o in grid.origin])
    image.SetDirection([float(d) for d in grid.direction.ravel()])
    return image


def _planes(grid: Geometry, axis: int, first: float, step: float, count: int) -> Geometry:
    """``count`` planes of ``grid`` across ``axis``, at the continuous indices first, first + step, ...: their own grid."""
    shape, corner, spacing, direction = list(grid.shape), np.zeros(3), grid.spacing.copy(), grid.direction.copy()
    shape[axis], corner[axis] = count, first
    spacing[axis] *= abs(step)
    direction[:, axis] *= np.sign(step)
    return Geometry(tuple(shape), spacing, grid.index_to_physical(corner), direction)


def _image_2d(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32).T)
    image.SetSpacing([float(s) for s in spacing])
    return image


def _registration(iterations: int, shrink: Sequence[int], seed: int = 2024) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.5, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([max(0, s - 1) for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _reason(error: RuntimeError) -> str:
    """SimpleITK's complaint, its first sentence only (e.g. "All samples map outside moving image buffer")."""
    return _itk_reason(error).split(". ")[0].rstrip(".")


def _tissue_mass(image: np.ndarray) -> np.ndarray:
    """A slice as mass for the moments: each pixel's distance from the slice's background value, so negative or
    offset intensities (z-scored data, a constant air level) neither cancel nor shift the centre of mass."""
    image = np.asarray(image, dtype=np.float64)
    return np.abs(image - background_value(image))


def _centring(fixed: np.ndarray, moving: np.ndarray, spacing_2d: Sequence[float]) -> tuple[sitk.Transform, Optional[str]]:
    """The affine's start: centre of tissue mass onto centre of tissue mass; where the moments cannot be computed
    (no mass: a slice with nothing in it), grid centre onto grid centre. Returns it and what failed, if anything."""
    try:
        return sitk.CenteredTransformInitializer(_image_2d(_tissue_mass(fixed), spacing_2d), _image_2d(_tissue_mass(moving), spacing_2d),
                                                 sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS), None
    except RuntimeError as error:
        geometric = sitk.CenteredTransformInitializer(_image_2d(fixed, spacing_2d), _image_2d(moving, spacing_2d), sitk.AffineTransform(2),
                                                      sitk.CenteredTransformInitializerFilter.GEOMETRY)
        return geometric, f"the centre-of-mass initialiser failed ({_reason(error)}); grid centres used instead"


def _affine(fixed: np.ndarray, moving: np.ndarray, spacing_2d: Sequence[float], quick: bool) -> tuple[sitk.Transform, float, list[str]]:
    """2D affine (initialised on the centres of tissue mass) maximising mutual information; returns it, the metric
    and the fallbacks taken (one phrase each)."""
    initial, problem = _centring(fixed, moving, spacing_2d)
    problems = [problem] if problem else []
    method = _registration(30 if quick else 80, (4, 2) if quick else (4, 2, 1))
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=30 if quick else 80,
                                                    gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        transform = method.Execute(_image_2d(fixed, spacing_2d), _image_2d(moving, spacing_2d))
        return transform, float(method.GetMetricValue()), problems
    except RuntimeError as error:  # e.g. too few overlapping samples: keep the centring alone
        return initial, 0.0, problems + [f"the affine registration failed ({_reason(error)}); the template is only centred there"]


def _deformable(fixed: sitk.Image, moving: sitk.Image, affine: sitk.Transform) -> tuple[sitk.Transform, Optional[str]]:
    """A B-spline refinement on top of the affine (the affine is fixed, only the B-spline moves); returns it and
    what failed, if anything (then the affine alone)."""
    bspline = sitk.BSplineTransformInitializer(fixed, [BSPLINE_MESH, BSPLINE_MESH], order=3)
    method = _registration(40, (2, 1))
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=40, maximumNumberOfCorrections=5)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as error:
        return affine, f"the deformable (B-spline) registration failed ({_reason(error)}); affine only"
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(affine)
    composite.AddTransform(bspline)
    return composite, None


def _warp(image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)).T


def intensity_lookup(template: np.ndarray, target: np.ndarray, bins: int = INTENSITY_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(template intensities, target intensities) of a piecewise-linear map fitted pixel by pixel on registered
    pairs: the median target value in each template-intensity quantile bin; background (template 0) maps to the
    median target value there."""
    template, target = np.ravel(template), np.ravel(target)
    inside = template > 0
    knots_x, knots_y = [0.0], [float(np.median(target[~inside])) if (~inside).any() else 0.0]
    if inside.sum() >= bins:
        edges = np.unique(np.quantile(template[inside], np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, template[inside], side="right") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            chosen = which == b
            if chosen.sum() >= 5:
                knots_x.append(float(np.median(template[inside][chosen])))
                knots_y.append(float(np.median(target[inside][chosen])))
    order = np.argsort(knots_x, kind="stable")
    x, y = np.asarray(knots_x)[order], np.asarray(knots_y)[order]
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]


def _offsets(normal_mm: float) -> list[int]:
    """The through-plane template shifts tried (``OFFSETS_MM``), in slices of ``normal_mm``."""
    return sorted({int(round(mm / normal_mm)) for mm in OFFSETS_MM})


def _best_offset(plane: Callable[[int], np.ndarray], length: int, inputs, useful: Sequence[bool], spacing_2d: Sequence[float],
                 normal_mm: float) -> Optional[int]:
    """Through-plane template shift (in slices) whose quick affine fits the informative input slices best (summed
    metric); None when no candidate has template tissue at every informative input slice."""
    scores = {}
    for offset in _offsets(normal_mm):
        total = 0.0
        for image, index, informative in zip(inputs.images, inputs.indices, useful):
            if not informative:
                continue
            source = index + offset
            if not 0 <= source < length or not is_informative(plane(source)):
                total = np.inf
                break
            total += _affine(image, plane(source), spacing_2d, quick=True)[1]
        scores[offset] = total
    best = min(scores, key=lambda o: (scores[o], abs(o)))
    return best if np.isfinite(scores[best]) else None


def atlas_reconstruct(inputs, template: Optional[Volume] = None, register: bool = True, deformable: bool = True,
                      warnings: Optional[list[str]] = None) -> np.ndarray:
    """The atlas guess on ``inputs.geometry`` (float32, the input's units); ``template`` defaults to the default choice
    (`choose_template`: the brain template). ``register=False`` keeps the centred template (the baseline's own ablation: what
    registration buys).

    Uninformative input slices (`reconstruct.is_informative`: empty, constant, a speck) are left out of the
    registration and of the intensity map; the output slices nearest to them take the transform of the nearest
    informative one. Every fallback (a slice left out, an initialiser or a registration stage that failed, offset 0
    when no template position fits) is appended to ``warnings`` as one line, when a list is given.
    """
    with itk_single_threaded():
        template = template if template is not None else load_template(choose_template(None, inputs).path)
        grid, axis = inputs.geometry, inputs.axis
        stack = np.moveaxis(template_on_grid(template, grid), axis, 0)  # (n, a, b)
        length = stack.shape[0]
        fit = _fit(inputs, stack.__getitem__, length, register, deformable, warnings if warnings is not None else [])
        spacing_2d = [float(grid.spacing[a]) for a in range(3) if a != axis]
        output = np.full(stack.shape, fit.background, dtype=np.float32)
        for position in range(length):
            source = position + fit.offset
            if 0 <= source < length:
                output[position] = fit.lookup(_warp(_image_2d(stack[source], spacing_2d), fit.nearest(position)))
        return np.moveaxis(output, 0, axis)


def atlas_in_cube(inputs, frame: CubeFrame, template: Optional[Volume] = None, warnings: Optional[list[str]] = None) -> np.ndarray:
    """The atlas guess in the model's cube (S³, float32, the input's units): the model's atlas prior. Registered as
    `atlas_reconstruct` registers it (the input slices at their own resolution, against the template slices near
    them), then the template is warped straight onto the cube's planes across the input axis, never onto the whole
    input grid; outside the input grid the cube holds 0 (as a resampled volume would), and the input slices lie on
    their nearest cube planes."""
    with itk_single_threaded():
        template = template if template is not None else load_template(choose_template(None, inputs).path)
        grid, axis, side = inputs.geometry, inputs.axis, frame.side
        length, offsets = grid.shape[axis], _offsets(float(grid.spacing[axis]))
        low, high = max(0, min(inputs.indices) + min(offsets)), min(length - 1, max(inputs.indices) + max(offsets))
        near = np.moveaxis(template_on_grid(template, _planes(grid, axis, low, 1.0, high - low + 1), grid), axis, 0)
        fit = _fit(inputs, lambda index: near[index - low], length, True, True, warnings if warnings is not None else [])
        cube_axis = frame.grid_axis.index(axis)
        first = float(grid.physical_to_index(frame.origin)[axis])  # cube plane j lies at grid index first + j * step
        step = frame.grid_sign[cube_axis] * frame.voxel_mm / float(grid.spacing[axis])
        planes = np.moveaxis(template_on_grid(template, _planes(grid, axis, first + fit.offset, step, side), grid), axis, 0)
        spacing_2d = [float(grid.spacing[a]) for a in range(3) if a != axis]
        cube = np.zeros((side,) * 3, dtype=np.float32)
        across = np.moveaxis(cube, cube_axis, 0)
        for j, position in enumerate(first + step * np.arange(side)):
            if -0.5 <= position <= length - 0.5:
                source = int(round(position)) + fit.offset
                image = (fit.lookup(_warp(_image_2d(planes[j], spacing_2d), fit.nearest(position))) if 0 <= source < length
                         else np.full(planes[j].shape, fit.background, dtype=np.float32))
                across[j] = geometry.slice_to_cube(image, grid, axis, position, frame).image
        for image, index in zip(inputs.images, inputs.indices):
            placed = geometry.slice_to_cube(image, grid, axis, index, frame)
            across[int(round(float(frame.to_coordinate(placed.position))))] = placed.image
        return cube


@dataclass(frozen=True)
class _Fit:
    """What the registration found: the template's through-plane offset (slices), each registered input slice's 2D
    transform (by its index) and the template-to-input intensity lookup."""

    offset: int
    transforms: dict[int, sitk.Transform]
    knots: tuple[np.ndarray, np.ndarray]

    @property
    def background(self) -> float:
        return float(np.interp(0.0, *self.knots))

    def lookup(self, template: np.ndarray) -> np.ndarray:
        return np.interp(template, *self.knots)

    def nearest(self, position: float) -> sitk.Transform:
        """The transform of the registered input slice nearest to ``position`` (the lower one on a tie)."""
        registered = np.asarray(sorted(self.transforms))
        return self.transforms[int(registered[np.abs(registered - position).argmin()])]


def _fit(inputs, plane: Callable[[int], np.ndarray], length: int, register: bool, deformable: bool, warnings: list[str]) -> _Fit:
    """Register the template (``plane(i)``: its slice at input-grid index i of ``length``) to the input slices."""
    grid, axis = inputs.geometry, inputs.axis
    spacing_2d = [float(grid.spacing[a]) for a in range(3) if a != axis]
    useful = [is_informative(image) for image in inputs.images]
    if not any(useful):
        raise InputError("the input slices are empty or constant (nothing for the atlas to register to)")
    if register:
        warnings.extend(f"input slice {index} has no tissue to register (fewer than {MIN_TISSUE_PIXELS} pixels apart from its "
                        f"background): left out of the atlas registration" for index, informative in zip(inputs.indices, useful) if not informative)
    offset = _best_offset(plane, length, inputs, useful, spacing_2d, float(grid.spacing[axis])) if register else 0
    if offset is None:
        warnings.append("atlas registration: the template has no tissue at the input slices' position for any through-plane "
                        "offset tried; offset 0 used")
        offset = 0
    transforms, pairs = {}, []
    for image, index, informative in zip(inputs.images, inputs.indices, useful):
        if not informative:
            continue
        source = plane(int(np.clip(index + offset, 0, length - 1)))
        transform = sitk.Transform(2, sitk.sitkIdentity)
        if register and not is_informative(source):
            warnings.append(f"atlas registration of input slice {index}: the template has no tissue there; left unregistered")
        elif register:
            transform, _, problems = _affine(image, source, spacing_2d, quick=False)
            if deformable:
                transform, problem = _deformable(_image_2d(image, spacing_2d), _image_2d(source, spacing_2d), transform)
                problems += [problem] if problem else []
            warnings.extend(f"atlas registration of input slice {index}: {problem}" for problem in problems)
        transforms[index] = transform
        pairs.append((_warp(_image_2d(source, spacing_2d), transform), np.asarray(image, dtype=np.float32)))
    knots = intensity_lookup(np.concatenate([p[0].ravel() for p in pairs]), np.concatenate([p[1].ravel() for p in pairs]))
    return _Fit(offset, transforms, knots)
