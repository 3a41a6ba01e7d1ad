"""Thick-slice clinical stacks into isotropic volumes (`xdiffusion upsample`): every thick slice is an input.

- `stack`: what a thick-slice stack is (`thick_stack`, with the refusals) and the output grid (`isotropic_grid`).
- `slabs`: the slab model (a thick slice is its slab's mean), the slab-consistency projection, and slab averaging.
- `resampling`: `linear` and `bspline` (SimpleITK, slab centres as samples).
- `through_plane`: `learned`, the B-spline plus a 2D network's correction along the slice axis at the output's own
  resolution (`through_plane_training` trains it).
- `diffusion`: `xdiffusion` with today's cube model (experimental; docs/upsample.md has its measured numbers).

`upsample` runs a method onto the grid and ends with the slab projection; `write_upsampling` writes the volume and its
provenance sidecar as one unit. See docs/upsample.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .. import __version__
from ..errors import InputError, ModelError
from ..io import GENERATED_DESCRIPTION, Geometry, Volume, write_volumes
from .resampling import resample
from .slabs import project_onto_slabs, slab_consistency_error, slab_positions, slab_weights
from .stack import ThickStack, isotropic_grid, slab_grid, thick_stack

if TYPE_CHECKING:
    from ..pipeline import ProgressCallback, XDiffusionPipeline
    from .through_plane import ThroughPlaneNet

__all__ = ["METHODS", "DEFAULT_METHOD", "Upsampling", "ThickStack", "thick_stack", "isotropic_grid", "upsample",
           "write_upsampling"]

METHODS = ("bspline", "linear", "learned", "xdiffusion")
DEFAULT_METHOD = "learned"  # the best measured method: above bspline on every held-out case (docs/upsample.md)
HEADER_LABELS = {"bspline": "B-spline upsample", "linear": "linear upsample", "learned": "learned upsample",
                 "xdiffusion": "diffusion upsample"}
SAMPLING_RECORD = ("views", "steps", "guidance", "solver", "strength", "samples", "coherent", "fusion", "seed")


@dataclass
class Upsampling:
    """The isotropic volume and what made it. ``slab_error`` is the RMS difference between the output's slab means and
    the input slices (input units) as written: float error with the projection, the method's own without it."""

    image: Volume
    stack: ThickStack
    method: str
    slab_projection: bool
    slab_error: float
    sampling: Optional[dict[str, Any]] = None
    model_card: Optional[dict[str, Any]] = None
    unet_evaluations: int = 0
    warnings: list[str] = field(default_factory=list)


def _check_grid(stack: ThickStack, grid: Geometry) -> None:
    if not np.allclose(grid.direction, stack.geometry.direction, atol=1e-6):
        raise InputError("the output grid must have the input's direction")
    if grid.spacing[stack.axis] >= stack.thickness_mm:
        raise InputError("the output grid is not finer than the slabs along the slice axis")


def _slabs_on(stack: ThickStack, grid: Geometry) -> np.ndarray:
    """The input slices on the output's in-plane grid: the input itself when the in-plane grid is kept, else its
    in-plane B-spline resampling."""
    target = slab_grid(stack, grid)
    if target.same_as(stack.geometry):
        return stack.volume.array.astype(np.float32)
    return resample(stack.volume, target, "bspline")


