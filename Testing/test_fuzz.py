"""Fuzzing the command line and the library entry points: every bad input is refused cleanly.

A refusal is: exit code 2, exactly one stderr line beginning `error:`, no traceback, and nothing new on disk (no
output, no temporary). Most cases call `xdiffusion.cli.main` in this process; a handful run `python -m xdiffusion.cli`
as a real process to prove the exit code and the absence of a traceback. Input-side cases use `--method extrude`
(no model), model-side cases a tiny saved model.

Example counts are bounded so CI stays fast (XDIFFUSION_FUZZ_EXAMPLES, default 25 per property); a long run:

    XDIFFUSION_FUZZ_EXAMPLES=2000 pytest Testing/test_fuzz.py

docs/reliability.md lists the cases, the counts and the results.
"""

from __future__ import annotations

import gzip
import json
import resource
import struct
import tempfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from fuzz_helpers import EXAMPLES, assert_refused, listing, run_main, save_tiny_model, start_process
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_io import make_volume, write_dicom_series

from xdiffusion.errors import InputError
from xdiffusion.io import MAX_VOXELS, VOLUME_SUFFIXES, WRITABLE_SUFFIXES, Geometry, Volume, read_image, write_volume
from xdiffusion.model.checkpoint import ENCODER_WEIGHTS, UNET_WEIGHTS

FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
MAGICS = {
    "nrrd": b"NRRD0004\n",
    "mha": b"ObjectType = Image\nNDims = 3\n",
    "gzip": b"\x1f\x8b\x08\x00",
    "nifti": struct.pack("<i", 348),
    "dicom": b"\x00" * 128 + b"DICM",
}
INT_TYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def workdir():
    """A fresh folder per hypothesis example (pytest's tmp_path is shared by all examples of a test)."""
    return tempfile.TemporaryDirectory(prefix="xdiffusion-fuzz-")


def extrude(source: Path, output: Path, *extra) -> list[str]:
    return ["reconstruct", source, "-o", output, "--method", "extrude", *extra]


def good_volume(shape=(6, 7, 8), dtype=np.float32, seed=0) -> Volume:
    array = (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)
    return Volume(array, Geometry(shape, (1.0, 1.5, 2.0), (3.0, -4.0, 5.0), np.eye(3)))


def write_nifti(path: Path, array: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4), dtype=array.dtype), str(path))
    return path


# --- bytes that are not images -------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(VOLUME_SUFFIXES))
def test_random_bytes_with_an_image_extension(data, suffix):
    with workdir() as folder:
        source = Path(folder) / f"input{suffix}"
        source.write_bytes(data)
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))


@FUZZ
@given(magic=st.sampled_from(sorted(MAGICS)), tail=st.binary(max_size=2000), suffix=st.sampled_from(VOLUME_SUFFIXES))
def test_right_or_wrong_magic_then_garbage(magic, tail, suffix):
    """A real format's magic number (matching the extension or not) followed by random bytes."""
    with workdir() as folder:
        source = Path(folder) / f"input{suffix}"
        source.write_bytes(MAGICS[magic] + tail)
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))


@FUZZ
@given(suffix=st.sampled_from(WRITABLE_SUFFIXES), keep=st.floats(0.0, 1.0, exclude_max=True),
       dtype=st.sampled_from([np.int16, np.float32, np.uint8]))
def test_truncated_files(suffix, keep, dtype):
    """A valid file cut anywhere: header, data or (compressed formats) the checksum trailer."""
    with workdir() as folder:
        whole = write_volume(good_volume(dtype=dtype), Path(folder) / f"whole{suffix}")
        data = whole.read_bytes()
        source = Path(folder) / f"cut{suffix}"
        source.write_bytes(data[:int(keep * len(data))])
        whole.unlink()
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))


# --- arrays of the wrong shape or content ------------------------------------------------------------------------


