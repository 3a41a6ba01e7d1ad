"""xdiffusion.io: every reader, exact geometry round trips, atomic writes, clear errors, synthetic-output marking.

Round-trip precision, measured and enforced here:
- MetaImage (.mha) stores ``%.17g`` decimals: spacing, origin and direction come back bit for bit.
- NRRD stores ``space directions`` = direction x spacing; dividing back costs a few ulps (seen: 4e-16), so 1e-12.
- NIfTI stores pixdim, qoffset and srow as float32: spacing and origin come back as exactly their float32 rounding,
  and the direction (float32 quaternion / sform) within 1e-6 (worst seen over 400 random oblique grids: 8.2e-8).
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from xdiffusion.errors import InputError
from xdiffusion.io import (
    GENERATED_DESCRIPTION,
    WRITABLE_SUFFIXES,
    Geometry,
    Volume,
    atomic_output,
    read_image,
    read_volume,
    to_sitk,
    write_volume,
)

SHAPE = (9, 11, 7)
SPACING = (0.7, 1.3, 2.9)
ORIGIN = (-12.3, 45.6, 7.89)
NIFTI_DIRECTION_ATOL = 1e-6
NRRD_ATOL = 1e-12

# Columns are the LPS unit vectors each array axis points to: L = +x, R = -x, P = +y, A = -y, S = +z, I = -z.
_AXIS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
DIRECTIONS = {code: np.array([_AXIS[c] for c in code], dtype=np.float64).T for code in ("LAS", "LIA", "LSA", "RAS")}
DIRECTIONS["oblique"] = Rotation.from_euler("xyz", [12.0, -27.0, 38.0], degrees=True).as_matrix()


def make_volume(direction: np.ndarray, dtype=np.float32, seed: int = 0) -> Volume:
    """A small random volume on an anisotropic grid; values span the dtype's sign range."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -3000), min(info.max, 3000), SHAPE, endpoint=True).astype(dtype)
    else:
        array = (rng.standard_normal(SHAPE) * 1e3).astype(dtype)
    return Volume(array, Geometry(SHAPE, SPACING, ORIGIN, direction))


def assert_same_geometry(read: Geometry, written: Geometry, suffix: str) -> None:
    """Geometry equality at the precision each format can store (see the module docstring)."""
    assert read.shape == written.shape
    if suffix in (".nii", ".nii.gz"):
        np.testing.assert_array_equal(read.spacing, written.spacing.astype(np.float32))
        np.testing.assert_array_equal(read.origin, written.origin.astype(np.float32))
        np.testing.assert_allclose(read.direction, written.direction, rtol=0, atol=NIFTI_DIRECTION_ATOL)
    elif suffix == ".nrrd":
        np.testing.assert_allclose(read.spacing, written.spacing, rtol=NRRD_ATOL)
        np.testing.assert_array_equal(read.origin, written.origin)
        np.testing.assert_allclose(read.direction, written.direction, rtol=0, atol=NRRD_ATOL)
    else:
        np.testing.assert_array_equal(read.spacing, written.spacing)
        np.testing.assert_array_equal(read.origin, written.origin)
        np.testing.assert_array_equal(read.direction, written.direction)


def assert_clear_error(error: pytest.ExceptionInfo, path: Path) -> None:
    """One line that names the file."""
    message = str(error.value)
    assert "\n" not in message, message
    assert path.name in message, message


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", WRITABLE_SUFFIXES)
@pytest.mark.parametrize("orientation", DIRECTIONS)
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, suffix, orientation, dtype):
    """Write then read: identical voxels and dtype, geometry at the format's precision."""
    volume = make_volume(DIRECTIONS[orientation], dtype)
    read = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    assert read.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read.geometry, volume.geometry, suffix)


