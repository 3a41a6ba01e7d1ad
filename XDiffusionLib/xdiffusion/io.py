"""Volume I/O with exact geometry, through SimpleITK.

Arrays are kept in ITK index order: ``array[i, j, k]`` is the voxel at ITK index (i, j, k), so column ``a`` of
``Geometry.direction`` is the physical (LPS) direction of array axis ``a``. SimpleITK's own arrays are (k, j, i);
we transpose once, here, and nowhere else. Every grid is ITK's reading of the header; NIfTI voxels come from
`nifti.py` (read once, in one pass that also checks the file is whole), every other format's from SimpleITK.
Non-finite voxels: every reader refuses a NaN or infinite voxel anywhere in the image, in every format, with one
line that counts them (ITK's NIfTI reader turns NaN/Inf into 0, the other formats keep them: refusing is the one
behaviour alike for all formats, and nothing can use NaN).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .atomic_files import atomic_output, file_suffix as _suffix, remove_own_parts, seal, temporary_beside  # noqa: F401
from .errors import InputError, begin_commit

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
GENERATED_DESCRIPTION = "XDiffusion generated volume - synthetic, not for diagnosis"
# single-file formats only: a detached header (.mhd, .nhdr) names its data file, which an atomic rename would break
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
MAX_VOXELS = 1024**3  # refuse headers whose arrays would not fit any workstation
DESCRIPTION_KEY = "ITK_FileNotes"  # ITK's free-text note: NIfTI `descrip`, a plain key in NRRD and MetaImage
NIFTI_DESCRIPTION_LENGTH = 79  # `descrip` is char[80], NUL-terminated


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in patient space (LPS, millimetres)."""

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray  # 3x3, column a = physical direction of array axis a

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(3))
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3) + 0.0)  # + 0.0: no -0.0
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3) + 0.0)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        return self.direction * self.spacing[None, :]

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous ITK index (..., 3) to LPS millimetres (..., 3)."""
        return np.asarray(index, dtype=np.float64) @ self.index_to_physical_matrix.T + self.origin

    def physical_to_index(self, point: np.ndarray) -> np.ndarray:
        """LPS millimetres (..., 3) to continuous ITK index (..., 3)."""
        inverse = np.linalg.inv(self.index_to_physical_matrix)
        return (np.asarray(point, dtype=np.float64) - self.origin) @ inverse.T

    @property
    def extent_mm(self) -> np.ndarray:
        """Physical length covered along each array axis (voxel centres ± half a voxel)."""
        return np.asarray(self.shape, dtype=np.float64) * self.spacing

    @property
    def center(self) -> np.ndarray:
        """Physical position of the grid's centre."""
        return self.index_to_physical((np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0)

    def same_as(self, other: "Geometry", atol: float = 1e-6) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )


@dataclass
class Volume:
    """A 3D array with its geometry; a single 2D slice is a volume with one voxel along its third axis."""

    array: np.ndarray
    geometry: Geometry
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape}")

    @property
    def is_slice(self) -> bool:
        return self.array.shape[2] == 1

    def with_array(self, array: np.ndarray, **metadata: str) -> "Volume":
        """A new volume on the same grid (the geometry is shared, never recomputed)."""
        return Volume(array, self.geometry, {**self.metadata, **metadata})


def _dicom_series_files(folder: Path) -> list[str]:
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    reader = sitk.ImageSeriesReader
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series; pass a folder with exactly one")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _read_header(path: Path) -> sitk.ImageFileReader:
    """ITK's read of the header alone; absurd dimensions refused before anything tries to allocate them."""
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    header.ReadImageInformation()
    size = header.GetSize()
    voxels = int(np.prod([int(n) for n in size], dtype=np.float64)) * header.GetNumberOfComponents()
    if voxels == 0 or 0 in size:
        raise InputError(f"{path}: image has an empty axis (size {list(size)})")
    if voxels > MAX_VOXELS:
        raise InputError(f"{path}: header declares {list(size)} voxels, too large to load")
    return header


def _check_pixels(components: int, size: Sequence[int], path: Path) -> None:
    """One scalar 2D slice or 3D volume (a 4D image with one time point counts as 3D)."""
    if components != 1:
        raise InputError(f"{path}: image has {components} components per voxel; need a scalar image")
    if len(size) == 4 and size[3] != 1:
        raise InputError(f"{path}: 4D image with {size[3]} time points; give one 3D volume")
    if len(size) not in (2, 3, 4):
        raise InputError(f"{path}: {len(size)}D image; need a 2D slice or a 3D volume")


def _check_finite_voxels(array: np.ndarray, path: Path) -> None:
    """Refuse any NaN or infinite voxel, in every format alike (see the module docstring)."""
    if array.size == 0:
        raise InputError(f"{path}: image is empty (an axis of length 0)")
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == finite.size:
        raise InputError(f"{path}: image holds no finite values (all NaN or Inf)")
    if bad:
        raise InputError(f"{path}: image holds {bad} NaN or infinite voxel{'s' if bad > 1 else ''}; "
                         "replace them with finite values first (XDiffusion reads no non-finite data)")


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:160] if lines else type(error).__name__


