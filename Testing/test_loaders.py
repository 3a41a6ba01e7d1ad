"""BraTS folders in both namings, plain volume folders and fetched-source subjects, built on the fly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from xdiffusion import geometry
from xdiffusion.data import loaders
from xdiffusion.data.fetch import cached_paths
from xdiffusion.data.loaders import (iter_brats_folder, iter_volume_folder, load_brats_case, load_source_subject,
                                     load_training_subjects, subject_from_brats)
from xdiffusion.data.manifest import HELD_OUT_SOURCES, OUT_OF_DOMAIN_SOURCES, SUBJECT_SETS, load_manifest
from xdiffusion.data.validation_split import VALIDATION_STREAM, augmented_validation_subjects
from xdiffusion.errors import InputError

SHAPE = (12, 14, 10)
NEW = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
OLD = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}


def _image(value: float, shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)):
    array = np.full(shape, value, dtype=np.float32)
    array[0] = 0.0  # a background plane
    return array, spacing


def _seg() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[4:8, 4:8, 3:6] = 2
    seg[5:7, 5:7, 4] = 1
    seg[6, 6, 5] = 4
    return seg


def _write_sitk(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _write_nibabel(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), str(path))


def make_case(root: Path, case: str, naming: dict[str, str], writer=_write_sitk, separator: str = "-",
              seg_spacing=(1.0, 1.0, 1.0)) -> Path:
    folder = root / case
    folder.mkdir(parents=True)
    for index, modality in enumerate(("t1", "t1c", "t2", "flair")):
        array, spacing = _image(10.0 * (index + 1))
        writer(folder / f"{case}{separator}{naming[modality]}.nii.gz", array, spacing)
    writer(folder / f"{case}{separator}{naming['seg']}.nii.gz", _seg(), seg_spacing)
    return folder


@pytest.mark.parametrize("naming,separator,writer", [(NEW, "-", _write_sitk), (OLD, "_", _write_nibabel)])
def test_brats_case_both_namings(tmp_path: Path, naming, separator, writer) -> None:
    case = load_brats_case(make_case(tmp_path, "BraTS-GLI-00001-000", naming, writer, separator))
    assert list(case.modalities) == ["t1", "t1c", "t2", "flair"]
    for index, name in enumerate(case.modalities):
        volume = case.modalities[name]
        assert volume.array.shape == SHAPE and volume.array.dtype == np.float32
        assert volume.array[5, 5, 5] == pytest.approx(10.0 * (index + 1))
    assert case.seg is not None and case.seg.array.dtype == np.uint8
    assert sorted(np.unique(case.seg.array).tolist()) == [0, 1, 2, 3]
    assert case.seg.array[6, 6, 5] == 3 and (case.seg.array == 4).sum() == 0
    assert case.id == "BraTS-GLI-00001-000"


def test_brats_grid_mismatch_is_one_clear_error(tmp_path: Path) -> None:
    folder = make_case(tmp_path, "BraTS-X", NEW, seg_spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="seg .* is not on the grid of t1") as error:
        load_brats_case(folder)
    assert "\n" not in str(error.value)


def test_brats_bad_labels_and_missing_files(tmp_path: Path) -> None:
    folder = make_case(tmp_path, "BraTS-Y", NEW)
    bad = _seg()
    bad[0, 0, 0] = 7
    _write_sitk(folder / "BraTS-Y-seg.nii.gz", bad)
    with pytest.raises(InputError, match=r"labels \[7\]"):
        load_brats_case(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no BraTS modality files"):
        load_brats_case(empty)
    (folder / "BraTS-Y_t1.nii.gz").write_bytes((folder / "BraTS-Y-t1n.nii.gz").read_bytes())
    with pytest.raises(InputError, match="look like the t1 volume"):
        load_brats_case(folder)


def test_iter_brats_folder_and_subject(tmp_path: Path) -> None:
    make_case(tmp_path, "BraTS-B", NEW)
    make_case(tmp_path, "BraTS2021_A", OLD, separator="_")
    (tmp_path / "not_a_case").mkdir()
    cases = list(iter_brats_folder(tmp_path))
    assert [case.id for case in cases] == ["BraTS-B", "BraTS2021_A"]
    subject = subject_from_brats(cases[0])
    assert subject.tumour_seg is cases[0].seg
    assert subject.brain_mask.array.sum() == np.prod(SHAPE) - SHAPE[1] * SHAPE[2]  # plane 0 is background
    with pytest.raises(InputError, match="holds no BraTS case folders"):
        list(iter_brats_folder(tmp_path / "not_a_case"))


def test_iter_volume_folder(tmp_path: Path) -> None:
    _write_sitk(tmp_path / "b.nrrd", _image(2.0)[0])
    _write_sitk(tmp_path / "a.mha", _image(1.0)[0])
    (tmp_path / "readme.txt").write_text("not a volume")
    found = list(iter_volume_folder(tmp_path))
    assert [path.name for path, _ in found] == ["a.mha", "b.nrrd"]
    assert found[1][1].array[3, 3, 3] == 2.0 and found[1][1].array.dtype == np.float32
    with pytest.raises(InputError, match="no such folder"):
        list(iter_volume_folder(tmp_path / "b.nrrd"))  # a file, not a folder
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="holds no volume files"):
        list(iter_volume_folder(tmp_path / "nothing"))


def _fake_cache(tmp_path: Path, source_id: str, shapes: dict[str, tuple[int, int, int]], value: float = 5.0) -> Path:
    """Write small stand-ins for a manifest source's files, derived ones included (the real ones are fetched by
    test_data_fetch): images hold ``value`` in a block, label maps 2, masks 1."""
    source = load_manifest().sources[source_id]
    for role, path in cached_paths(tmp_path, source).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith((".csv", ".dcm")):  # a label table, a mosaic the derived image was made from
            path.write_text("not read by the loader\n")
            continue
        shape = shapes.get(role, SHAPE)
        array = np.zeros(shape, dtype=np.float32)
        array[3:9, 3:10, 2:8] = 2.0 if "label" in role else 1.0 if "mask" in role else value
        _write_sitk(path, array)
    return tmp_path


def test_training_subjects_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest()
    monkeypatch.setattr(loaders, "training_sources", lambda **_: [manifest.sources["icbm2009c"]])
    monkeypatch.setattr(loaders, "validation_sources", lambda **_: [manifest.sources["sri24"]])
    _fake_cache(tmp_path, "icbm2009c", {})
    _fake_cache(tmp_path, "sri24", {})
    (subject,) = load_training_subjects(tmp_path)
    assert subject.id == "icbm2009c" and sorted(subject.modalities) == ["t1", "t2"]
    assert subject.labels.array.dtype == np.int32 and subject.tumour_seg is None
    assert subject.brain_mask.array.sum() == 6 * 7 * 6
    (validation,) = load_training_subjects(tmp_path, split="validation")
    assert validation.id == "sri24" and list(validation.modalities) == ["t1"]
    # SRI24 has no mask file: the brain is where the skull-stripped T1 is non-zero
    assert validation.brain_mask.array.sum() == 6 * 7 * 6
    with pytest.raises(InputError, match="unknown split"):
        load_training_subjects(tmp_path, split="test")


def test_training_subjects_grid_mismatch_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest()
    monkeypatch.setattr(loaders, "training_sources", lambda **_: [manifest.sources["mni152nlin6asym"]])
    with pytest.raises(InputError, match="not fetched; run `xdiffusion fetch-data`"):
        load_training_subjects(tmp_path)
    _fake_cache(tmp_path, "mni152nlin6asym", {"brain_mask": (12, 14, 11)})
    with pytest.raises(InputError, match="brain_mask .* is not on the grid of t1"):
        load_training_subjects(tmp_path)


def _value(source_id: str) -> float:
    """A distinct image value per source, so a leaked volume would be recognisable."""
    return 10.0 + sorted(load_manifest().sources).index(source_id)


def test_split_never_leaks_held_out_subjects(tmp_path: Path) -> None:
    for source_id in load_manifest().sources:
        _fake_cache(tmp_path, source_id, {}, value=_value(source_id))
    for name, chosen in SUBJECT_SETS.items():
        train = load_training_subjects(tmp_path, "train", name)
        assert [subject.id for subject in train] == list(chosen.train)
        held_out = load_training_subjects(tmp_path, "held_out", name)
        assert [subject.id for subject in held_out] == list(chosen.held_out)
        assert {subject.id for subject in load_training_subjects(tmp_path, "out_of_domain", name)} == set(chosen.out_of_domain)
        forbidden = {_value(source_id) for source_id in HELD_OUT_SOURCES | OUT_OF_DOMAIN_SOURCES}
        for subject in train:
            assert subject.id not in HELD_OUT_SOURCES | OUT_OF_DOMAIN_SOURCES
            for volume in subject.modalities.values():
                assert not forbidden & set(np.unique(volume.array).tolist())
        validation = load_training_subjects(tmp_path, "validation", name)
        if chosen.validation:  # templates: SRI24, as the shipped model validated
            assert [subject.id for subject in validation] == ["sri24"]
        else:  # individuals: fresh variants of the training subjects, never a held-out brain
            assert [subject.id.split("~")[0] for subject in validation] == [s for s in chosen.train for _ in range(2)]
            assert all(subject.brain_mask is not None and len(subject.modalities) == 1 for subject in validation)
    assert [subject.id for subject in load_training_subjects(tmp_path)] == ["icbm2009c", "mni152nlin6asym",
                                                                             "desikan_killiany"]  # `fetched` as before
    with pytest.raises(InputError, match="unknown subject set"):
        load_training_subjects(tmp_path, "train", "everyone")


def test_validation_variants_are_seeded_and_apart_from_training_streams(tmp_path: Path) -> None:
    _fake_cache(tmp_path, "pycortex_s1", {})
    subject = load_source_subject("pycortex_s1", tmp_path)
    first = augmented_validation_subjects([subject], variants_per_subject=2, seed=3)
    again = augmented_validation_subjects([subject], variants_per_subject=2, seed=3)
    for a, b in zip(first, again):
        assert a.id == b.id and list(a.modalities) == list(b.modalities)
        np.testing.assert_array_equal(next(iter(a.modalities.values())).array, next(iter(b.modalities.values())).array)
    # a training cube's stream is [seed, subject, variant]; validation's always starts with VALIDATION_STREAM
    training_draw = np.random.default_rng([3, 0, 0]).random(4)
    validation_draw = np.random.default_rng([VALIDATION_STREAM, 3, 0, 0]).random(4)
    assert not np.allclose(training_draw, validation_draw)
    with pytest.raises(InputError, match="at least 1"):
        augmented_validation_subjects([subject], variants_per_subject=0)


def test_individual_scan_4d_uint8_lia(tmp_path: Path) -> None:
    """pycortex S1 is uint8 and LIA; other files carry a trailing 4th axis of length 1: both load as 3D float32."""
    manifest = load_manifest()
    source = manifest.sources["pycortex_s1"]
    paths = cached_paths(tmp_path, source)
    _fake_cache(tmp_path, "pycortex_s1", {})
    lia = np.array([[-1.0, 0, 0, 10], [0, 0, 1.0, -20], [0, -1.0, 0, 30], [0, 0, 0, 1]])  # axes: L, I, A
    head = np.zeros(SHAPE + (1,), dtype=np.uint8)
    head[3:9, 3:10, 2:8, 0] = 200
    nib.save(nib.Nifti1Image(head, lia), str(paths["t1"]))
    for role in ("brain_mask", "labels"):
        nib.save(nib.Nifti1Image((head > 0).astype(np.uint8), lia), str(paths[role]))
    subject = load_source_subject("pycortex_s1", tmp_path)
    t1 = subject.modalities["t1"]
    assert t1.array.shape == SHAPE and t1.array.dtype == np.float32 and t1.array.max() == 200.0
    assert {plane: geometry.plane_axis(t1.geometry, plane) for plane in ("sagittal", "coronal", "axial")} == \
        {"sagittal": 0, "coronal": 2, "axial": 1}
    assert subject.brain_mask.array.sum() == 6 * 7 * 6 and subject.labels.array.dtype == np.int32


def test_training_config_names_the_subject_set(tmp_path: Path) -> None:
    """`data.source: fetched` stays the templates set; `fetched:individuals` is the explicit, named new choice."""
    from xdiffusion.training_run import DataConfig, split_subjects

    for source_id in load_manifest().sources:
        _fake_cache(tmp_path, source_id, {})
    train, validation = split_subjects(DataConfig(source="fetched", cache_dir=str(tmp_path)))
    assert [s.id for s in train] == ["icbm2009c", "mni152nlin6asym", "desikan_killiany"]
    assert [s.id for s in validation] == ["sri24"]
    train, validation = split_subjects(DataConfig(source="fetched:individuals", cache_dir=str(tmp_path)))
    assert [s.id for s in train] == list(SUBJECT_SETS["individuals"].train)
    assert not {s.id.split("~")[0] for s in validation} - set(SUBJECT_SETS["individuals"].train)
    with pytest.raises(InputError, match="unknown subject set 'nobody'"):
        split_subjects(DataConfig(source="fetched:nobody", cache_dir=str(tmp_path)))
