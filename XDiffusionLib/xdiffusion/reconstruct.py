"""One slice (or a few) in, a volume out, on the input's exact grid: the model and the baselines behind one call.

Methods receive `InputSlices` (the chosen slices and the grid's metadata), never the whole volume, so no method can
peek at the answer. Outputs carry the input's geometry exactly, and the input slices are copied in bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from . import geometry
from .errors import InputError, ModelError
from .io import GENERATED_DESCRIPTION, Geometry, Volume

if TYPE_CHECKING:  # torch and diffusers load only when the model runs: the baselines and bad inputs start fast
    from .model_space import IntensityScale
    from .pipeline import ProgressCallback, XDiffusionPipeline

METHODS = ("xdiffusion", "extrude", "interpolate", "atlas")
LABELS_TAPERED = "the input slices' labels, tapered (label_baselines.taper_from_slices)"
LABELS_FROM_MODEL = "the model"
PRIORS = ("extrude", "atlas", "none")  # where SDEdit sampling (strength < 1) starts from; none: pure noise, strength 1 only
MIN_TISSUE_PIXELS = 16  # an informative slice has at least this many pixels apart from its background (see is_informative)
# in-plane axes (as LPS directions) given to a 2D file that carries no orientation of its own, per plane
SINGLE_SLICE_BASES = {
    "axial": np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]).T,
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T,
    "sagittal": np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]).T,
}


@dataclass(frozen=True)
class InputSlices:
    """What a method may see: the given slices along one grid axis, and the output grid's metadata."""

    geometry: Geometry
    axis: int
    indices: tuple[int, ...]
    images: np.ndarray  # (K, a, b), the slices in index order, the input's own dtype and units
    dtype: np.dtype
    slice_position: Optional[float] = None  # a 2D input: its place in the output depth (0-1); None for a 3D input


@dataclass
class Reconstruction:
    """The generated volumes and what made them: the method, the sampling actually used (after the model card's
    defaults; None for a baseline), the model's card (None for a baseline), and one line per fallback taken on the
    way (an input slice left out of the registration, a registration stage that failed), for the user to see."""

    image: Volume
    segmentation: Optional[Volume] = None
    uncertainty: Optional[Volume] = None  # std across views (one sample) or across samples (`uncertainty_across`)
    unet_evaluations: int = 0
    method: str = "xdiffusion"
    sampling: Optional[dict[str, Any]] = None
    model_card: Optional[dict[str, Any]] = None
    template: Optional[str] = None  # the atlas template file, when the atlas (method or prior) was used
    warnings: list[str] = field(default_factory=list)
    uncertainty_across: Optional[str] = None  # "views" or "samples"; None for a baseline
    labels_from: Optional[str] = None  # what drew `segmentation`: LABELS_TAPERED or LABELS_FROM_MODEL


def background_value(image: np.ndarray) -> float:
    """A slice's background: its most common value (0 outside a skull-stripped brain; the air of a scan whose
    background was set to a constant). A slice with no repeated value has no background: its minimum stands in."""
    values, counts = np.unique(np.asarray(image).ravel(), return_counts=True)
    return float(values[counts.argmax()])


