"""Siemens mosaic DICOMs cut back into 3D volumes, on small mosaics written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from xdiffusion.data.siemens_mosaic import mean_of_mosaics, read_mosaic, split_mosaic
from xdiffusion.errors import InputError

TILE_ROWS, TILE_COLUMNS, SLICES = 5, 4, 7  # 7 slices on a 3x3 grid: two empty tiles
ROW_SPACING, COLUMN_SPACING, SLICE_SPACING = 2.0, 1.5, 3.0


def _rotation(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])


def _volume(offset: int = 0) -> np.ndarray:
    """ITK index order (column, row, slice); every voxel a distinct value."""
    return (np.arange(TILE_COLUMNS * TILE_ROWS * SLICES).reshape(SLICES, TILE_ROWS, TILE_COLUMNS).transpose(2, 1, 0)
            + 1 + offset).astype(np.uint16)


def _mosaic(volume: np.ndarray) -> np.ndarray:
    side = 3
    mosaic = np.zeros((side * TILE_ROWS, side * TILE_COLUMNS), dtype=np.uint16)
    for index in range(SLICES):
        row, column = divmod(index, side)
        mosaic[row * TILE_ROWS:(row + 1) * TILE_ROWS, column * TILE_COLUMNS:(column + 1) * TILE_COLUMNS] = volume[:, :, index].T
    return mosaic


def write_mosaic(path: Path, volume: np.ndarray, direction: np.ndarray, origin=(-10.0, -20.0, -30.0),
                 image_type: str = "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC", count_tag: int | None = None) -> Path:
    image = sitk.GetImageFromArray(_mosaic(volume)[None])  # one frame: size (columns, rows, 1)
    image.SetSpacing((COLUMN_SPACING, ROW_SPACING, SLICE_SPACING))
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    image.SetMetaData("0008|0008", image_type)
    image.SetMetaData("0008|0060", "MR")
    image.SetMetaData("0018|0088", str(SLICE_SPACING))
    if count_tag is not None:
        image.SetMetaData("0019|0010", "SIEMENS MR HEADER")
        image.SetMetaData("0019|100a", str(count_tag))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)
    return path


def test_split_mosaic_reads_tiles_row_by_row() -> None:
    volume = _volume()
    slices = split_mosaic(_mosaic(volume), SLICES)
    assert slices.shape == (SLICES, TILE_ROWS, TILE_COLUMNS)
    for index in range(SLICES):
        np.testing.assert_array_equal(slices[index], volume[:, :, index].T)
    with pytest.raises(InputError, match="cannot be cut into 3x3 tiles"):
        split_mosaic(np.zeros((16, 12)), SLICES)


def test_mosaic_volume_and_geometry(tmp_path: Path) -> None:
    direction = _rotation(10.0)
    origin = np.array([-10.0, -20.0, -30.0])
    volume = read_mosaic(write_mosaic(tmp_path / "m.dcm", _volume(), direction), slice_count=SLICES)
    np.testing.assert_array_equal(volume.array, _volume())
    geometry = volume.geometry
    assert geometry.shape == (TILE_COLUMNS, TILE_ROWS, SLICES)
    np.testing.assert_allclose(geometry.spacing, [COLUMN_SPACING, ROW_SPACING, SLICE_SPACING], atol=1e-6)
    np.testing.assert_allclose(geometry.direction, direction, atol=1e-6)  # slice axis = row x column direction
    # the mosaic's position is its whole 2D image; the first tile starts half the size difference further in
    shift = direction[:, 0] * COLUMN_SPACING * (3 * TILE_COLUMNS - TILE_COLUMNS) / 2 \
        + direction[:, 1] * ROW_SPACING * (3 * TILE_ROWS - TILE_ROWS) / 2
    np.testing.assert_allclose(geometry.origin, origin + shift, atol=1e-4)


def test_mosaic_count_from_private_tag_and_disagreement(tmp_path: Path) -> None:
    path = write_mosaic(tmp_path / "tagged.dcm", _volume(), np.eye(3), count_tag=SLICES)
    assert read_mosaic(path).geometry.shape == (TILE_COLUMNS, TILE_ROWS, SLICES)  # no count given: the tag's
    with pytest.raises(InputError, match="header says 7 slices"):
        read_mosaic(path, slice_count=9)
    untagged = write_mosaic(tmp_path / "untagged.dcm", _volume(), np.eye(3))
    with pytest.raises(InputError, match="give the slice count"):
        read_mosaic(untagged)


def test_not_a_mosaic_is_refused(tmp_path: Path) -> None:
    path = write_mosaic(tmp_path / "plain.dcm", _volume(), np.eye(3), image_type="ORIGINAL\\PRIMARY\\M\\ND")
    with pytest.raises(InputError, match="not a Siemens mosaic"):
        read_mosaic(path, slice_count=SLICES)


def test_mean_of_repeats_and_grid_mismatch(tmp_path: Path) -> None:
    first = write_mosaic(tmp_path / "a.dcm", _volume(), np.eye(3))
    second = write_mosaic(tmp_path / "b.dcm", _volume(offset=10), np.eye(3))
    mean = mean_of_mosaics([first, second], SLICES)
    assert mean.array.dtype == np.float32
    np.testing.assert_allclose(mean.array, _volume().astype(np.float32) + 5.0)
    moved = write_mosaic(tmp_path / "c.dcm", _volume(), np.eye(3), origin=(0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="grid differs"):
        mean_of_mosaics([first, moved], SLICES)