@st.composite
def unusable_shapes(draw):
    kind = draw(st.sampled_from(["1D", "4D", "5D", "zero axis"]))
    side = st.integers(2, 6)
    if kind == "1D":
        return (draw(st.integers(1, 50)),)
    if kind == "4D":
        return (draw(side), draw(side), draw(side), draw(st.integers(2, 4)))
    if kind == "5D":  # trailing axes of length 1 would make it a valid 3D image
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=5, max_size=5)))
        assume(shape[3] * shape[4] > 1)
        return shape
    shape = [draw(side) for _ in range(draw(st.integers(2, 3)))]
    shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


@FUZZ
@given(shape=unusable_shapes(), writer=st.sampled_from(["nibabel .nii.gz", "sitk .mha", "sitk .nrrd"]))
def test_arrays_of_unusable_dimension(shape, writer):
    """1D, 4D with several time points, 5D, and any axis of length 0."""
    with workdir() as folder:
        array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 1.0
        if writer.startswith("nibabel") or 0 in shape or len(shape) == 1:
            source = write_nifti(Path(folder) / "input.nii.gz", array)
        else:
            source = Path(folder) / f"input{writer.split()[-1]}"
            sitk.WriteImage(sitk.GetImageFromArray(array.T.copy(), isVector=False), str(source))
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))


@FUZZ
@given(suffix=st.sampled_from(WRITABLE_SUFFIXES), dtype=st.sampled_from([np.float32, np.float64]),
       spots=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 7),
                                st.sampled_from([np.nan, np.inf, -np.inf])), min_size=1, max_size=6))
def test_any_non_finite_voxel_is_refused_in_every_format(suffix, dtype, spots):
    """One NaN or Inf anywhere (not only in the chosen slice) is refused the same way in every format."""
    with workdir() as folder:
        volume = good_volume(dtype=dtype)
        for i, j, k, value in spots:
            volume.array[i, j, k] = value
        source = write_volume(volume, Path(folder) / f"input{suffix}")
        line = assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))
        assert "NaN or infinite" in line and source.name in line


@FUZZ
@given(dtype=st.sampled_from(INT_TYPES + [np.float32, np.float64]), which=st.sampled_from(["min", "max", "zero", "one"]),
       suffix=st.sampled_from(WRITABLE_SUFFIXES))
def test_constant_volumes(dtype, which, suffix):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(np.float32)
    value = {"min": info.min, "max": info.max, "zero": 0, "one": 1}[which]
    with workdir() as folder:
        source = write_volume(good_volume().with_array(np.full((6, 7, 8), value, dtype=dtype)), Path(folder) / f"c{suffix}")
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder), fragments=["constant"])


@FUZZ
@given(dtype=st.sampled_from(INT_TYPES + [np.float32, np.float64]), seed=st.integers(0, 2**32 - 1),
       suffix=st.sampled_from(WRITABLE_SUFFIXES), plane=st.sampled_from(["axial", "coronal", "sagittal"]),
       huge=st.booleans())
