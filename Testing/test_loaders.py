"""BraTS folders in both namings, plain volume folders and fetched-source subjects, built on the fly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from xdiffusion.data import loaders
from xdiffusion.data.fetch import cached_paths
from xdiffusion.data.loaders import (iter_brats_folder, iter_volume_folder, load_brats_case, load_training_subjects,
                                     subject_from_brats)
from xdiffusion.data.manifest import load_manifest
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


def _fake_cache(tmp_path: Path, source_id: str, shapes: dict[str, tuple[int, int, int]]) -> Path:
    """Write small stand-ins for a manifest source's files (the real ones are fetched by test_data_fetch)."""
    source = load_manifest().sources[source_id]
    for role, path in cached_paths(tmp_path, source).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".csv"):
            path.write_text("index,name\n")
            continue
        shape = shapes.get(role, SHAPE)
        array = np.zeros(shape, dtype=np.float32)
        array[3:9, 3:10, 2:8] = 5.0 if "label" not in role else 2.0
        _write_sitk(path, array)
    return tmp_path


def test_training_subjects_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest()
    monkeypatch.setattr(loaders, "training_sources", lambda: [manifest.sources["icbm2009c"]])
    monkeypatch.setattr(loaders, "validation_sources", lambda: [manifest.sources["sri24"]])
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
    monkeypatch.setattr(loaders, "training_sources", lambda: [manifest.sources["mni152nlin6asym"]])
    with pytest.raises(InputError, match="not fetched; run `xdiffusion fetch-data`"):
        load_training_subjects(tmp_path)
    _fake_cache(tmp_path, "mni152nlin6asym", {"brain_mask": (12, 14, 11)})
    with pytest.raises(InputError, match="brain_mask .* is not on the grid of t1"):
        load_training_subjects(tmp_path)