def _itk_reason(error: RuntimeError) -> str:
    """The informative line of a SimpleITK exception, without its source location and object address."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    if not lines:
        return "unreadable"
    return re.sub(r"^(?:sitk::|itk::|ITK )ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?", "", lines[0])[:160]


def _check_nrrd_compression(path: Path) -> None:
    """A gzip-encoded NRRD whose stream is cut at its end (the CRC/size trailer) still reads through ITK: check that
    the stream is complete and its checksum right."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return  # not a NRRD header ITK would accept either; ITK reports it
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if fields.get("encoding") not in ("gzip", "gz") or {"byte skip", "byteskip", "line skip", "lineskip"} & set(fields):
        return
    detached = fields.get("data file") or fields.get("datafile")
    if detached and (" " in detached or detached.upper() == "LIST"):
        return  # several data files: rare, left to ITK
    source, offset = (path.parent / detached, 0) if detached else (path, end + 2)
    stream = zlib.decompressobj(wbits=47)  # gzip or zlib header, trailer checked
    try:
        with open(source, "rb") as handle:
            handle.seek(offset)
            while not stream.eof and (block := handle.read(1 << 22)):
                while block and not stream.eof:
                    stream.decompress(block, 1 << 24)
                    block = stream.unconsumed_tail
    except (OSError, zlib.error) as error:
        raise InputError(f"{path}: NRRD data is truncated or corrupt ({_first_line(error)})") from None
    if not stream.eof:
        raise InputError(f"{path}: NRRD data is truncated (its gzip stream ends early)")


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """ITK's MetaIO, NRRD and GDCM code prints straight to the C-level stderr ("MetaImage: M_Read: ..."), which would
    put extra lines above our one `error:` line. Hide file descriptor 2 while SimpleITK reads (process-wide: another
    thread's stderr output in that window is hidden too)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_voxels(path: Path) -> tuple[np.ndarray, sitk.Image | sitk.ImageFileReader]:
    """The voxels in ITK index order, and what describes their grid: the SimpleITK image or, for NIfTI (whose voxels
    `nifti.py` reads), ITK's read of the header."""
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        with _native_stderr_hidden():
            if path.is_dir():  # DICOM: only voxels and geometry are read; no tag dictionary (patient data) is kept
                series = sitk.ImageSeriesReader()
                series.SetFileNames(_dicom_series_files(path))
                image = series.Execute()
            elif _suffix(path) not in VOLUME_SUFFIXES:
                raise InputError(f"{path}: unsupported file type; use one of {', '.join(VOLUME_SUFFIXES)} or a DICOM folder")
            else:
                header = _read_header(path)
                if _suffix(path) in (".nii", ".nii.gz"):
                    from .nifti import read_nifti_voxels

                    _check_pixels(header.GetNumberOfComponents(), header.GetSize(), path)
                    return read_nifti_voxels(path, header), header
                if _suffix(path) in (".nrrd", ".nhdr"):
                    _check_nrrd_compression(path)
                image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as error:
        raise InputError(f"{path}: cannot read image ({_itk_reason(error)})") from None
    _check_pixels(image.GetNumberOfComponentsPerPixel(), image.GetSize(), path)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return sitk.GetArrayFromImage(image).T, image  # (k, j, i) -> (i, j, k)


def _to_volume(array: np.ndarray, grid: sitk.Image | sitk.ImageFileReader, path: Path) -> Volume:
    dimension = grid.GetDimension()
    if dimension == 2:
        spacing = [*grid.GetSpacing(), grid.GetSpacing()[0]]
        origin = [*grid.GetOrigin(), 0.0]
        d2 = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = d2
        array = array[:, :, None]
    else:
        spacing, origin = grid.GetSpacing(), grid.GetOrigin()
        direction = np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3)
    if array.size == 0:
        raise InputError(f"{path}: image is empty")
    _check_finite_voxels(array, path)
    if np.any(np.asarray(spacing) <= 0) or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{path}: image geometry is degenerate (spacing {list(spacing)})")
    description = grid.GetMetaData(DESCRIPTION_KEY) if grid.HasMetaDataKey(DESCRIPTION_KEY) else ""
    metadata = {"description": description} if description else {}
    if dimension == 2:
        metadata["source_dimension"] = "2"  # its third direction is made up: a caller must be told the plane
    geometry = Geometry(array.shape, spacing, origin, direction)
    return Volume(np.ascontiguousarray(array), geometry, metadata)


