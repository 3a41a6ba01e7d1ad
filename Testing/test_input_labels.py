"""`reconstruct --input-segmentation` (issue 14, item 1): the input slices' tumour labels, read with exactly the
indexing of the input slices and nothing else of the file; tapered into the tumour labels of every method, read by a
label-conditioned model's image too; refused, with one line and nothing written, where they would change nothing;
recorded in the sidecars."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import flip_axis, oriented_volume, smooth_head
from fuzz_helpers import save_tiny_model
from xdiffusion.cli import main
from xdiffusion.cohort import list_cohort
from xdiffusion.errors import InputError
from xdiffusion.input_labels import labels_present, model_uses_input_labels, read_input_labels
from xdiffusion.io import GENERATED_DESCRIPTION, Geometry, Volume, read_volume, write_volume
from xdiffusion.model import preset
from xdiffusion.model_location import PACKAGED_MODEL
from xdiffusion.provenance import sidecar_path, write_reconstruction
from xdiffusion.reconstruct import (LABELS_FROM_MODEL, LABELS_TAPERED, reconstruct, select_slices, single_slice_input,
                                    tapered_input_labels)

SHAPE = (20, 18, 14)
ROTATION = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # no array axis is its own LPS axis


@pytest.fixture(scope="module")
def unconditioned_model(tmp_path_factory) -> Path:
    """A tiny model that does not read input labels (the shipped one does)."""
    return save_tiny_model(tmp_path_factory.mktemp("unconditioned") / "tiny")


@pytest.fixture
def head() -> Volume:
    return flip_axis(oriented_volume((smooth_head(SHAPE) * 100).astype(np.int16), ROTATION), 1)


def labels_like(volume: Volume, array: np.ndarray) -> Volume:
    return Volume(array, volume.geometry)


def test_labels_are_taken_with_the_input_slices_indexing(head, tmp_path):
    """Labels derived from the image voxel for voxel come back equal to the same function of the input slices."""
    path = tmp_path / "labels.nii.gz"
    write_volume(labels_like(head, (head.array % 4).astype(np.uint8)), path)
    for plane, indices in (("axial", [3, 9]), ("coronal", [2, 5, 11]), ("sagittal", None)):
        inputs = select_slices(head, plane, indices)
        labels = read_input_labels(path, inputs)
        assert len(labels) == len(inputs.indices)
        for image, label in zip(inputs.images, labels):
            assert label.dtype == np.uint8
            np.testing.assert_array_equal(label, image % 4)


def test_only_the_chosen_slices_are_read(head, tmp_path):
    """Garbage (labels 9, 255, 7) on every other slice changes nothing and is not refused."""
    inputs = select_slices(head, "coronal", [4, 10])
    axis = inputs.axis
    drawn = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(0)
    for index in inputs.indices:
        np.moveaxis(drawn, axis, 0)[index] = rng.integers(0, 5, np.moveaxis(drawn, axis, 0)[index].shape)
    garbage = rng.choice(np.array([1, 2, 7, 9, 255], np.uint8), SHAPE)
    chosen = np.zeros(SHAPE[axis], bool)
    chosen[list(inputs.indices)] = True
    shape = [1, 1, 1]
    shape[axis] = SHAPE[axis]
    noisy = np.where(chosen.reshape(shape), drawn, garbage)
    write_volume(labels_like(head, drawn), tmp_path / "clean.nrrd")
    write_volume(labels_like(head, noisy), tmp_path / "noisy.nrrd")
    clean, other = read_input_labels(tmp_path / "clean.nrrd", inputs), read_input_labels(tmp_path / "noisy.nrrd", inputs)
    for a, b in zip(clean, other):
        np.testing.assert_array_equal(a, b)
    assert any((label == 3).any() for label in clean) and not any((label == 4).any() for label in clean)  # 4 read as 3
    assert labels_present(clean) == [1, 2, 3]


def test_bad_values_on_an_input_slice_are_named(head, tmp_path):
    inputs = select_slices(head, "axial", [6])
    array = np.zeros(SHAPE, np.float32)
    np.moveaxis(array, inputs.axis, 0)[6][2:4, 2:4] = [[5.0, 1.0], [2.5, 9.0]]
    write_volume(labels_like(head, array), tmp_path / "bad.nrrd")
    with pytest.raises(InputError, match=r"values 2\.5, 5, 9; only BraTS labels 0-4"):
        read_input_labels(tmp_path / "bad.nrrd", inputs)


def test_labels_off_the_input_grid_are_refused(head, tmp_path):
    inputs = select_slices(head, "axial", [6])
    shifted = Volume(np.zeros(SHAPE, np.uint8), Geometry(SHAPE, head.geometry.spacing, head.geometry.origin + 0.5,
                                                         head.geometry.direction))
    write_volume(shifted, tmp_path / "shifted.nrrd")
    with pytest.raises(InputError, match="its origin differ from the input's"):
        read_input_labels(tmp_path / "shifted.nrrd", inputs)
    write_volume(oriented_volume(np.zeros((20, 18, 13), np.uint8), ROTATION), tmp_path / "small.nrrd")
    with pytest.raises(InputError, match=r"shape \[20, 18, 13\] does not match the input's \[20, 18, 14\]"):
        read_input_labels(tmp_path / "small.nrrd", inputs)


def test_a_2d_input_takes_a_2d_label_file_of_its_shape(head, tmp_path):
    image = Volume(head.array[:, :, 6:7].copy(), Geometry((20, 18, 1), head.geometry.spacing, head.geometry.origin,
                                                          head.geometry.direction))
    inputs = single_slice_input(image, None, 0.5)
    labels = np.zeros((20, 18, 1), np.uint8)
    labels[5:9, 4:7, 0] = 2
    write_volume(Volume(labels, image.geometry), tmp_path / "labels2d.nrrd")
    [read] = read_input_labels(tmp_path / "labels2d.nrrd", inputs)
    np.testing.assert_array_equal(read, labels[:, :, 0])
    write_volume(labels_like(head, np.zeros(SHAPE, np.uint8)), tmp_path / "labels3d.nrrd")
    with pytest.raises(InputError, match="does not match the 2D input's"):
        read_input_labels(tmp_path / "labels3d.nrrd", inputs)


class LabelConditionedStub:
    """A pipeline standing in for a label-conditioned model: it records what it is given and draws nothing."""

    def __init__(self, conditioned: bool = True):
        # a real config, so that whatever reconstruct reads of it exists (a stand-in object missed new fields)
        self.model_config = dataclasses.replace(preset("tiny"), cube_size=16, label_conditioning=conditioned)
        self.modalities = ["t1"]
        self.model_card = {"id": "stub"}
        self.dtype = torch.float32
        self.received: dict = {}

    def __call__(self, slices, modality, progress=None, prior=None, views=1, steps=1, guidance=1.0, solver="ddim",
                 strength=1.0, seed=0, samples=1, coherent=False, **extra):
        self.received = {"slices": slices, **extra}
        side = self.model_config.cube_size
        return SimpleNamespace(image=np.zeros((side,) * 3, np.float32), uncertainty=np.zeros((side,) * 3, np.float32),
                               tumour_probability=np.zeros((3,) + (side,) * 3, np.float32), unet_evaluations=1,
                               uncertainty_across="views")


def test_a_label_conditioned_model_gets_the_labels_on_its_cube_planes_and_the_sidecar_records_them(head, tmp_path):
    inputs = select_slices(head, "axial", [4, 9])
    bright = inputs.images[1] > np.percentile(inputs.images[1], 80)  # the labels follow the image's brightest fifth
    labels = [np.zeros(inputs.images.shape[1:], np.uint8), np.where(bright, 2, 0).astype(np.uint8)]
    labels[1][bright & (inputs.images[1] > np.percentile(inputs.images[1], 95))] = 1
    stub = LabelConditionedStub()
    result = reconstruct(inputs, "xdiffusion", stub, "t1", input_labels=labels)
    maps = stub.received["input_label_maps"]  # (3, S, S) in {-1, 1} per slice, as the model's conditioning takes them
    assert len(maps) == 2 and all(m.shape == (3, 16, 16) and set(np.unique(m)) <= {-1.0, 1.0} for m in maps)
    placed = [np.where(m.max(axis=0) > 0, m.argmax(axis=0) + 1, 0).astype(np.uint8) for m in maps]
    assert not placed[0].any() and set(np.unique(placed[1])) == {0, 1, 2}
    image = stub.received["slices"][1].image  # the input slice as the model sees it, on the same cube plane
    brightest = image >= np.sort(image.ravel())[-np.count_nonzero(placed[1])]
    dice = 2 * np.count_nonzero(brightest & (placed[1] > 0)) / (np.count_nonzero(brightest) + np.count_nonzero(placed[1]))
    assert dice > 0.8
    without = LabelConditionedStub()
    reconstruct(inputs, "xdiffusion", without, "t1")
    assert "input_label_maps" not in without.received  # passed only when given
    write_labels = tmp_path / "seg.nii.gz"
    output = tmp_path / "out.nii.gz"
    write_reconstruction(result, inputs, output, source=tmp_path / "in.nii.gz", input_segmentation=write_labels, input_labels=labels)
    record = json.loads(sidecar_path(output).read_text())["Input"]["segmentation"]
    assert record == {"path": str(write_labels.absolute()), "labels_present": [1, 2]}
    write_reconstruction(result, inputs, tmp_path / "plain.nii.gz")
    assert json.loads(sidecar_path(tmp_path / "plain.nii.gz").read_text())["Input"]["segmentation"] is None


def _drawn_tumour(inputs) -> list[np.ndarray]:
    """A lesion drawn on each input slice: oedema on the image's brightest fifth, a core in its brightest twentieth."""
    labels = []
    for image in inputs.images:
        drawn = np.where(image > np.percentile(image, 80), 2, 0).astype(np.uint8)
        drawn[image > np.percentile(image, 95)] = 1
        labels.append(drawn)
    return labels