def is_informative(image: np.ndarray) -> bool:
    """Whether a slice holds tissue a registration can use: at least ``MIN_TISSUE_PIXELS`` pixels differ from its
    background value (`background_value`); a slice of fewer than 64 pixels needs a quarter of them instead.

    Uninformative: an empty or constant slice (zero variance), a speck (a few bright pixels), one outlier in a
    constant slice. They are still copied into the output bit-exact and still condition the model (an empty slice
    above the head is true information); only the atlas registration leaves them out. An input whose slices are all
    uninformative is refused."""
    image = np.asarray(image)
    tissue = int(np.count_nonzero(image != background_value(image)))
    return tissue >= max(1, min(MIN_TISSUE_PIXELS, image.size // 4))


def select_slices(volume: Volume, plane: str = "axial", indices: Optional[Sequence[int]] = None) -> InputSlices:
    """Take the slices the user chose from a 3D volume (default: the middle one of the plane's axis)."""
    if volume.is_slice:
        raise InputError("this is a single 2D slice; use single_slice_input() for it")
    axis = geometry.plane_axis(volume.geometry, plane)
    chosen = geometry.check_slice_indices(volume.geometry, axis, indices if indices else [geometry.middle_index(volume.geometry.shape[axis])])
    images = geometry.take_slices(volume, axis, chosen)
    _check_finite(images)
    return InputSlices(volume.geometry, axis, tuple(chosen), images, volume.array.dtype)


def single_slice_input(slice_volume: Volume, plane: Optional[str], slice_position: float = 0.5) -> InputSlices:
    """A 2D input becomes the middle (or ``slice_position``) of an isotropic volume spanning its in-plane extent."""
    if not slice_volume.is_slice:
        raise InputError("this input is a 3D volume, not a single slice")
    if not 0.0 <= slice_position <= 1.0:
        raise InputError(f"--slice-position must be within 0..1, got {slice_position}")
    source = slice_volume.geometry
    oriented = slice_volume.metadata.get("source_dimension") != "2"
    if oriented:
        normal = source.direction[:, 2]
        own_plane = max(geometry.PLANES, key=lambda p: abs(geometry.PLANE_NORMALS[p] @ normal))
        if plane is not None and plane != own_plane:
            raise InputError(f"the slice's own orientation makes it {own_plane}, not {plane}")
        direction = source.direction
        origin = source.origin
    else:
        if plane is None:
            raise InputError("a 2D file without orientation needs --plane")
        basis = SINGLE_SLICE_BASES[geometry.check_plane(plane)]
        direction = basis @ source.direction
        origin = basis @ source.origin
    in_plane = source.spacing[:2]
    depth_spacing = float(in_plane.min())
    depth = max(1, int(round(float(np.max(source.extent_mm[:2])) / depth_spacing)))
    index = int(round(slice_position * (depth - 1)))
    grid = Geometry((*source.shape[:2], depth), (*in_plane, depth_spacing), origin - direction[:, 2] * depth_spacing * index, direction)
    images = slice_volume.array[None, :, :, 0]
    _check_finite(images)
    return InputSlices(grid, 2, (index,), images, slice_volume.array.dtype, float(slice_position))


def _check_finite(images: np.ndarray) -> None:
    if not np.all(np.isfinite(images)):
        raise InputError("the input slices contain NaN or infinite values")
    if np.issubdtype(images.dtype, np.floating) and np.abs(images).max() > np.finfo(np.float32).max:
        raise InputError("the input slices hold values beyond float32's range (about 3.4e38); rescale the image first")
    if not any(is_informative(image) for image in images):
        raise InputError(f"the input slices are empty or constant (no image content to reconstruct from: each has fewer "
                         f"than {MIN_TISSUE_PIXELS} pixels apart from its background)")


def extrude(inputs: InputSlices) -> np.ndarray:
    """Every slice along the axis repeats its nearest input slice."""
    positions = np.arange(inputs.geometry.shape[inputs.axis])
    nearest = np.abs(positions[:, None] - np.asarray(inputs.indices)[None, :]).argmin(axis=1)
    return np.moveaxis(inputs.images[nearest].astype(np.float32), 0, inputs.axis)


def interpolate(inputs: InputSlices) -> np.ndarray:
    """Linear interpolation between consecutive input slices; beyond the first and last, their nearest one."""
    if len(inputs.indices) < 2:
        raise InputError("--method interpolate needs at least 2 input slices (--slice-index I J ...)")
    indices = np.asarray(inputs.indices, dtype=np.float64)
    positions = np.clip(np.arange(inputs.geometry.shape[inputs.axis], dtype=np.float64), indices[0], indices[-1])
    upper = np.clip(np.searchsorted(indices, positions, side="right"), 1, len(indices) - 1)
    lower = upper - 1
    weight = ((positions - indices[lower]) / (indices[upper] - indices[lower]))[:, None, None]
    images = inputs.images.astype(np.float32)
    stacked = (1.0 - weight) * images[lower] + weight * images[upper]
    return np.moveaxis(stacked.astype(np.float32), 0, inputs.axis)


def place_in_cube(inputs: InputSlices, side: int) -> tuple[list[geometry.CubeSlice], geometry.CubeFrame, IntensityScale]:
    """The input slices on their cube planes, in model units, with the frame and scale that undo it."""
    from .model_space import IntensityScale

    frame = geometry.cube_frame_for_grid(inputs.geometry, side)
    scale = IntensityScale.from_slices(list(inputs.images))
    placed = [geometry.slice_to_cube(image, inputs.geometry, inputs.axis, index, frame) for image, index in zip(inputs.images, inputs.indices)]
    return [geometry.CubeSlice(scale.normalise(p.image), p.axis, p.position) for p in placed], frame, scale


def labels_in_cube(inputs: InputSlices, labels: Sequence[np.ndarray], frame: geometry.CubeFrame) -> list[np.ndarray]:
    """The input slices' BraTS labels on their cube planes, as `place_in_cube` places the images: each label's mask
    resampled in-plane like the image, a pixel taking the label that covers at least half of it (else 0)."""
    placed = []
    for image, index in zip(labels, inputs.indices):
        cover = np.stack([geometry.slice_to_cube((image == value).astype(np.float32), inputs.geometry, inputs.axis, index,
                                                 frame).image for value in (1, 2, 3)])
        placed.append(np.where(cover.max(axis=0) >= 0.5, cover.argmax(axis=0) + 1, 0).astype(np.uint8))
    return placed


def _check_input_labels(inputs: InputSlices, labels: Sequence[np.ndarray]) -> None:
    """Refuse labels that do not match the input slices."""
    shapes = [np.shape(image) for image in labels]
    if len(labels) != len(inputs.indices) or any(shape != inputs.images.shape[1:] for shape in shapes):
        raise InputError(f"--input-segmentation: {len(labels)} label slice(s) of shape(s) {shapes} do not match the "
                         f"{len(inputs.indices)} input slice(s) of shape {list(inputs.images.shape[1:])}")


def _diffusion(inputs: InputSlices, pipeline: XDiffusionPipeline, modality: str, progress: Optional[ProgressCallback],
               warnings: list[str], prior: str = "extrude", atlas: Optional[str] = None,
               input_labels: Optional[Sequence[np.ndarray]] = None, model_labels: bool = True,
               **sampling) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, int, str]:
    """The model's image, its own tumour labels (None where ``model_labels`` is off or it draws none), uncertainty."""
    if prior not in PRIORS:
        raise InputError(f"unknown prior {prior!r}; use one of {', '.join(PRIORS)}")
    from .pipeline import check_strength  # loaded already: the pipeline is an XDiffusionPipeline

    check_strength(sampling.get("strength", 1.0))  # before the atlas registration, not after it
    if prior == "none" and sampling.get("strength", 1.0) < 1.0:
        raise InputError(f"prior none samples from pure noise (strength 1); strength {sampling['strength']:g} needs a prior "
                         f"to start from (extrude or atlas)")
    slices, frame, scale = place_in_cube(inputs, pipeline.model_config.cube_size)
    prior_cube = None
    atlas_conditioned = pipeline.model_config.atlas_conditioning
    if prior == "atlas" and (sampling.get("strength", 1.0) < 1.0 or atlas_conditioned):
        from .atlas import atlas_in_cube
        from .atlas_templates import choose_template, load_template

        if progress is not None:
            progress(0.0, "registering the atlas prior")
        prior_cube = scale.normalise(atlas_in_cube(inputs, frame, load_template(choose_template(atlas, inputs).path), warnings))
    if input_labels is not None:  # on the cube planes of `slices`: one (3, S, S) map in {-1, 1} per input slice
        from .model_space import tumour_channels

        sampling["input_label_maps"] = [tumour_channels(placed) for placed in labels_in_cube(inputs, input_labels, frame)]
    # an atlas-conditioned model reads the atlas as conditioning whenever it is the prior, and from it starts where
    # strength < 1; `--prior extrude` and `--prior none` withhold it
    result = pipeline(slices, modality, progress=progress, prior=prior_cube if sampling.get("strength", 1.0) < 1.0 else None,
                      atlas=prior_cube if atlas_conditioned else None, **sampling)
    image = geometry.cube_to_grid(scale.restore(result.image), frame, inputs.geometry)
    spread = geometry.cube_to_grid(result.uncertainty * scale.scale / 2.0, frame, inputs.geometry)
    labels = None
    if model_labels and result.tumour_probability is not None:  # drawn by the denoiser in the cube (the shipped model)
        probability = np.stack([geometry.cube_to_grid(p, frame, inputs.geometry) for p in result.tumour_probability])
        labels = np.where(probability.max(axis=0) >= 0.5, probability.argmax(axis=0) + 1, 0).astype(np.uint8)
    elif model_labels and pipeline.label_net is not None:  # in pixel space, on the input's own grid
        from .tumour_labels import label_volume

        if progress is not None:
            progress(0.97, "tumour labels")
        labels = label_volume(pipeline.label_net, _paste_inputs(image, inputs).astype(np.float32), inputs.axis,
                              inputs.geometry.spacing, inputs.indices, list(inputs.images), scale,
                              device=pipeline.device)
    return image, labels, spread.astype(np.float32), result.unet_evaluations, result.uncertainty_across


SAMPLING_RECORD = ("views", "steps", "guidance", "solver", "strength", "prior", "seed", "samples", "coherent",
                   "fusion")  # what a sidecar records


def sampling_used(pipeline: XDiffusionPipeline, sampling: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings as the pipeline runs them: the caller's (the CLI merges the model card's defaults in),
    else the pipeline's own defaults. ``prior`` is None at strength 1, where sampling starts from noise alone, unless
    it is the atlas that an atlas-conditioned model reads."""
    import inspect

    parameters = inspect.signature(type(pipeline).__call__).parameters
    used = {key: sampling.get(key, parameters[key].default if key in parameters else None) for key in SAMPLING_RECORD}
    prior = sampling.get("prior", "extrude")
    read = prior == "atlas" and pipeline.model_config.atlas_conditioning
    used["prior"] = prior if used["strength"] < 1.0 or read else None
    used["precision"] = str(pipeline.dtype).removeprefix("torch.")  # bfloat16 and float32 differ in the last bits
    return used


def tapered_input_labels(inputs: InputSlices, labels: Sequence[np.ndarray]) -> np.ndarray:
    """The tumour the labels given on the input slices outline, in 3D: each region's outline tapered away from its
    slice (`label_baselines.taper_from_slices`). With labels given, it scored above the label net reading the
    reconstruction, on the validation split and on held-out lesions (docs/model.md, docs/results_tumour.md), so it
    is what every method writes; it reads no image: a shape prior, not a detection."""
    from .label_baselines import taper_from_slices

    return taper_from_slices(inputs.geometry, inputs.axis, inputs.indices, np.stack(labels))


def _paste_inputs(array: np.ndarray, inputs: InputSlices) -> np.ndarray:
    """Cast to the input's type and copy the given slices in, bit-exact."""
    if np.issubdtype(inputs.dtype, np.integer):
        limits = np.iinfo(inputs.dtype)  # float64 bounds that cast back inside the type (2**63 - 1 rounds up to 2**63)
        low, high = (np.float64(v) for v in (limits.min, limits.max))
        high = high if int(high) <= limits.max else np.nextafter(high, -np.inf)
        array = np.clip(np.rint(array.astype(np.float64)), low, high)
    output = array.astype(inputs.dtype)
    for image, index in zip(inputs.images, inputs.indices):
        np.moveaxis(output, inputs.axis, 0)[index] = image
    return output


def reconstruct(
    inputs: InputSlices,
    method: str = "xdiffusion",
    pipeline: Optional[XDiffusionPipeline] = None,
    modality: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    atlas: Optional[str] = None,
    input_labels: Optional[list[np.ndarray]] = None,
    **sampling,
) -> Reconstruction:
    """Reconstruct the volume on ``inputs.geometry`` with the model or a baseline (``views``, ``steps``, ``guidance``,
    ``seed``, ``solver``, ``strength``, ``coherent``, ``samples``, ``fusion`` go to the pipeline; ``prior="atlas"`` with
    ``strength`` < 1 starts sampling from the `atlas` guess, and an atlas-conditioned model reads that guess as
    conditioning at any strength (other priors withhold it); ``prior="none"`` is the model alone, from pure noise,
    and refuses a strength below 1; ``atlas`` is the template for both: ``auto`` (None), ``brain``, ``head`` or a
    file, `atlas_templates.choose_template`). The result lists the fallbacks the atlas registration took
    (`Reconstruction.warnings`). ``input_labels`` (one BraTS label image per input slice,
    `input_labels.read_input_labels`) give every method its tumour labels (`tapered_input_labels`), and condition a
    label-conditioned model's image as well."""
    if input_labels is not None:
        _check_input_labels(inputs, input_labels)
    description = f"{GENERATED_DESCRIPTION} ({method})"
    if method == "xdiffusion" and sampling.get("strength", 1.0) < 1.0:  # what sampling started from (fits NIfTI's 79 characters)
        description = f"{GENERATED_DESCRIPTION} ({sampling.get('prior', 'extrude')} prior {sampling['strength']:g})"
    elif method == "xdiffusion" and sampling.get("prior") == "atlas" and pipeline is not None and pipeline.model_config.atlas_conditioning:
        description = f"{GENERATED_DESCRIPTION} (atlas-conditioned)"
    warnings: list[str] = []
    if method == "xdiffusion":
        if pipeline is None:
            raise InputError("the xdiffusion method needs a model")
        modality = modality or pipeline.modalities[0]
        conditioning = input_labels if pipeline.model_config.label_conditioning else None
        image, labels, spread, evaluations, across = _diffusion(inputs, pipeline, modality, progress, warnings, atlas=atlas,
                                                                input_labels=conditioning,
                                                                model_labels=input_labels is None, **sampling)
        if not (np.isfinite(image).all() and np.isfinite(spread).all()):  # never written as if it were an image
            raise ModelError("the model produced NaN or infinite values (damaged weights, or float16 overflow on a "
                             "GPU: try --device cpu); nothing was written")
        if progress is not None:
            progress(1.0, "done")
        used = sampling_used(pipeline, sampling)
        spread_of = f"{used['samples']} samples" if across == "samples" else "views"
        segmentation, labels_from = _labels_output(inputs, input_labels, labels, description)
        return Reconstruction(
            Volume(_paste_inputs(image, inputs), inputs.geometry, {"description": description}), segmentation,
            Volume(spread, inputs.geometry, {"description": f"{description} uncertainty (std across {spread_of})"}),
            evaluations, method=method, sampling=used, model_card=pipeline.model_card,
            template=_template_name(atlas, inputs) if used["prior"] == "atlas" else None, warnings=warnings,
            uncertainty_across=across, labels_from=labels_from,
        )
    if method == "extrude":
        image = extrude(inputs)
    elif method == "interpolate":
        image = interpolate(inputs)
    elif method == "atlas":
        from .atlas import atlas_reconstruct
        from .atlas_templates import choose_template, load_template

        image = atlas_reconstruct(inputs, load_template(choose_template(atlas, inputs).path), warnings=warnings)
    else:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if progress is not None:
        progress(1.0, method)
    segmentation, labels_from = _labels_output(inputs, input_labels, None, description)
    return Reconstruction(Volume(_paste_inputs(image, inputs), inputs.geometry, {"description": description}), segmentation,
                          method=method, template=_template_name(atlas, inputs) if method == "atlas" else None,
                          warnings=warnings, labels_from=labels_from)


def _labels_output(inputs: InputSlices, input_labels: Optional[Sequence[np.ndarray]], model_labels: Optional[np.ndarray],
                   description: str) -> tuple[Optional[Volume], Optional[str]]:
    """The tumour labels written, and what drew them: the given labels tapered, else the model's own, else none."""
    if input_labels is not None:
        return (Volume(tapered_input_labels(inputs, input_labels), inputs.geometry,
                       {"description": f"{GENERATED_DESCRIPTION} (labels tapered)"}), LABELS_TAPERED)
    if model_labels is not None:
        return Volume(model_labels, inputs.geometry, {"description": f"{description} tumour labels"}), LABELS_FROM_MODEL
    return None, None


def _template_name(atlas: Optional[str], inputs: InputSlices) -> str:
    """The template file the atlas used (`auto` resolved from the input slices, as the registration did)."""
    from .atlas_templates import choose_template

    return str(choose_template(atlas, inputs).path)