@settings(max_examples=25, deadline=None)
@given(  # no subnormals anywhere: MHA writes 1e-311 back as 0, which is not geometry
    quaternion=st.lists(st.floats(-1, 1, width=32, allow_subnormal=False), min_size=4, max_size=4).filter(
        lambda q: np.linalg.norm(q) > 0.1
    ),
    permutation=st.permutations(range(3)),
    flips=st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3),
    spacing=st.lists(st.floats(0.05, 8.0), min_size=3, max_size=3),
    origin=st.lists(st.floats(-500.0, 500.0, allow_subnormal=False), min_size=3, max_size=3),
    suffix=st.sampled_from(WRITABLE_SUFFIXES),
)
def test_round_trip_any_grid(tmp_path_factory, quaternion, permutation, flips, spacing, origin, suffix):
    """Any rotation, axis permutation and flips, anisotropic spacing and origin survive a write/read."""
    direction = Rotation.from_quat(quaternion).as_matrix()[:, list(permutation)] * np.asarray(flips)
    array = np.arange(3 * 4 * 2, dtype=np.int16).reshape(3, 4, 2)
    volume = Volume(array, Geometry(array.shape, spacing, origin, direction))
    read = read_volume(write_volume(volume, tmp_path_factory.mktemp("grid") / f"v{suffix}"))
    np.testing.assert_array_equal(read.array, array)
    assert_same_geometry(read.geometry, volume.geometry, suffix)


@pytest.mark.parametrize("suffix", WRITABLE_SUFFIXES)
def test_description_marks_output_as_synthetic(tmp_path, suffix):
    """GENERATED_DESCRIPTION reads back as metadata["description"] and carries over to a rewrite."""
    path = write_volume(make_volume(DIRECTIONS["LAS"]), tmp_path / f"v{suffix}", description=GENERATED_DESCRIPTION)
    read = read_volume(path)
    assert read.metadata["description"] == GENERATED_DESCRIPTION
    again = read_volume(write_volume(read, tmp_path / f"again{suffix}"))
    assert again.metadata["description"] == GENERATED_DESCRIPTION


def test_description_is_in_the_native_header_fields(tmp_path):
    """Other tools see it: NIfTI ``descrip`` (79 characters at most), NRRD/MHA as a one-line header key."""
    volume = make_volume(DIRECTIONS["LAS"])
    long_text = "synthetic\nnot for diagnosis " + "x" * 100
    nifti = write_volume(volume, tmp_path / "v.nii", description=long_text)
    descrip = nibabel.load(str(nifti)).header["descrip"].item().decode()
    assert descrip == "synthetic not for diagnosis " + "x" * 51
    assert read_volume(nifti).metadata["description"] == descrip
    for suffix in (".nrrd", ".mha"):
        path = write_volume(volume, tmp_path / f"v{suffix}", description=long_text)
        assert read_volume(path).metadata["description"] == " ".join(long_text.split())
    assert "description" not in read_volume(write_volume(volume, tmp_path / "plain.nrrd")).metadata


def test_slice_round_trip(tmp_path):
    """A (n0, n1, 1) slice stays a slice with its full 3D geometry; read_volume refuses it."""
    volume = make_volume(DIRECTIONS["oblique"])
    slice_ = Volume(volume.array[:, :, 3:4].copy(), Geometry((9, 11, 1), SPACING, ORIGIN, DIRECTIONS["oblique"]))
    for suffix in WRITABLE_SUFFIXES:
        path = write_volume(slice_, tmp_path / f"s{suffix}")
        read = read_image(path)
        assert read.is_slice
        np.testing.assert_array_equal(read.array, slice_.array)
        assert_same_geometry(read.geometry, slice_.geometry, suffix)
        with pytest.raises(InputError, match="single 2D slice"):
            read_volume(path)