def test_every_method_and_model_tapers_the_input_labels_into_its_tumour_labels(head):
    inputs = select_slices(head, "axial", [6])
    labels = _drawn_tumour(inputs)
    tapered = tapered_input_labels(inputs, labels)
    assert tapered.shape == SHAPE and (tapered > 0).sum() > 2 * (labels[0] > 0).sum()  # more than the slice
    np.testing.assert_array_equal(np.moveaxis(tapered, inputs.axis, 0)[6], labels[0])
    unconditioned = LabelConditionedStub(conditioned=False)
    for result in (reconstruct(inputs, "extrude", input_labels=labels), reconstruct(inputs, "atlas", input_labels=labels),
                   reconstruct(inputs, "xdiffusion", unconditioned, "t1", input_labels=labels),
                   reconstruct(inputs, "xdiffusion", LabelConditionedStub(), "t1", input_labels=labels)):
        np.testing.assert_array_equal(result.segmentation.array, tapered)
        assert result.segmentation.geometry == inputs.geometry and result.labels_from == LABELS_TAPERED
        assert result.segmentation.metadata["description"].startswith(GENERATED_DESCRIPTION)
    assert "input_label_maps" not in unconditioned.received  # its image does not read them
    model_drawn = reconstruct(inputs, "xdiffusion", LabelConditionedStub(), "t1")
    assert model_drawn.labels_from == LABELS_FROM_MODEL and reconstruct(inputs, "extrude").segmentation is None
    with pytest.raises(InputError, match="do not match the 1 input slice"):
        reconstruct(inputs, "xdiffusion", LabelConditionedStub(), "t1", input_labels=labels * 2)