def test_extreme_values_of_every_type_are_kept_or_refused(dtype, seed, suffix, plane, huge):
    """Values over a type's whole range (uint64 near 2**64, int64 extremes, float64 beyond float32): either a clean
    refusal or an output of the same type whose input slice is bit-exact and whose other voxels stay in range."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, (5, 6, 7), dtype=dtype, endpoint=True)
    else:
        scale = 1e300 if (huge and dtype == np.float64) else float(np.finfo(np.float32).max) / 2
        array = (rng.uniform(-1, 1, (5, 6, 7)) * scale).astype(dtype)
    with workdir() as folder:
        source = write_volume(good_volume((5, 6, 7)).with_array(array), Path(folder) / f"x{suffix}")
        output = Path(folder) / "out.nrrd"
        code, _, err = run_main(extrude(source, output, "--plane", plane, "--quiet"))
        if code == 2:
            assert huge and dtype == np.float64 and err.startswith("error:") and len(err.splitlines()) == 1, err
            assert not output.exists()
            return
        assert code == 0 and err == "", err
        written = read_image(output).array
        assert written.dtype == array.dtype and np.isfinite(written.astype(np.float64)).all()
        axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
        middle = array.shape[axis] // 2
        np.testing.assert_array_equal(np.take(written, middle, axis), np.take(array, middle, axis))


# --- headers that would need terabytes ------------------------------------------------------------------------------


@FUZZ
@given(sizes=st.lists(st.integers(1, 2**31 - 1), min_size=3, max_size=3).filter(lambda s: np.prod(s, dtype=float) > MAX_VOXELS),
       kind=st.sampled_from(["nrrd", "nhdr", "mha", "mhd", "nii"]))
def test_headers_that_would_need_terabytes_are_refused_before_allocating(sizes, kind):
    with workdir() as folder:
        source = Path(folder) / f"huge.{kind}"
        if kind in ("nrrd", "nhdr"):
            data = "" if kind == "nrrd" else "data file: huge.raw\n"
            source.write_text(f"NRRD0004\ntype: float\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\n"
                              f"encoding: raw\nendian: little\n{data}\n")
        elif kind in ("mha", "mhd"):
            data = "LOCAL" if kind == "mha" else "huge.raw"
            source.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, sizes))}\n"
                              f"ElementType = MET_FLOAT\nElementDataFile = {data}\n")
        else:
            assume(max(sizes) <= 32767)  # NIfTI-1 dimensions are int16
            header = nibabel.Nifti1Header()
            header.set_data_dtype(np.float32)
            header.set_data_shape(sizes)
            source.write_bytes(header.binaryblock + bytes(4 + 64))
        if kind in ("nhdr", "mhd"):
            (Path(folder) / "huge.raw").write_bytes(bytes(64))
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert_refused(extrude(source, Path(folder) / "out.nii.gz"), Path(folder))
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - grown < 300 * 1024  # KiB: nothing was allocated


# --- arguments -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory) -> Path:
    return write_volume(good_volume((6, 7, 8), np.int16), tmp_path_factory.mktemp("fuzz-input") / "input.nii.gz")


@FUZZ
@given(plane=st.sampled_from(["axial", "coronal", "sagittal"]),
       indices=st.lists(st.integers(-2**40, 2**40), min_size=1, max_size=12))
def test_slice_indices_out_of_range_repeated_or_more_than_the_axis(volume_file, plane, indices):
    length = {"axial": 8, "coronal": 7, "sagittal": 6}[plane]
    assume(any(not 0 <= i < length for i in indices) or len(set(indices)) < len(indices))
    with workdir() as folder:
        assert_refused(extrude(volume_file, Path(folder) / "out.nii.gz", "--plane", plane, "--slice-index", *indices),
                       Path(folder), volume_file.parent)


@FUZZ
@given(count=st.integers(9, 40))
def test_more_slices_than_the_axis_has(volume_file, count):
    """K larger than the axis: some index must repeat or fall outside."""
    with workdir() as folder:
        assert_refused(extrude(volume_file, Path(folder) / "out.nii.gz", "--slice-index", *range(count)), Path(folder))


@FUZZ
@given(plane=st.text(min_size=1, max_size=12).filter(lambda t: t not in ("axial", "coronal", "sagittal") and not t.startswith("-")))
def test_unknown_planes(volume_file, plane):
    with workdir() as folder:
        assert_refused(extrude(volume_file, Path(folder) / "out.nii.gz", "--plane", plane), Path(folder), fragments=["--plane"])


OPTION_VALUES = {
    "--plane": st.sampled_from(["axial", "coronal", "sagittal", "oblique", ""]),
    "--slice-index": st.lists(st.integers(-3, 10), min_size=0, max_size=3),
    "--slice-position": st.sampled_from(["0.5", "-1", "2", "nan", "inf", "x"]),
    "--views": st.sampled_from(["1", "0", "-1", "2.5", "many"]),
    "--steps": st.sampled_from(["1", "0", "-4", ""]),
    "--guidance": st.sampled_from(["1", "7.5", "nan", "inf", "-inf", "1e400", "g"]),
    "--seed": st.sampled_from(["0", "-1", str(2**63), str(2**70), "1.5", "s"]),
    "--method": st.sampled_from(["extrude", "interpolate", "nearest"]),
    "--modality": st.sampled_from(["t1", "flair", ""]),
    "--device": st.sampled_from(["cpu", "tpu"]),
    "--progress": st.sampled_from(["text", "json", "xml"]),
    "--segmentation-output": st.sampled_from(["seg.nii.gz", "seg.png"]),
    "--bogus": st.sampled_from(["1"]),
}


@st.composite
def argument_lists(draw):
    arguments = []
    for option in draw(st.lists(st.sampled_from(sorted(OPTION_VALUES)), max_size=5, unique=True)):
        value = draw(OPTION_VALUES[option])
        arguments += [option, *map(str, value)] if isinstance(value, list) else [option, value]
    if "--method" not in arguments:
        arguments += ["--method", "extrude"]  # no model on this side
    return arguments


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    """A true 2D file (no orientation of its own): it needs --plane, takes --slice-position, refuses --slice-index."""
    image = sitk.GetImageFromArray((np.random.default_rng(1).random((9, 7)) * 100).astype(np.float32))
    image.SetSpacing((0.8, 1.1))
    path = tmp_path_factory.mktemp("fuzz-slice") / "slice.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@FUZZ
@given(arguments=argument_lists(), two_d=st.booleans(), plane=st.sampled_from([None, "axial", "coronal", "sagittal"]))
def test_random_argument_combinations_succeed_or_are_refused_cleanly(volume_file, slice_file, arguments, two_d, plane):
    """A 3D volume or a 2D slice with any mix of options: never an internal error, but exit 0 with a readable
    output or a clean refusal."""
    with workdir() as folder:
        output = Path(folder) / "out.nii.gz"
        first = ["--plane", plane] if plane else []  # a later --plane among the arguments overrides it
        argv = ["reconstruct", slice_file if two_d else volume_file, "-o", output, "--quiet", *first, *arguments]
        before = listing(Path(folder))
        code, out, err = run_main(argv)
        assert code in (0, 2), (argv, code, err)
        if code == 2:
            assert len(err.splitlines()) == 1 and err.startswith("error:"), (argv, err)
            assert listing(Path(folder)) == before
        else:
            shape = read_image(output).geometry.shape
            assert shape[:2] == (7, 9) if two_d else shape == (6, 7, 8)
            event(f"exit 0 from a {'2D slice' if two_d else '3D volume'}")


# --- paths ---------------------------------------------------------------------------------------------------------


def _mixed_dicom(folder: Path) -> Path:
    volume = make_volume(np.eye(3), np.int16)
    write_dicom_series(folder / "mixed", volume, "1.2.826.0.1.3680043.2.1125.1")
    write_dicom_series(folder / "mixed", volume, "1.2.826.0.1.3680043.2.1125.2")
    return folder / "mixed"


PATH_CASES = {
    "input missing": (lambda d, v: (d / "absent.nii.gz", d / "out.nii.gz"), "no such file"),
    "input is an empty folder": (lambda d, v: ((d / "empty").mkdir() or d / "empty", d / "out.nii.gz"), "no DICOM"),
    "input folder of non-DICOM files": (lambda d, v: ((d / "junk").mkdir(), (d / "junk" / "a.txt").write_text("x"))
                                        and (d / "junk", d / "out.nii.gz"), "no DICOM"),
    "input unsupported suffix": (lambda d, v: ((d / "a.png").write_bytes(b"\x89PNG"), d / "a.png")[1:] + (d / "o.nii.gz",),
                                 "unsupported"),
    "mixed-series DICOM folder": (lambda d, v: (_mixed_dicom(d), d / "out.nii.gz"), "2 DICOM series"),
    "output folder missing": (lambda d, v: (v, d / "absent" / "out.nii.gz"), "does not exist"),
    "output is a folder": (lambda d, v: (v, (d / "o.nii.gz").mkdir() or d / "o.nii.gz"), "is a folder"),
    "output folder unwritable": (lambda d, v: (v, Path("/proc/out.nii.gz")), "cannot write"),
    "output unsupported suffix": (lambda d, v: (v, d / "out.png"), "use one of"),
    "output equals the input": (lambda d, v: (v, v), "refusing to overwrite the input"),
    "output is the input by another name": (lambda d, v: (v, v.parent / "." / ".." / v.parent.name / v.name), "refusing"),
    "output is a link to the input": (lambda d, v: ((d / "link.nii.gz").symlink_to(v), v)[1:] + (d / "link.nii.gz",),
                                      "refusing"),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_bad_paths(tmp_path, volume_file, case):
    make, fragment = PATH_CASES[case]
    source, output = make(tmp_path, volume_file)
    assert_refused(extrude(source, output), tmp_path, volume_file.parent, fragments=[fragment])


def test_unreadable_input_file(tmp_path, volume_file):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    source = tmp_path / "secret.nii.gz"
    source.write_bytes(volume_file.read_bytes())
    source.chmod(0)
    assert_refused(extrude(source, tmp_path / "out.nii.gz"), tmp_path)


# --- the library entry points ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(VOLUME_SUFFIXES))
def test_read_image_raises_only_input_error(data, suffix):
    with workdir() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        with pytest.raises(InputError) as error:
            read_image(path)
        assert "\n" not in str(error.value) and path.name in str(error.value)


@FUZZ
@given(dtype=st.sampled_from(INT_TYPES + [np.float16, np.float32, np.float64, np.bool_, np.complex64]),
       suffix=st.sampled_from(WRITABLE_SUFFIXES))
def test_write_volume_keeps_or_refuses_every_dtype(dtype, suffix):
    """Library callers may hand any numpy array: written exactly (float16 widened to float32) or an InputError."""
    array = (np.random.default_rng(0).random((3, 4, 5)) * 100).astype(dtype)
    with workdir() as folder:
        path = Path(folder) / f"v{suffix}"
        try:
            write_volume(good_volume((3, 4, 5)).with_array(array), path)
        except InputError as error:
            assert "\n" not in str(error) and not path.exists()
            assert sorted(p.name for p in Path(folder).iterdir()) == []
            return
        back = read_image(path).array
        np.testing.assert_array_equal(back, array.astype(back.dtype))
        assert back.dtype == (np.float32 if dtype == np.float16 else np.uint8 if dtype == np.bool_ else dtype)


# --- model side ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("fuzz-model") / "tiny")


def _copy_model(model_dir: Path, folder: Path) -> Path:
    import shutil

    return Path(shutil.copytree(model_dir, folder / "model"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


MODEL_CASES = {
    "tampered U-Net weights": (lambda m: _flip_byte(m / UNET_WEIGHTS), "SHA-256"),
    "tampered encoder weights": (lambda m: _flip_byte(m / ENCODER_WEIGHTS), "SHA-256"),
    "truncated weights": (lambda m: (m / UNET_WEIGHTS).write_bytes((m / UNET_WEIGHTS).read_bytes()[:500]), "SHA-256"),
    "missing weights": (lambda m: (m / UNET_WEIGHTS).unlink(), "missing"),
    "config does not match the weights": (
        lambda m: (m / "xdiffusion_config.json").write_text(
            json.dumps({**json.loads((m / "xdiffusion_config.json").read_text(encoding="utf-8")), "max_inputs": 3})), "does not match"),
    "card without hashes": (
        lambda m: (m / "model_card.json").write_text(
            json.dumps({k: v for k, v in json.loads((m / "model_card.json").read_text(encoding="utf-8")).items() if k != "sha256"})),
        "no weight hashes"),
    "card is not JSON": (lambda m: (m / "model_card.json").write_text("{not json"), "cannot read"),
    "pickle instead of safetensors": (
        lambda m: (m / UNET_WEIGHTS).write_bytes(b"\x80\x04\x95" + bytes(200)), "SHA-256"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_broken_model_folders(tmp_path, model_dir, volume_file, case):
    model = _copy_model(model_dir, tmp_path)
    damage, fragment = MODEL_CASES[case]
    damage(model)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(["reconstruct", volume_file, "-o", out / "o.nii.gz", "--model", model, "--quiet"], out,
                   fragments=[fragment])


@pytest.mark.parametrize("arguments, fragment", [
    (["--model", "{tmp}/absent"], "not an XDiffusion model folder"),
    (["--model", "{input}"], "not an XDiffusion model folder"),
    (["--modality", "flair"], "not known"),
    (["--guidance", "nan"], "finite"),
    (["--seed", str(2**70)], "2**63"),
    (["--steps", "0"], "at least 1"),
    (["--views", "0"], "at least 1"),
    (["--views", "100000"], "GB of memory"),  # the pipeline's memory estimate refuses before allocating
])
def test_bad_model_side_arguments(tmp_path, model_dir, volume_file, arguments, fragment):
    arguments = [a.replace("{tmp}", str(tmp_path)).replace("{input}", str(volume_file)) for a in arguments]
    if "--model" not in arguments:
        arguments += ["--model", str(model_dir)]
    assert_refused(["reconstruct", volume_file, "-o", tmp_path / "o.nii.gz", "--quiet", *arguments], tmp_path,
                   fragments=[fragment])


# --- real processes ------------------------------------------------------------------------------------------------


def test_real_processes_exit_2_with_one_line_and_no_traceback(tmp_path, model_dir, volume_file):
    """Exit codes and stderr as a shell or the Slicer module sees them."""
    random_file = tmp_path / "random.nii.gz"
    random_file.write_bytes(np.random.default_rng(3).bytes(2000))
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(volume_file.read_bytes()[:-40])
    huge = tmp_path / "huge.nrrd"
    huge.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\nendian: little\n\n")
    short_mha = tmp_path / "short.mha"  # ITK's MetaIO prints its own lines on the C stderr for this one
    short_mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 5 5 5\nElementType = MET_FLOAT\n"
                          b"ElementDataFile = LOCAL\n" + bytes(100))
    cut_nrrd = write_volume(good_volume(), tmp_path / "whole.nrrd")
    cut_nrrd.write_bytes(cut_nrrd.read_bytes()[:-2])  # only the gzip trailer is damaged
    tampered = _copy_model(model_dir, tmp_path)
    _flip_byte(tampered / UNET_WEIGHTS)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (extrude(random_file, out / "a.nii.gz"), "cannot read"),
        (extrude(truncated, out / "b.nii.gz"), "truncated"),
        (extrude(huge, out / "c.nii.gz"), "too large"),
        (extrude(short_mha, out / "f.nii.gz"), "cannot read"),
        (extrude(cut_nrrd, out / "g.nii.gz"), "truncated"),
        (extrude(volume_file, volume_file), "refusing to overwrite the input"),
        (extrude(volume_file, out / "d.nii.gz", "--slice-index", "99"), "outside"),
        (["reconstruct", volume_file, "-o", out / "e.nii.gz", "--model", tampered], "SHA-256"),
    ]
    before = listing(out, volume_file.parent)
    processes = [start_process(argv) for argv, _ in cases]  # side by side: each pays the interpreter start-up
    for process, (argv, fragment) in zip(processes, cases):
        _, err = process.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert process.returncode == 2, (argv, process.returncode, err)
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (argv, err)
        assert "Traceback" not in err
    assert listing(out, volume_file.parent) == before