def test_two_dimensional_files_read_as_slices(tmp_path):
    """A true 2D NRRD and a 2D NIfTI become (n0, n1, 1) volumes."""
    array = np.arange(9 * 11, dtype=np.float32).reshape(9, 11)
    image = sitk.GetImageFromArray(array.T)
    image.SetSpacing((0.5, 0.8))
    image.SetOrigin((3.0, -4.0))
    image.SetDirection((0.0, 1.0, 1.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "flat.nrrd"))
    read = read_image(tmp_path / "flat.nrrd")
    np.testing.assert_array_equal(read.array[:, :, 0], array)
    np.testing.assert_array_equal(read.geometry.spacing, [0.5, 0.8, 0.5])
    np.testing.assert_array_equal(read.geometry.origin, [3.0, -4.0, 0.0])
    np.testing.assert_array_equal(read.geometry.direction, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])

    nibabel.save(nibabel.Nifti1Image(array, np.diag([0.5, 0.8, 2.0, 1.0])), str(tmp_path / "flat.nii.gz"))
    read = read_image(tmp_path / "flat.nii.gz")
    assert read.geometry.shape == (9, 11, 1)
    np.testing.assert_array_equal(read.array[:, :, 0], array)
    np.testing.assert_allclose(read.geometry.spacing[:2], [0.5, 0.8])


# --- files from other tools ----------------------------------------------------------------------------------------


def test_nibabel_ras_affine_reads_as_lps(tmp_path):
    """A RAS affine (nibabel) becomes LPS geometry: x and y rows change sign, voxels keep their index order."""
    affine = np.array([[0.0, 0.0, -2.5, 30.0], [1.2, 0.0, 0.0, -40.0], [0.0, -0.8, 0.0, 12.0], [0, 0, 0, 1]])
    array = make_volume(np.eye(3), np.int16).array
    image = nibabel.Nifti1Image(array, affine)
    image.header["descrip"] = b"from nibabel"
    nibabel.save(image, str(tmp_path / "ras.nii.gz"))
    read = read_volume(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(read.array, array)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(read.geometry.index_to_physical_matrix, ras_to_lps @ affine[:3, :3], atol=1e-6)
    np.testing.assert_allclose(read.geometry.origin, [-30.0, 40.0, 12.0], atol=1e-6)
    np.testing.assert_allclose(read.geometry.spacing, [1.2, 0.8, 2.5], atol=1e-6)
    assert read.metadata["description"] == "from nibabel"


def test_trailing_length_one_axis_is_squeezed_real_4d_refused(tmp_path):
    """(x, y, z, 1) reads as 3D; (x, y, z, 3) is refused naming the time points."""
    array = make_volume(np.eye(3)).array
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(array[..., None], affine), str(tmp_path / "one.nii.gz"))
    read = read_volume(tmp_path / "one.nii.gz")
    np.testing.assert_array_equal(read.array, array)
    np.testing.assert_array_equal(read.geometry.spacing, [2.0, 3.0, 4.0])

    nibabel.save(nibabel.Nifti1Image(np.stack([array] * 3, axis=-1), affine), str(tmp_path / "three.nii.gz"))
    with pytest.raises(InputError, match="3 time points") as error:
        read_image(tmp_path / "three.nii.gz")
    assert_clear_error(error, tmp_path / "three.nii.gz")



@pytest.mark.parametrize("dtype", ["u1", "i1", "<i2", ">i2", "<u2", "i4", ">u4", "i8", "<f4", ">f4", "f8"])
@pytest.mark.parametrize("slope_intercept", [(np.nan, np.nan), (1.0, 0.0), (2.5, -3.0), (1.0, 7.0), (0.0, 4.0), (np.nan, 2.0), (0.1, 0.0),
                                             (-1.0, 0.0), (np.inf, 1.0)])
