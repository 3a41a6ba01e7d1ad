"""The model's atlas prior, built in the cube (`atlas.atlas_in_cube`): the same guess as the full-resolution atlas
volume resampled into the cube (the reconstruction's numbers moved by -0.05 dB on the demo), without ever putting
the template on the whole input grid."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oriented_volume, smooth_head
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)

from xdiffusion import atlas, geometry
from xdiffusion.atlas_templates import load_template
from xdiffusion.io import Volume
from xdiffusion.reconstruct import _paste_inputs, select_slices

LIA = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])  # array axes: L, I, A (the cube flips and swaps them)
SIDE = 32


@pytest.mark.parametrize("plane, indices", [("axial", [30]), ("coronal", [20, 27])])
def test_the_cube_prior_is_the_full_resolution_guess_resampled(monkeypatch, plane, indices):
    volume = oriented_volume(smooth_head((44, 70, 52)), LIA, spacing=(2.2, 1.1, 1.9), origin=(-50.0, 60.0, 40.0))
    inputs = select_slices(volume, plane, indices)
    template = load_template()
    frame = geometry.cube_frame_for_grid(volume.geometry, SIDE)
    full = atlas.atlas_reconstruct(inputs, template)
    expected = geometry.volume_to_cube(Volume(_paste_inputs(full, inputs).astype(np.float32), volume.geometry), frame)
    grids = []
    real = atlas.template_on_grid
    monkeypatch.setattr(atlas, "template_on_grid", lambda template, grid, centred_on=None: grids.append(grid.shape) or
                        real(template, grid, centred_on))
    cube = atlas.atlas_in_cube(inputs, frame, template)

    assert cube.shape == (SIDE,) * 3 and cube.dtype == np.float32 and volume.geometry.shape not in grids
    coverage = geometry.volume_to_cube(volume.with_array(np.ones(volume.geometry.shape, np.float32)), frame)
    assert np.all(cube[coverage == 0] == 0)  # outside the input grid, as a resampled volume
    inside = coverage > 0.999
    error = np.abs(cube - expected)[inside]
    # the same guess up to interpolation (the template sampled once at the cube's points, not twice through the grid)
    assert np.median(error) < 0.05 * np.ptp(expected) and np.corrcoef(cube[inside], expected[inside])[0, 1] > 0.9
    for index in indices:  # each input slice on its nearest cube plane, as placed for the model
        placed = geometry.slice_to_cube(np.take(volume.array, index, inputs.axis), volume.geometry, inputs.axis, index, frame)
        plane_index = int(round(float(frame.to_coordinate(placed.position))))
        np.testing.assert_array_equal(np.take(cube, plane_index, placed.axis), placed.image)
