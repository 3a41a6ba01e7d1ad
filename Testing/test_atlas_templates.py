"""The shipped atlas templates (brain and head) and `--atlas auto|brain|head|PATH`: which template a run uses and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from head_phantom import synthetic_head
from xdiffusion.atlas_templates import SKULL_RING_SCORE, TEMPLATES, choose_template, load_template, skull_ring_score
from xdiffusion.cli import main
from xdiffusion.errors import InputError
from xdiffusion.geometry import plane_axis
from xdiffusion.io import Volume, write_volume
from xdiffusion.reconstruct import select_slices


@pytest.fixture(scope="module")
def templates() -> dict[str, Volume]:
    return {name: load_template(name) for name in TEMPLATES}


def _phantoms() -> tuple[Volume, Volume]:
    """The synthetic head with its scalp and skull, and the same skull-stripped with its brain mask."""
    head, brain = synthetic_head()
    return head, head.with_array(head.array * brain.array)


def test_the_head_template_is_the_brain_template_with_its_skull(templates):
    head, brain = templates["head"], templates["brain"]
    assert head.geometry.same_as(brain.geometry, atol=1e-5)
    assert head.geometry.shape == (97, 115, 97) and np.allclose(head.geometry.spacing, 2.0, atol=0.02)
    assert sitk.ReadImage(str(TEMPLATES["head"])).GetPixelID() == sitk.sitkInt16  # 0..1000, air exactly 0
    assert TEMPLATES["head"].stat().st_size < 1_000_000
    inside = brain.array > 0
    outside = (head.array > 0) & ~inside
    assert outside.sum() > inside.sum()  # scalp, skull, face and neck: more than the brain itself
    assert np.percentile(head.array[outside], 90) > 0.5 * np.percentile(head.array[inside], 90)  # bright scalp and fat
    assert np.corrcoef(head.array[inside], brain.array[inside])[0, 1] > 0.9  # the same brain inside
    assert head.array.min() == 0 and (head.array == 0).mean() > 0.2


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_auto_sees_the_skull_of_a_head_and_none_on_a_skull_stripped_brain(templates, plane):
    head, stripped = _phantoms()
    volumes = {"head": head, "brain": stripped, "head template": templates["head"], "brain template": templates["brain"]}
    for name, volume in volumes.items():
        length = volume.geometry.shape[plane_axis(volume.geometry, plane)]
        for indices in ([length // 2], [length // 4, length // 2, 3 * length // 4]):
            choice = choose_template("auto", select_slices(volume, plane, indices))
            assert choice.path == TEMPLATES[name.split()[0]], (name, indices, choice.reason)
            assert choice.reason.startswith(f"auto: {name.split()[0]}")


def test_the_skull_ring_score_ignores_offset_and_sign(templates):
    """Intensities count from the air: a constant offset or inverted contrast changes nothing."""
    image = select_slices(templates["head"], "axial", [55]).images[0].astype(np.float64)
    score = skull_ring_score(image, (2.0, 2.0))
    assert score >= SKULL_RING_SCORE
    assert skull_ring_score(image + 500.0, (2.0, 2.0)) == pytest.approx(score)
    assert skull_ring_score(-image, (2.0, 2.0)) == pytest.approx(score)
    assert skull_ring_score(np.zeros_like(image), (2.0, 2.0)) == 0.0


def test_names_and_paths_resolve_without_looking_at_the_slices(tmp_path):
    inputs = select_slices(_phantoms()[0], "axial", [23])  # a head: auto would take the head template
    assert choose_template("brain", inputs).path == TEMPLATES["brain"]
    assert choose_template("head", inputs).reason == "--atlas head"
    own = Path(shutil.copyfile(TEMPLATES["brain"], tmp_path / "own.nii.gz"))
    assert choose_template(str(own), inputs).path == own.absolute()
    assert load_template(own).geometry.same_as(load_template("brain").geometry)
    for bad in ("skull", str(tmp_path / "missing.nii.gz")):
        with pytest.raises(InputError, match="no such template"):
            choose_template(bad, inputs)
    with pytest.raises(InputError, match="auto"):
        load_template("auto")


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))


def test_the_sidecar_records_the_template_file_used(tmp_path):
    head, stripped = _phantoms()
    inputs = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in (("head", head), ("brain", stripped))}
    own = Path(shutil.copyfile(TEMPLATES["head"], tmp_path / "own.nii.gz"))
    auto = ["--atlas", "auto"]
    cases = (("head", [], TEMPLATES["brain"]), ("head", auto, TEMPLATES["head"]), ("brain", auto, TEMPLATES["brain"]),
             ("brain", ["--atlas", str(own)], own))  # the default stays the brain template
    for source, atlas, expected in cases:
        out = tmp_path / f"{source}-{'-'.join(a[-4:] for a in atlas)}-out.nii.gz"
        assert main(["reconstruct", str(inputs[source]), "-o", str(out), "--method", "atlas", "--quiet", *atlas]) == 0
        assert _sidecar(out)["Template"] == str(expected.absolute())


def test_an_unknown_template_is_one_error_line_and_exit_2(tmp_path, capsys):
    source = write_volume(_phantoms()[0], tmp_path / "input.nii.gz")
    assert main(["reconstruct", str(source), "-o", str(tmp_path / "out.nii.gz"), "--method", "atlas", "--atlas", "skull", "--quiet"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --atlas skull: no such template; use auto, brain, head")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz"]