def test_nifti_voxels_are_what_simpleitk_reads(tmp_path, dtype, slope_intercept):
    """`nifti.py` reads the voxels itself (ITK's reader hides damage): they must be ITK's, type and value, whatever
    the stored type, byte order and scaling, compressed or not."""
    rng = np.random.default_rng(3)
    stored = np.dtype(dtype)
    info = np.iinfo(stored) if stored.kind in "iu" else None
    array = (rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), (5, 6, 4), endpoint=True) if info else
             rng.normal(0.0, 500.0, (5, 6, 4))).astype(stored)
    header = nibabel.Nifti1Header(endianness=stored.byteorder if stored.byteorder in "<>" else "=")
    header.set_data_dtype(stored)
    header.set_data_shape(array.shape)
    header.set_sform(np.diag([0.9, 1.1, 2.0, 1.0]), code=1)
    header.set_data_offset(352)
    header["scl_slope"], header["scl_inter"] = slope_intercept
    data = header.binaryblock + bytes(4) + array.astype(header.get_data_dtype()).tobytes(order="F")  # vox_offset 352
    for suffix in (".nii.gz", ".nii"):
        path = tmp_path / f"stored{suffix}"
        path.write_bytes(gzip.compress(data) if suffix == ".nii.gz" else data)
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
        read = read_image(path).array
        assert read.dtype == expected.dtype and read.dtype.isnative, (suffix, read.dtype, expected.dtype)
        np.testing.assert_array_equal(read, expected)


def test_one_reconstruct_reads_its_nifti_input_once(tmp_path, monkeypatch):
    """The input's voxels are decompressed once: one Python-level open of the file (ITK reads its header only), no
    `SimpleITK.ReadImage` of it."""
    import builtins
    import io as stdlib_io

    from xdiffusion.cli import main

    source = write_volume(make_volume(np.eye(3), np.int16), tmp_path / "input.nii.gz")
    opened, read_by_itk = [], []
    real_open, real_read_image = builtins.open, sitk.ReadImage

    def counting_open(file, *args, **kwargs):
        if str(file) == str(source):
            opened.append(args[0] if args else kwargs.get("mode", "r"))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(stdlib_io, "open", counting_open)
    monkeypatch.setattr(sitk, "ReadImage", lambda name, *args, **kwargs: read_by_itk.append(name) or real_read_image(name, *args, **kwargs))
    assert main(["reconstruct", str(source), "-o", str(tmp_path / "out.nii.gz"), "--method", "extrude", "--quiet"]) == 0
    assert opened == ["rb"] and str(source) not in read_by_itk

# --- DICOM ----------------------------------------------------------------------------------------------------------


def write_dicom_series(folder: Path, volume: Volume, series_uid: str) -> None:
    """One MR slice file per k, with the patient-position and orientation tags a scanner would write."""
    folder.mkdir(exist_ok=True)
    image = to_sitk(volume)
    orientation = "\\".join(f"{v:.10f}" for v in volume.geometry.direction[:, :2].T.ravel())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.array.shape[2]):
        slice_ = image[:, :, k]
        position = "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",  # SOPInstanceUID
            "0008|0060": "MR",
            "0010|0020": "XDIFFUSION-TEST",
            "0018|0050": f"{volume.geometry.spacing[2]:.10f}",  # SliceThickness
            "0020|000d": f"{series_uid}.0",  # StudyInstanceUID
            "0020|000e": series_uid,  # SeriesInstanceUID
            "0020|0013": str(k + 1),  # InstanceNumber
            "0020|0032": position,  # ImagePositionPatient
            "0020|0037": orientation,  # ImageOrientationPatient
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder(tmp_path):
    """A series folder reads with exact voxels and its oblique geometry; one of its files reads as a slice."""
    volume = make_volume(DIRECTIONS["oblique"], np.int16)
    write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1125.1")
    read = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(read.array, volume.array)
    assert read.geometry.same_as(volume.geometry, atol=1e-6)

    one = read_image(tmp_path / "series" / "1_003.dcm")
    assert one.geometry.shape == (9, 11, 1)
    np.testing.assert_array_equal(one.array[:, :, 0], volume.array[:, :, 3])
    np.testing.assert_allclose(one.geometry.origin, volume.geometry.index_to_physical([0, 0, 3]), atol=1e-6)
    np.testing.assert_allclose(one.geometry.direction[:, :2], volume.geometry.direction[:, :2], atol=1e-6)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    volume = make_volume(DIRECTIONS["LAS"], np.int16)
    write_dicom_series(tmp_path / "mixed", volume, "1.2.826.0.1.3680043.2.1125.1")
    write_dicom_series(tmp_path / "mixed", volume, "1.2.826.0.1.3680043.2.1125.2")
    with pytest.raises(InputError, match="2 DICOM series") as error:
        read_image(tmp_path / "mixed")
    assert_clear_error(error, tmp_path / "mixed")


