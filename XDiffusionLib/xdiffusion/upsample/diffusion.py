"""`--method xdiffusion` with today's model (experimental): the whole-field-of-view cube model, at most
``max_inputs`` known slices a call, asked to redraw the B-spline volume near each group of thick slices.

The shipped model was never trained on thick slices (it takes thin slices as point samples, and its cube is ~4 mm a
voxel for a head), so this is an honest attempt with what exists, not the issue's trained conditioning. A model with
`slab_conditioning` (configs/detail.yaml) is also told the slab thickness, which it learnt from slab-mean inputs:

1. The B-spline upsampling is the SDEdit prior: it goes into the cube and is noised to ``strength``.
2. The slabs are cut into windows of ``max_inputs`` consecutive slabs (starts 0, 2, 4, ..., the last one flush with
   the end); each window's slabs are the model's known slices, placed at their slab centres (`geometry.slice_to_cube`).
   One pipeline call per window, all with the same prior and seed.
3. The windows' cubes are blended along the slice axis with hat weights centred on each window's middle (each cube
   voxel takes the two windows whose middles bracket it, linearly).
4. The blended cube replaces only what the cube can hold: output = B-spline - (B-spline through the cube and back)
   + (model cube on the grid). The B-spline's in-plane detail finer than the cube stays.
5. The caller then applies the slab projection (`slabs.project_onto_slabs`), as for every method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .. import geometry
from ..io import Geometry, Volume
from .stack import ThickStack

if TYPE_CHECKING:
    from ..pipeline import ProgressCallback, XDiffusionPipeline

WINDOW_STRIDE = 2  # slabs between window starts: every gap between two slabs lies in a window's middle


def window_starts(count: int, size: int, stride: int = WINDOW_STRIDE) -> list[int]:
    """First slab of each window of ``size`` consecutive slabs covering ``count`` slabs (one window if it fits)."""
    if count <= size:
        return [0]
    starts = list(range(0, count - size + 1, stride))
    if starts[-1] != count - size:
        starts.append(count - size)
    return starts


def hat_weights(coordinates: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(windows, len(coordinates)): piecewise-linear weights between sorted window centres, summing to 1, the first and
    last window taking everything beyond their centres."""
    order = np.argsort(centres)
    weights = np.zeros((len(centres), len(coordinates)))
    for rank, window in enumerate(order):
        unit = np.zeros(len(centres))
        unit[rank] = 1.0
        weights[window] = np.interp(coordinates, np.asarray(centres)[order], unit)
    return weights


def diffusion_upsample(stack: ThickStack, grid: Geometry, prior: np.ndarray, pipeline: XDiffusionPipeline, modality: str,
                       progress: Optional[ProgressCallback] = None, **sampling: Any) -> tuple[np.ndarray, int, dict[str, Any]]:
    """The experimental model upsampling on ``grid`` from the B-spline ``prior`` (on ``grid``). Returns the array, the
    U-Net evaluations and the number of windows."""
    from ..model_space import IntensityScale

    side, size = pipeline.model_config.cube_size, int(pipeline.model_config.max_inputs)
    frame = geometry.cube_frame_for_grid(grid, side)
    images = stack.slices()
    scale = IntensityScale.from_slices(list(images))
    placed = [geometry.slice_to_cube(image, stack.geometry, stack.axis, index, frame) for index, image in enumerate(images)]
    placed = [geometry.CubeSlice(scale.normalise(p.image), p.axis, p.position) for p in placed]
    prior_cube_units = geometry.volume_to_cube(Volume(prior.astype(np.float32), grid), frame)
    prior_cube = scale.normalise(prior_cube_units)

    # a slab-conditioned model is told each input is a slab mean of this thickness (cube half-widths), not a sample
    slab = {"slab_thickness": stack.thickness_mm / (frame.size_mm / 2.0)} if pipeline.model_config.slab_conditioning else {}
    starts = window_starts(stack.count, size)
    cube_axis = placed[0].axis
    centres, cubes, evaluations = [], [], 0
    for number, start in enumerate(starts):
        window = placed[start:start + size]

        def report(fraction: float, stage: str, number: int = number) -> Optional[bool]:
            if progress is None:
                return True
            return progress((number + fraction) / len(starts), f"window {number + 1}/{len(starts)}: {stage}")

        result = pipeline(window, modality, progress=report, prior=prior_cube, **slab, **sampling)
        cubes.append(result.image)
        centres.append(float(np.mean([frame.to_coordinate(p.position) for p in window])))
        evaluations += result.unet_evaluations
    weights = hat_weights(np.arange(side, dtype=np.float64), np.asarray(centres))
    shape = [1, 1, 1]
    shape[cube_axis] = side
    blended = sum(w.reshape(shape) * cube for w, cube in zip(weights, cubes))
    model = geometry.cube_to_grid(scale.restore(blended), frame, grid)
    prior_through_cube = geometry.cube_to_grid(prior_cube_units, frame, grid)
    output = prior.astype(np.float32) - prior_through_cube + model
    return output.astype(np.float32), evaluations, {"windows": len(starts), "slabs_per_window": min(size, stack.count)}