def read_image(path: str | os.PathLike) -> Volume:
    """Read a 3D volume or a single 2D slice (NIfTI, NRRD/NHDR, MetaImage, DICOM file or series folder)."""
    path = Path(path)
    return _to_volume(*_read_voxels(path), path)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D volume, refusing single slices."""
    volume = read_image(path)
    if volume.is_slice:
        raise InputError(f"{path}: this is a single 2D slice; a 3D volume is needed here")
    return volume


def to_sitk(volume: Volume) -> sitk.Image:
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.T))
    geometry = volume.geometry
    image.SetSpacing([float(s) for s in geometry.spacing])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection([float(d) for d in geometry.direction.ravel()])
    return image


def _image_for(volume: Volume, target: Path, description: str | None) -> sitk.Image:
    """The SimpleITK image to write at ``target``, with its description: every check happens here, before any file."""
    suffix = _suffix(target)
    if suffix not in WRITABLE_SUFFIXES:
        raise InputError(f"{target}: unsupported output type; use one of {', '.join(WRITABLE_SUFFIXES)}")
    array = volume.array
    if array.dtype == np.float16 or array.dtype == np.bool_:  # no file format here stores them: widen exactly
        volume = volume.with_array(array.astype(np.float32 if array.dtype == np.float16 else np.uint8))
    elif array.dtype.kind not in "iuf" or array.dtype.itemsize > 8:
        raise InputError(f"{target}: cannot write voxels of type {array.dtype}; use an integer or float32/float64 array")
    image = to_sitk(volume)
    text = description if description is not None else volume.metadata.get("description")
    if text:
        text = " ".join(text.split())  # one header line
        image.SetMetaData(DESCRIPTION_KEY, text[:NIFTI_DESCRIPTION_LENGTH] if suffix in (".nii", ".nii.gz") else text)
    return image


def _write_image(image: sitk.Image, target: Path, temporary: Path) -> None:
    import SimpleITK as sitk  # here, not at import: training from packed cubes runs without it
    try:
        sitk.WriteImage(image, str(temporary), useCompression=_suffix(target) in (".nii.gz", ".nrrd", ".mha"))
    except RuntimeError as error:  # disk full, quota, a folder gone read-only meanwhile
        raise InputError(f"{target}: cannot write ({_itk_reason(error)})") from None


def write_volume(volume: Volume, path: str | os.PathLike, description: str | None = None) -> Path:
    """Write atomically with the volume's exact geometry; ``description`` goes into the file header.

    The description (default: ``volume.metadata["description"]``) reads back as ``metadata["description"]``;
    NIfTI keeps its first 79 characters. MetaImage keeps geometry bit for bit, NRRD to 1e-12; NIfTI stores spacing
    and origin as float32 and the direction as a float32 quaternion/sform (about 1e-7).
    """
    target = Path(path)
    image = _image_for(volume, target, description)
    with atomic_output(target) as temporary:
        _write_image(image, target, temporary)
    return target


def _write_json(document: dict, target: Path, temporary: Path) -> None:
    try:
        temporary.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as error:  # disk full, quota, a folder gone read-only meanwhile
        raise InputError(f"{target}: cannot write ({error.strerror or error})") from None


def write_volumes(items: Sequence[tuple[Volume, str | os.PathLike]],
                  documents: Sequence[tuple[dict, str | os.PathLike]] = ()) -> list[Path]:
    """Write several outputs of one result as a unit: the volumes, and ``documents`` (JSON objects, e.g. their
    provenance sidecars). All go to hidden temporaries first, are flushed to disk, and are renamed into place only
    when every one is complete: a failure (disk full, a bad value) or a cancellation (Ctrl-C, SIGTERM) before that
    point leaves every old file (or nothing) and no temporary. Once the renames begin, `errors.commit_started()` is
    true and the CLI lets them finish instead of cancelling, so a set is never split and a completed run is never
    reported as cancelled. Only a SIGKILL or a power loss during the renames can split a set; the documents are
    renamed last and their old files removed first, so a volume may then lack its sidecar but never stands beside
    another run's. Returns the paths written, volumes first."""
    prepared = [(_image_for(volume, Path(path), None), Path(path)) for volume, path in items]
    texts = [(document, Path(path)) for document, path in documents]
    written: list[tuple[Path, Path]] = []  # (temporary, target)
    done = False
    try:
        for image, target in prepared:
            written.append((temporary_beside(target), target))
            _write_image(image, target, written[-1][0])
        for document, target in texts:
            written.append((temporary_beside(target), target))
            _write_json(document, target, written[-1][0])
        for temporary, _ in written:
            seal(temporary)
        begin_commit()
        for _, target in texts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        for temporary, target in written:
            os.replace(temporary, target)
        done = True
    finally:
        if not done:
            for target in [target for _, target in prepared] + [target for _, target in texts]:
                remove_own_parts(target)
    return [target for _, target in written]


@contextlib.contextmanager
def itk_single_threaded() -> Iterator[None]:
    """ITK on one thread meanwhile (restored after): multi-threaded sums make reruns of a registration differ."""
    import SimpleITK as sitk
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