@pytest.fixture(scope="session")
def mr_small() -> Path:
    """pydicom's MR_small.dcm (a real 64x64 MR slice), from the pydicom 3.0.2 wheel, cached across runs."""
    root = Path(os.environ["XDIFFUSION_CACHE"]) / "test-files" if "XDIFFUSION_CACHE" in os.environ else None
    cache = root or Path.home() / ".cache" / "xdiffusion" / "test-files"
    target = cache / "MR_small.dcm"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "pydicom==3.0.2", "-d", download]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            pytest.skip(f"cannot download pydicom==3.0.2 for MR_small.dcm (no network to PyPI?): {error}")
        with zipfile.ZipFile(next(Path(download).glob("pydicom-3.0.2-*.whl"))) as wheel:
            data = wheel.read("pydicom/data/test_files/MR_small.dcm")
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as temporary:
        temporary.write_bytes(data)
    return target


def test_real_mr_dicom_slice(mr_small):
    """A scanner-written DICOM slice: geometry from its tags, stored int16 values."""
    read = read_image(mr_small)
    assert read.is_slice and read.geometry.shape == (64, 64, 1)
    assert read.array.dtype == np.int16
    np.testing.assert_allclose(read.geometry.spacing[:2], [0.3125, 0.3125])
    np.testing.assert_allclose(read.geometry.origin, [-83.9063, -91.2, 6.6406])
    np.testing.assert_allclose(read.geometry.direction, np.eye(3))
    assert (read.array.min(), read.array.max()) == (127, 2145)


# --- unusable input ----------------------------------------------------------------------------------------------


def _write_bad(kind: str, folder: Path) -> Path:
    """Create one unusable input of the given kind and return its path."""
    rng = np.random.default_rng(1)
    affine = np.eye(4)
    good = make_volume(np.eye(3), np.int16)
    if kind == "missing":
        return folder / "missing.nii.gz"
    if kind == "empty file":
        path = folder / "empty.nii.gz"
        path.touch()
        return path
    if kind.startswith("random bytes"):
        path = folder / f"random{kind.split()[-1]}"
        path.write_bytes(rng.bytes(4096))
        return path
    if kind in ("truncated .nii.gz", "truncated .nii"):
        path = write_volume(good, folder / f"whole{kind.split()[-1]}")
        data = path.read_bytes()
        cut = folder / f"cut{kind.split()[-1]}"
        cut.write_bytes(data[: len(data) - 100])
        return cut
    if kind.startswith("NaN"):
        suffix = kind.split()[-1]
        return write_volume(good.with_array(np.full(SHAPE, np.nan, np.float32)), folder / f"nan{suffix}")
    if kind == "1D":
        path = folder / "line.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.ones(9, np.float32), affine), str(path))
        return path
    if kind == "5D":
        path = folder / "five.mha"
        sitk.WriteImage(sitk.Image([3, 4, 5, 2, 2], sitk.sitkFloat32), str(path))
        return path
    if kind == "vector":
        path = folder / "vector.nrrd"
        sitk.WriteImage(sitk.Image([3, 4, 5], sitk.sitkVectorFloat32, 3), str(path))
        return path
    if kind == "unsupported suffix":
        path = folder / "volume.png"
        path.write_bytes(b"\x89PNG")
        return path
    if kind == "empty folder":
        path = folder / "nothing"
        path.mkdir()
        return path
    if kind == "terabyte .nrrd":
        path = folder / "huge.nrrd"
        path.write_text(
            "NRRD0004\ntype: float\ndimension: 3\n"
            "sizes: 100000 100000 100000\nencoding: raw\nendian: little\n\n"
        )
        return path
    if kind == "terabyte .mha":
        path = folder / "huge.mha"
        path.write_text(
            "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
            "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
        )
        return path
    if kind == "terabyte .nii":
        header = nibabel.Nifti1Header()
        header.set_data_dtype(np.float32)
        header.set_data_shape((30000, 30000, 30000))
        path = folder / "huge.nii"
        path.write_bytes(header.binaryblock + bytes(4 + 64))
        return path
    raise AssertionError(kind)


