"""Siemens mosaic DICOM: one 2D image that holds every slice of an EPI volume as tiles, turned back into 3D.

ITK and GDCM read a mosaic as one large 2D slice. The tile count is normally in the private tag
NumberOfImagesInMosaic (0019,100A); anonymised files (heudiconv's test data) have lost every private tag, so the
caller may give the count. The tiles fill the smallest square grid that holds them, so the count gives the tile size.

Geometry follows nibabel's ``MosaicWrapper``: ImagePositionPatient of a mosaic is the corner of the whole 2D
mosaic, so the first slice's corner is moved by half the difference between the mosaic and a tile; the slice axis
is the cross product of the row and column directions (Siemens' slice normal in the CSA header, which these files
no longer have, points the same way for an ascending acquisition), and slices are one SpacingBetweenSlices apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import Geometry, Volume

MOSAIC_IMAGE_TYPE = "MOSAIC"
TAG_IMAGE_TYPE = "0008|0008"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_PIXEL_SPACING = "0028|0030"
TAG_SLICE_SPACING = "0018|0088"
TAG_SLICE_THICKNESS = "0018|0050"
TAG_IMAGES_IN_MOSAIC = "0019|100a"


def _numbers(text: str, where: str, expected: int) -> np.ndarray:
    try:
        values = np.asarray([float(part) for part in text.strip().split("\\")], dtype=np.float64)
    except ValueError:
        raise InputError(f"{where}: cannot read numbers from {text!r}") from None
    if values.size != expected:
        raise InputError(f"{where}: expected {expected} numbers, got {values.size}")
    return values


def _tag(reader: sitk.ImageFileReader, key: str) -> str | None:
    return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None


def tiles_per_side(count: int) -> int:
    """Siemens lays ``count`` slices on the smallest square grid that holds them."""
    return math.ceil(math.sqrt(count))


def split_mosaic(mosaic: np.ndarray, count: int) -> np.ndarray:
    """(rows, columns) mosaic -> (count, tile rows, tile columns) slices, tiles read row by row."""
    if count < 1:
        raise InputError(f"mosaic: slice count must be positive, got {count}")
    side = tiles_per_side(count)
    rows, columns = mosaic.shape
    if rows % side or columns % side:
        raise InputError(f"mosaic of {rows}x{columns} pixels cannot be cut into {side}x{side} tiles for {count} slices")
    tiles = mosaic.reshape(side, rows // side, side, columns // side).transpose(0, 2, 1, 3)
    return tiles.reshape(side * side, rows // side, columns // side)[:count]


def _slice_count(reader: sitk.ImageFileReader, path: Path, given: int | None) -> int:
    text = _tag(reader, TAG_IMAGES_IN_MOSAIC)
    in_header = int(float(text)) if text and text.strip() else None
    if in_header is not None and given is not None and in_header != given:
        raise InputError(f"{path}: the header says {in_header} slices in the mosaic, the caller {given}")
    count = in_header if in_header is not None else given
    if count is None:
        raise InputError(f"{path}: mosaic without NumberOfImagesInMosaic (0019,100A); give the slice count")
    return count


def read_mosaic(path: str | Path, slice_count: int | None = None) -> Volume:
    """One Siemens mosaic DICOM file as a 3D volume with its patient geometry (ITK index order, LPS)."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read DICOM ({str(error).strip().splitlines()[-1][:160]})") from None
    image_type = (_tag(reader, TAG_IMAGE_TYPE) or "").upper()
    if MOSAIC_IMAGE_TYPE not in image_type.split("\\"):
        raise InputError(f"{path}: not a Siemens mosaic (ImageType {image_type.strip()!r} lacks MOSAIC)")
    count = _slice_count(reader, path, slice_count)
    array = sitk.GetArrayFromImage(image)  # (1, rows, columns) for one frame
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"{path}: a mosaic must be one 2D frame, got pixel array of shape {array.shape}")
    tiles = split_mosaic(array, count)  # (slice, row, column)
    row_cosine, column_cosine = np.split(_numbers(_tag(reader, TAG_ORIENTATION) or "", f"{path} (0020,0037)", 6), 2)
    position = _numbers(_tag(reader, TAG_POSITION) or "", f"{path} (0020,0032)", 3)
    row_spacing, column_spacing = _numbers(_tag(reader, TAG_PIXEL_SPACING) or "", f"{path} (0028,0030)", 2)
    slice_text = _tag(reader, TAG_SLICE_SPACING) or _tag(reader, TAG_SLICE_THICKNESS)
    if not slice_text:
        raise InputError(f"{path}: no SpacingBetweenSlices (0018,0088) or SliceThickness (0018,0050)")
    slice_spacing = float(_numbers(slice_text, f"{path} slice spacing", 1)[0])
    normal = np.cross(row_cosine, column_cosine)
    (mosaic_rows, mosaic_columns), (_, tile_rows, tile_columns) = array.shape, tiles.shape
    # the header places the whole mosaic as if it were one slice: move to the first tile by half the size difference
    position = (position + row_cosine * column_spacing * (mosaic_columns - tile_columns) / 2.0
                + column_cosine * row_spacing * (mosaic_rows - tile_rows) / 2.0)
    direction = np.stack([row_cosine, column_cosine, normal], axis=1)
    volume = np.ascontiguousarray(tiles.transpose(2, 1, 0))  # ITK index order: (column, row, slice)
    geometry = Geometry(volume.shape, (column_spacing, row_spacing, slice_spacing), position, direction)
    return Volume(volume, geometry, {})


def mean_of_mosaics(paths: Sequence[str | Path], slice_count: int | None = None) -> Volume:
    """The voxel-wise mean of repeated mosaic acquisitions on one grid (float32), e.g. several b=0 volumes."""
    if not paths:
        raise InputError("mean of mosaics: no files given")
    volumes = [read_mosaic(path, slice_count) for path in paths]
    first = volumes[0]
    for path, other in zip(paths[1:], volumes[1:]):
        if not first.geometry.same_as(other.geometry, atol=1e-3):
            raise InputError(f"{path}: its mosaic grid differs from {Path(paths[0]).name}'s; cannot average them")
    mean = np.mean([volume.array.astype(np.float64) for volume in volumes], axis=0).astype(np.float32)
    return first.with_array(mean)