def test_the_cli_tapers_input_labels_for_any_method_and_refuses_them_where_they_would_change_nothing(head, tmp_path, capsys,
                                                                                                   unconditioned_model):
    assert not model_uses_input_labels(unconditioned_model) and model_uses_input_labels(PACKAGED_MODEL)
    write_volume(head, tmp_path / "in.nii.gz")
    drawn = np.zeros(SHAPE, np.uint8)
    inputs = select_slices(head, "axial", None)
    np.moveaxis(drawn, inputs.axis, 0)[inputs.indices[0]] = _drawn_tumour(inputs)[0]
    write_volume(labels_like(head, drawn), tmp_path / "seg.nii.gz")
    for extra in (["--model", str(unconditioned_model)], ["--method", "extrude"]):  # neither draws its image from labels: without a label output, refused
        code = main(["reconstruct", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"),
                     "--input-segmentation", str(tmp_path / "seg.nii.gz"), *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --input-segmentation:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "seg.nii.gz"]
    code = main(["reconstruct", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--method", "extrude",
                 "--segmentation-output", str(tmp_path / "out_seg.nii.gz"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "draws no tumour labels of its own" in lines[0]
    code = main(["reconstruct", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "--method", "extrude",
                 "--input-segmentation", str(tmp_path / "seg.nii.gz"), "--segmentation-output", str(tmp_path / "out_seg.nii.gz"),
                 "--quiet"])
    assert code == 0
    written = read_volume(tmp_path / "out_seg.nii.gz")
    np.testing.assert_array_equal(written.array, tapered_input_labels(inputs, [np.moveaxis(drawn, inputs.axis, 0)[inputs.indices[0]]]))
    assert np.allclose(written.geometry.spacing, head.geometry.spacing) and np.allclose(written.geometry.origin, head.geometry.origin)
    assert np.allclose(written.geometry.direction, head.geometry.direction)
    record = json.loads(sidecar_path(tmp_path / "out_seg.nii.gz").read_text())
    assert record["LabelsFrom"] == LABELS_TAPERED and record["GeneratedNotMeasured"] is True


def test_a_cohort_csv_takes_an_optional_segmentation_column(head, tmp_path, capsys, unconditioned_model):
    write_volume(head, tmp_path / "a.nii.gz")
    write_volume(head, tmp_path / "b.nii.gz")
    table = tmp_path / "cohort.csv"
    table.write_text("input,segmentation\na.nii.gz,labels/a_seg.nii.gz\nb.nii.gz,\n")
    items = list_cohort(table, tmp_path / "out")
    assert [item.segmentation for item in items] == [str(tmp_path / "labels" / "a_seg.nii.gz"), None]
    code = main(["reconstruct-cohort", str(table), "-o", str(tmp_path / "out"), "--model", str(unconditioned_model)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "needs a label-conditioned model" in lines[0]
    assert not (tmp_path / "out").exists()