BAD_INPUTS = {
    "missing": "no such file",
    "empty file": "cannot read",
    "random bytes .nii.gz": "cannot read",
    "random bytes .nrrd": "cannot read",
    "random bytes .mha": "cannot read",
    "random bytes .dcm": "cannot read",
    "truncated .nii.gz": "truncated",
    "truncated .nii": "truncated",
    "NaN .nii.gz": "no finite values",
    "NaN .nrrd": "no finite values",
    "NaN .mha": "no finite values",
    "1D": "1D image",
    "5D": "5D",
    "vector": "3 components",
    "unsupported suffix": "unsupported file type",
    "empty folder": "no DICOM series",
    "terabyte .nrrd": "too large",
    "terabyte .mha": "too large",
    "terabyte .nii": "too large",
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_unusable_input_gives_one_clear_error(tmp_path, kind):
    """One InputError line naming the file and the reason; oversized headers are refused before allocation."""
    path = _write_bad(kind, tmp_path)
    with pytest.raises(InputError, match=BAD_INPUTS[kind]) as error:
        read_image(path)
    assert_clear_error(error, path)


# --- writing -------------------------------------------------------------------------------------------------------


def test_failure_inside_atomic_output_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.nrrd"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half-written")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nrrd"]


def test_written_file_has_normal_permissions(tmp_path):
    """The temporary file is private (mkstemp); the output must not be."""
    path = write_volume(make_volume(np.eye(3)), tmp_path / "v.nii.gz")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_refuses_bad_targets(tmp_path):
    volume = make_volume(np.eye(3))
    with pytest.raises(InputError, match="unsupported output type"):
        write_volume(volume, tmp_path / "v.mhd")
    with pytest.raises(InputError, match="does not exist"):
        write_volume(volume, tmp_path / "absent" / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_sigkill_while_writing_leaves_old_file(tmp_path):
    """Killing the writer mid-write leaves the previous file byte for byte; only a hidden temporary may remain."""
    target = tmp_path / "big.nii.gz"
    write_volume(make_volume(np.eye(3)), target)
    old = target.read_bytes()
    child = textwrap.dedent(
        f"""
        import numpy as np
        from xdiffusion.io import Geometry, Volume, write_volume
        array = np.random.default_rng(0).random((192, 192, 192), dtype=np.float32)  # incompressible: a slow write
        write_volume(Volume(array, Geometry(array.shape, (1, 1, 1), (0, 0, 0), np.eye(3))), {str(target)!r})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in tmp_path.glob(".big.nii.gz.*.part.nii.gz")):  # data is flowing
            assert process.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)  # about a second before the write would end
        assert process.wait() == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert target.read_bytes() == old
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.nii.gz.")  # the partial write, hidden


def test_a_read_grid_has_no_negative_zeros(tmp_path):
    """ITK's header-only read gives -0.0 where its full read gave 0.0: equal numbers, but a different JSON record
    and fingerprint of the same grid (the held-out benchmark's run reuse keys on it)."""
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    path = tmp_path / "flip.nii.gz"
    sitk.WriteImage(image, str(path))
    geometry = read_volume(path).geometry
    assert not np.signbit(geometry.origin).any() and not np.signbit(geometry.direction[geometry.direction == 0]).any()
