"""Input slices with (almost) nothing in them: an input with at least one informative slice reconstructs with every
method, the uninformative ones are left out of the atlas registration with a `warning:` line, and an input whose
slices are all uninformative is refused with one `error:` line (exit 2).

Before this suite, an empty slice next to a good one crashed the atlas registration (SimpleITK's moments
initialiser: "Total Mass of the image was zero") with exit 1, for `--method atlas` and for the default method,
whose SDEdit prior is the atlas guess.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import oriented_volume, smooth_head
from fuzz_helpers import listing, run_main, save_tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)

from xdiffusion.atlas import atlas_reconstruct
from xdiffusion.atlas_templates import load_template
from xdiffusion.io import read_volume, write_volume
from xdiffusion.progress import ProgressReporter
from xdiffusion.reconstruct import MIN_TISSUE_PIXELS, is_informative, select_slices

SIDE = 24
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the identity grid below
KINDS = ("brain", "empty", "constant", "tiny", "ring", "edge")
INFORMATIVE = {"brain", "ring", "edge"}
EXAMPLES = int(os.environ.get("XDIFFUSION_FUZZ_EXAMPLES", "40"))  # a long run: XDIFFUSION_FUZZ_EXAMPLES=500


def slice_of_kind(kind: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 2D slice of the given kind, shaped like ``image`` (the head's middle slice, itself the "brain" kind)."""
    a, b = image.shape
    if kind == "brain":
        return image
    if kind == "empty":
        return np.zeros_like(image)
    if kind == "constant":
        return np.full_like(image, float(rng.integers(1, 900)))
    if kind == "tiny":  # a speck: a few bright pixels somewhere
        speck = np.zeros_like(image)
        count = int(rng.integers(1, MIN_TISSUE_PIXELS))
        speck.flat[rng.choice(image.size, count, replace=False)] = rng.uniform(100, 900, count)
        return speck
    x, y = np.meshgrid(np.arange(a) - (a - 1) / 2, np.arange(b) - (b - 1) / 2, indexing="ij")
    radius = np.hypot(x / a, y / b)
    if kind == "ring":  # all skull: a bright annulus around nothing
        return np.where((radius > 0.36) & (radius < 0.46), 700.0, 0.0).astype(image.dtype)
    if kind == "edge":  # tissue only at the border of the field of view
        edge = np.zeros_like(image)
        edge[:3, :] = image.max() * 0.8
        return edge
    raise ValueError(kind)


