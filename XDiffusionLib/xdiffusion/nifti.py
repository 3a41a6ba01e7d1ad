"""NIfTI voxels read once, in one pass over the file.

ITK's NIfTI reader zero-fills a truncated file and turns NaN/Inf into 0, so it cannot be the reader of the voxels; it
reads only the header (the grid, by ITK's rules: `io.py`). nibabel reads the voxels as stored, from the same stream
that is then read to its end, so a gzip file's trailer (checksum and length) is checked in the same pass; they are
then scaled and typed exactly as `SimpleITK.ReadImage` gives them (Testing/test_io.py compares the two).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .atomic_files import file_suffix
from .errors import InputError
from .io import _first_line

ITK_SCALE_EPSILON = np.finfo(np.float64).eps  # ITK's test of a slope of 0 or 1 and an intercept of 0


def read_nifti_voxels(path: Path, header) -> np.ndarray:
    """The voxels of the NIfTI file ``path`` in ITK index order, of the type and values ITK's reader gives;
    ``header`` is ITK's read of its header (a `SimpleITK.ImageFileReader` after `ReadImageInformation`)."""
    import nibabel

    try:
        with (gzip.open(path, "rb") if file_suffix(path) == ".nii.gz" else open(path, "rb")) as stream:
            stored = nibabel.Nifti1Header.from_fileobj(stream)  # ITK reads no NIfTI-2: its header read refused it
            raw = np.asarray(stored.raw_data_from_fileobj(stream))
            while stream.read(1 << 22):  # to the end: a gzip stream's trailer is checked only there
                pass
    except Exception as error:  # gzip, zlib and nibabel report damage with many exception types
        raise InputError(f"{path}: NIfTI data is truncated or corrupt ({_first_line(error)})") from None
    if raw.size == 0:  # ITK's header read says 1 for an axis of length 0
        raise InputError(f"{path}: image is empty (an axis of length 0)")
    if raw.size != np.prod(header.GetSize(), dtype=np.float64):
        raise InputError(f"{path}: the header's dimensions disagree (nibabel reads {list(raw.shape)}, ITK {list(header.GetSize())})")
    dtype = _itk_dtype(header.GetPixelID(), path)
    raw = raw.reshape(tuple(header.GetSize()), order="F")  # ITK drops trailing axes of length 1
    slope, intercept = (float(value) if np.isfinite(value) else 0.0 for value in (stored["scl_slope"], stored["scl_inter"]))
    slope = 1.0 if abs(slope) <= ITK_SCALE_EPSILON else slope  # ITK: a slope of 0 (or none) means 1; the intercept holds
    if abs(slope - 1.0) > ITK_SCALE_EPSILON or abs(intercept) > ITK_SCALE_EPSILON:
        return (raw.astype(dtype).astype(np.float64) * slope + intercept).astype(dtype)  # as ITK: to its type first
    return raw.astype(dtype, copy=False)


def _itk_dtype(pixel_id: int, path: Path) -> np.dtype:
    """The numpy type of a SimpleITK scalar pixel type (native byte order, as ITK gives it)."""
    import SimpleITK as sitk

    types = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16, sitk.sitkInt16: np.int16,
             sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32, sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64,
             sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64}
    if pixel_id not in types:
        raise InputError(f"{path}: voxels of type {sitk.GetPixelIDValueAsString(pixel_id)} are not supported; need a scalar image")
    return np.dtype(types[pixel_id])