def upsample(stack: ThickStack, method: str = DEFAULT_METHOD, spacing_mm: Optional[float] = None, slab_projection: bool = True,
             pipeline: Optional[XDiffusionPipeline] = None, modality: Optional[str] = None,
             progress: Optional[ProgressCallback] = None, grid: Optional[Geometry] = None,
             through_plane_net: Optional[ThroughPlaneNet] = None, **sampling: Any) -> Upsampling:
    """``stack`` on the isotropic grid (``spacing_mm``, default the in-plane spacing; or an explicit ``grid`` with the
    input's direction, as the benchmark uses to land on the truth's grid) by ``method``, then projected onto the slabs
    unless ``slab_projection`` is False. ``learned`` uses ``through_plane_net`` (default: the packaged weights).
    ``sampling`` (views, steps, guidance, solver, strength, samples, coherent, seed) goes to the model for
    ``xdiffusion``; the B-spline upsampling is its prior (used when strength < 1)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    grid = grid if grid is not None else isotropic_grid(stack, spacing_mm)
    _check_grid(stack, grid)
    weights = slab_weights(grid, slab_grid(stack, grid), stack.axis)
    slabs = _slabs_on(stack, grid)
    used, card, evaluations = None, None, 0
    if progress is not None:
        progress(0.0, f"{method} resampling")
    if method == "xdiffusion":
        if pipeline is None:
            raise InputError("the xdiffusion method needs a model")
        from .diffusion import diffusion_upsample

        modality = modality or pipeline.modalities[0]
        prior = resample(stack.volume, grid, "bspline")
        array, evaluations, windows = diffusion_upsample(stack, grid, prior, pipeline, modality, progress, **sampling)
        if not np.isfinite(array).all():
            raise ModelError("the model produced NaN or infinite values (damaged weights, or float16 overflow on a GPU: "
                             "try --device cpu); nothing was written")
        used = {key: sampling.get(key) for key in SAMPLING_RECORD}
        used.update(prior="bspline" if sampling.get("strength", 1.0) < 1.0 else None, modality=modality, **windows)
        card = pipeline.model_card
    elif method == "learned":
        from .through_plane import load_through_plane_net, refine, weights_sha256

        net = through_plane_net if through_plane_net is not None else load_through_plane_net()
        prior = project_onto_slabs(resample(stack.volume, grid, "bspline"), slabs, weights, stack.axis)
        step = float(grid.spacing[stack.axis])
        report = (lambda share: progress(share, "through-plane network")) if progress is not None else None
        array = refine(prior, stack.axis, slab_positions(grid, slab_grid(stack, grid), stack.axis),
                       stack.thickness_mm / step, net, report)
        digest = weights_sha256(net)
        used = {"network": type(net).__name__, "features": list(net.config.features)}
        card = {"id": f"{type(net).__name__} {digest[:12]}", "sha256": {"parameters_float16": digest}}
    else:
        array = resample(stack.volume, grid, method)
    if slab_projection:
        array = project_onto_slabs(array, slabs, weights, stack.axis)
    error = slab_consistency_error(array, slabs, weights, stack.axis)
    if progress is not None:
        progress(1.0, "done")
    description = f"{GENERATED_DESCRIPTION} ({HEADER_LABELS[method]})"
    return Upsampling(Volume(array.astype(np.float32), grid, {"description": description}), stack, method, slab_projection,
                      error, used, card, evaluations)


DESCRIPTION = ("Generated by XDiffusion upsample ({method}) from thick slices: between and within the input slabs a "
               "guess, not a measurement; research use only, not for diagnosis")


def sidecar(result: Upsampling, source: Optional[str | os.PathLike] = None, model_dir: Optional[str | os.PathLike] = None,
            created: Optional[datetime] = None) -> dict[str, Any]:
    """The provenance sidecar of an upsampled volume (the reconstruct sidecar's keys, `provenance.py`, plus the slab
    facts: ``SlabProjection``, ``SlabConsistencyRMS``, ``Input.slab_thickness_mm``, ``Output``)."""
    from ..provenance import model_record

    stack, geometry = result.stack, result.image.geometry
    created = created if created is not None else datetime.now(timezone.utc)
    return {
        "GeneratedNotMeasured": True,
        "Description": DESCRIPTION.format(method=result.method),
        "Content": "image",
        "Method": result.method,
        "Model": model_record(result.model_card, model_dir),
        "Sampling": result.sampling,
        "Seed": result.sampling.get("seed") if result.sampling is not None else None,
        "Template": None,
        "Input": {
            "path": str(Path(source).absolute()) if source is not None else None,
            "plane": stack.plane,
            "axis": int(stack.axis),
            "slice_count": stack.count,
            "slab_thickness_mm": stack.thickness_mm,
            "in_plane_spacing_mm": [float(stack.geometry.spacing[a]) for a in stack.in_plane_axes],
        },
        "Output": {"shape": [int(n) for n in geometry.shape], "spacing_mm": [float(s) for s in geometry.spacing]},
        "SlabProjection": result.slab_projection,
        "SlabConsistencyRMS": float(result.slab_error),
        "Warnings": list(result.warnings),
        "Software": {"name": "xdiffusion", "version": __version__},
        "Created": created.astimezone(timezone.utc).isoformat(timespec="seconds"),
    }


def write_upsampling(result: Upsampling, output: str | os.PathLike, source: Optional[str | os.PathLike] = None,
                     model_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """The volume and its sidecar (``x/up.nii.gz`` -> ``x/up.json``), atomically as one unit (`io.write_volumes`)."""
    from ..provenance import check_sidecars

    (where,) = check_sidecars([output], [source] if source is not None else [])
    return write_volumes([(result.image, output)], [(sidecar(result, source, model_dir), where)])