def volume_with_slices(plane: str, indices: list[int], kinds: list[str], seed: int) -> object:
    """The smooth head with the chosen slices replaced by the given kinds (1 mm to 7 mm voxels: the atlas template
    covers a patch of brain or the whole head)."""
    rng = np.random.default_rng(seed)
    array = smooth_head((SIDE, SIDE + 2, SIDE - 2), seed=seed)
    axis = PLANE_AXIS[plane]
    view = np.moveaxis(array, axis, 0)
    middle = view[len(view) // 2].copy()
    for index, kind in zip(indices, kinds):
        view[index] = slice_of_kind(kind, middle, rng)
    spacing = tuple(float(s) for s in rng.choice([1.0, 4.0, 7.0], 3))
    return oriented_volume(array, np.eye(3), spacing=spacing, origin=(-40.0, 12.5, 7.0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model whose card, like the shipped one, samples from the atlas prior (strength 0.7)."""
    return save_tiny_model(tmp_path_factory.mktemp("uninformative") / "tiny",
                           default_sampling={"views": 1, "steps": 1, "strength": 0.7, "prior": "atlas"})


# --- the definition --------------------------------------------------------------------------------------------------


def test_informative_is_tissue_apart_from_the_background():
    rng = np.random.default_rng(0)
    head = smooth_head((SIDE, SIDE, SIDE))[:, :, SIDE // 2]
    assert is_informative(head)
    assert not is_informative(np.zeros((SIDE, SIDE)))
    assert not is_informative(np.full((SIDE, SIDE), 513.0))
    assert not is_informative(slice_of_kind("tiny", head, rng))
    assert is_informative(slice_of_kind("ring", head, rng)) and is_informative(slice_of_kind("edge", head, rng))
    dark = np.zeros((SIDE, SIDE))
    dark[3, 4] = -1000.0  # one dark outlier in a constant slice: the background is the most common value, not the minimum
    assert not is_informative(dark)
    assert is_informative(np.arange(12.0).reshape(3, 4))  # a small slice needs a quarter of its pixels, not 16


# --- the crash of the issue, reproduced ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["atlas", "xdiffusion"])
def test_an_empty_slice_beside_good_ones_reconstructs_with_a_warning(tmp_path, model_dir, method):
    """Slices at a quarter, half and three quarters, the first one empty (as at the top of a skull-stripped scan):
    exit 0, the good slices carried in, one warning for the slice left out. Before: exit 1 (ImageMomentsCalculator)."""
    array = (smooth_head((28, 30, 26)) * 3).astype(np.int16)
    array[:, :, 6] = 0
    source = write_volume(oriented_volume(array, np.diag([-1.0, -1.0, 1.0]), spacing=(4.0, 4.0, 4.0)), tmp_path / "in.nii.gz")
    output = tmp_path / "out.nii.gz"
    code, _, err = run_main(["reconstruct", source, "-o", output, "--method", method, "--model", model_dir,
                             "--slice-index", "6", "13", "19", "--quiet"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "slice 6" in warnings[0] and "left out" in warnings[0], err
    assert err.count("\n") == len(warnings)  # nothing but the warning lines with --quiet
    written = read_volume(output).array
    np.testing.assert_array_equal(written[:, :, [6, 13, 19]], array[:, :, [6, 13, 19]])


def test_warnings_are_json_events_in_json_progress_mode(tmp_path):
    array = smooth_head((SIDE, SIDE, SIDE))
    array[:, :, 5] = 0
    source = write_volume(oriented_volume(array, np.eye(3), spacing=(4.0, 4.0, 4.0)), tmp_path / "in.nrrd")
    code, _, err = run_main(["reconstruct", source, "-o", tmp_path / "out.nrrd", "--method", "atlas", "--slice-index", "5", "12",
                             "--progress", "json"])
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [r for r in records if "event" in r]
    assert len(events) == 1 and set(events[0]) == {"event", "message"} and events[0]["event"] == "warning"
    assert "slice 5" in events[0]["message"]
    assert all({"progress", "eta_s", "stage"} == set(r) for r in records if "event" not in r)


def test_progress_reporter_warning_lines():
    import io

    stream = io.StringIO()
    reporter = ProgressReporter("text", stream)
    reporter(0.5, "sampling")
    reporter.warning("the B-spline failed")
    assert stream.getvalue().endswith("\nwarning: the B-spline failed\n")  # on a line of its own, after the open bar
    stream = io.StringIO()
    ProgressReporter("json", stream).warning("two\nlines")
    assert json.loads(stream.getvalue()) == {"event": "warning", "message": "two lines"}
    stream = io.StringIO()
    ProgressReporter(None, stream).warning("quiet mode still warns")
    assert stream.getvalue() == "warning: quiet mode still warns\n"


# --- every kind of slice, every plane, K = 1..4, every method --------------------------------------------------------


@st.composite
def cases(draw):
    plane = draw(st.sampled_from(sorted(PLANE_AXIS)))
    count = draw(st.integers(1, 4))
    length = {"sagittal": SIDE, "coronal": SIDE + 2, "axial": SIDE - 2}[plane]
    edge_index = draw(st.booleans())  # slices at the very first or last index of the axis, too
    pool = [0, length - 1] if edge_index else []
    indices = sorted(set(draw(st.lists(st.sampled_from(pool + list(range(length))), min_size=count, max_size=count, unique=True))))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=len(indices), max_size=len(indices)))
    methods = ["xdiffusion", "atlas", "extrude"] + (["interpolate"] if len(indices) >= 2 else [])
    return plane, indices, kinds, draw(st.sampled_from(methods)), draw(st.integers(0, 2**16))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
@given(case=cases())
def test_any_informative_slice_reconstructs_and_all_uninformative_are_refused(model_dir, case):
    plane, indices, kinds, method, seed = case
    with tempfile.TemporaryDirectory(prefix="xdiffusion-uninformative-") as folder:
        volume = volume_with_slices(plane, indices, kinds, seed)
        source = write_volume(volume, Path(folder) / "in.nrrd")
        output = Path(folder) / "out.nrrd"
        before = listing(Path(folder))
        code, _, err = run_main(["reconstruct", source, "-o", output, "--method", method, "--model", model_dir,
                                 "--plane", plane, "--slice-index", *indices, "--quiet"])
        lines = err.splitlines()
        informative = [is_informative(np.take(volume.array, i, PLANE_AXIS[plane])) for i in indices]
        assert informative == [kind in INFORMATIVE for kind in kinds]
        event(f"{method}: {'refused' if not any(informative) else 'some left out' if not all(informative) else 'all informative'}")
        if not any(informative):
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "constant" in lines[0], err
            assert listing(Path(folder)) == before
            return
        assert code == 0, (case, err)
        assert all(line.startswith("warning:") for line in lines), err
        registered = method == "atlas" or method == "xdiffusion"
        for index, useful in zip(indices, informative):
            left_out = any(f"slice {index} " in line and "left out" in line for line in lines)
            assert left_out == (registered and not useful), (case, err)
        written = read_volume(output).array
        assert np.isfinite(written).all()
        for index in indices:
            np.testing.assert_array_equal(np.take(written, index, PLANE_AXIS[plane]), np.take(volume.array, index, PLANE_AXIS[plane]))


def test_the_atlas_guess_uses_only_the_informative_slices():
    """An empty slice changes neither the registration nor the intensity map of the others: the guess is the same
    as from the informative slice alone, outside the slice that was given."""
    volume = oriented_volume(smooth_head((SIDE, SIDE, SIDE)), np.eye(3), spacing=(4.0, 4.0, 4.0))
    alone_inputs = select_slices(volume, "axial", [12])
    template = load_template()
    alone = atlas_reconstruct(alone_inputs, template)
    emptied = volume.with_array(volume.array.copy())
    emptied.array[:, :, 3] = 0
    warnings: list[str] = []
    both = atlas_reconstruct(select_slices(emptied, "axial", [3, 12]), template, warnings=warnings)
    np.testing.assert_allclose(both, alone, rtol=1e-5, atol=1e-3)
    assert len(warnings) == 1 and "slice 3" in warnings[0]


# --- every fallback of the registration is reported -----------------------------------------------------------------


def _head_inputs(indices=(8, 14)):
    volume = oriented_volume(smooth_head((SIDE, SIDE, SIDE)), np.eye(3), spacing=(4.0, 4.0, 4.0))
    return select_slices(volume, "axial", list(indices))


def test_moments_fall_back_to_grid_centring():
    from xdiffusion.atlas import _centring

    head = smooth_head((SIDE, SIDE, SIDE))[:, :, SIDE // 2]
    assert _centring(head, head, (4.0, 4.0))[1] is None
    shifted = head - 5000.0  # negative intensities: the moments use the distance from the background, not the value
    assert _centring(shifted, head, (4.0, 4.0))[1] is None
    transform, problem = _centring(np.zeros_like(head), head, (4.0, 4.0))  # no mass: the moments cannot be computed
    assert problem is not None and "grid centres" in problem and transform.GetDimension() == 2


def _failing_registration(monkeypatch, iterations: int) -> None:
    """The registration stage with this many iterations (80: the full affine, 40: the B-spline) raises, as
    SimpleITK does when too few samples overlap."""
    from xdiffusion import atlas

    real = atlas._registration

    class Failing:
        def __init__(self, method):
            self.method = method

        def __getattr__(self, name):
            return getattr(self.method, name)

        def Execute(self, *images):
            raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: x.cxx:1:\n"
                               "ITK ERROR: too few samples map inside the moving image buffer")

    monkeypatch.setattr(atlas, "_registration", lambda count, shrink, seed=2024: Failing(real(count, shrink, seed))
                        if count == iterations else real(count, shrink, seed))


@pytest.mark.parametrize("stage, expected", [(40, "affine only"), (80, "only centred")])
def test_a_failed_registration_stage_is_a_warning(monkeypatch, stage, expected):
    _failing_registration(monkeypatch, stage)
    warnings: list[str] = []
    guess = atlas_reconstruct(_head_inputs(), load_template(), warnings=warnings)
    assert np.isfinite(guess).all()
    assert len(warnings) == 2 and all(expected in w and "too few samples" in w for w in warnings), warnings
    assert [w.split(":")[0] for w in warnings] == ["atlas registration of input slice 8", "atlas registration of input slice 14"]


def test_no_usable_offset_is_a_warning():
    """A template whose tissue lies far from its centre: no template position has tissue at the input slices."""
    array = np.zeros((60, 60, 60), dtype=np.float32)
    array[:6, :6, :6] = smooth_head((6, 6, 6)) + 100.0
    template = oriented_volume(array, np.eye(3), spacing=(2.0, 2.0, 2.0))
    volume = oriented_volume(smooth_head((SIDE, SIDE, SIDE)), np.eye(3), spacing=(1.0, 1.0, 1.0))
    warnings: list[str] = []
    guess = atlas_reconstruct(select_slices(volume, "axial", [12]), template, warnings=warnings)
    assert np.isfinite(guess).all()
    assert any("offset 0 used" in w for w in warnings) and any("left unregistered" in w for w in warnings), warnings


def test_the_cli_reports_each_fallback_once_per_line(tmp_path, monkeypatch):
    _failing_registration(monkeypatch, 40)
    source = write_volume(oriented_volume(smooth_head((SIDE, SIDE, SIDE)), np.eye(3), spacing=(4.0, 4.0, 4.0)), tmp_path / "in.mha")
    code, out, err = run_main(["reconstruct", source, "-o", tmp_path / "out.mha", "--method", "atlas", "--slice-index", "8", "14"])
    assert code == 0 and out == "", err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("B-spline" in line and "affine only" in line for line in warnings), err
    sidecar = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert sidecar["Warnings"] == [line[len("warning: "):] for line in warnings]
