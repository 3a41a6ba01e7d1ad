"""The resampling methods: the thick slices taken as samples at their slab centres, interpolated by SimpleITK.

`linear` is trilinear; `bspline` is ITK's cubic B-spline (interpolating: it passes through every slab-centre value).
Beyond the first and last slab centres (the outer half slabs) the nearest value is extended, so the output covers the
slabs' outer edges without a fall to zero.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..io import Geometry, Volume, to_sitk

INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


def reference_image(grid: Geometry) -> sitk.Image:
    reference = sitk.Image([int(n) for n in grid.shape], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in grid.spacing])
    reference.SetOrigin([float(o) for o in grid.origin])
    reference.SetDirection([float(d) for d in grid.direction.ravel()])
    return reference


def resample(volume: Volume, grid: Geometry, method: str) -> np.ndarray:
    """``volume`` on ``grid`` (float32) by ``method`` ('linear' or 'bspline')."""
    image = to_sitk(volume.with_array(volume.array.astype(np.float32)))
    resampled = sitk.Resample(image, reference_image(grid), sitk.Transform(), INTERPOLATORS[method], 0.0,
                              sitk.sitkFloat32, True)  # True: extrapolate beyond the outer slab centres by nearest value
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).T)
