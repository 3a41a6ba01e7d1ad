"""The sampling a run uses (`resolve_sampling`): the model card's defaults, `--preset fast|balanced|best` from the card
(derived for a card without presets), explicit options over both, and `--prior none`; each bad value one `error:`
line and exit 2. The Slicer module passes the preset, not numbers of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import oriented_volume, smooth_head
from fuzz_helpers import assert_refused, run_main, save_tiny_model
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from xdiffusion.cli import DEFAULT_SAMPLING
from xdiffusion.errors import InputError
from xdiffusion.io import write_volume
from xdiffusion.model_card import PRESETS, card_presets, read_model_card, resolve_sampling
from xdiffusion.model_location import PACKAGED_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XDiffusion"))

from XDiffusionModuleLib import cli as module_cli  # noqa: E402

CARD = {"default_sampling": {"views": 4, "steps": 12, "strength": 0.3, "prior": "atlas"},
        "presets": {"fast": {"views": 1, "steps": 12, "samples": 1, "coherent": False},
                    "balanced": {"views": 4, "steps": 12, "samples": 1, "coherent": False},
                    "best": {"views": 4, "steps": 12, "samples": 3, "coherent": True}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    presets = {"fast": {"views": 1, "steps": 1, "samples": 1, "coherent": False},
               "balanced": {"views": 2, "steps": 1, "samples": 1, "coherent": False},
               "best": {"views": 2, "steps": 1, "samples": 2, "coherent": True}}
    return save_tiny_model(tmp_path_factory.mktemp("presets") / "tiny", default_sampling={"views": 2, "steps": 1}, presets=presets)


@pytest.fixture
def volume_path(tmp_path) -> Path:
    return write_volume(oriented_volume((smooth_head((20, 22, 18)) * 3).astype(np.int16), np.eye(3), spacing=(4.0, 4.0, 4.0)),
                        tmp_path / "input.nii.gz")


def test_a_preset_chooses_views_steps_samples_and_coherence_and_explicit_options_win():
    assert resolve_sampling(CARD, DEFAULT_SAMPLING) == {**DEFAULT_SAMPLING, **CARD["default_sampling"]}
    best = resolve_sampling(CARD, DEFAULT_SAMPLING, "best")
    assert (best["views"], best["samples"], best["coherent"], best["strength"], best["prior"]) == (4, 3, True, 0.3, "atlas")
    assert resolve_sampling(CARD, DEFAULT_SAMPLING, "fast")["views"] == 1
    chosen = resolve_sampling(CARD, DEFAULT_SAMPLING, "best", {"views": 2, "coherent": False, "steps": None})
    assert (chosen["views"], chosen["coherent"], chosen["samples"], chosen["steps"]) == (2, False, 3, 12)
    assert resolve_sampling(CARD, DEFAULT_SAMPLING, "balanced") == resolve_sampling(CARD, DEFAULT_SAMPLING)


def test_a_card_without_presets_gets_them_from_its_default_sampling():
    old = {"default_sampling": {"views": 8, "steps": 20}}
    presets = card_presets(old, DEFAULT_SAMPLING)
    assert list(presets) == list(PRESETS)
    assert presets["balanced"] == {"views": 8, "steps": 20, "samples": 1, "coherent": False}
    assert presets["fast"] == {"views": 2, "steps": 10, "samples": 1, "coherent": False}
    assert presets["best"] == {"views": 16, "steps": 20, "samples": 1, "coherent": False}
    assert card_presets({"default_sampling": {"views": 1, "steps": 1}}, DEFAULT_SAMPLING)["fast"] == {
        "views": 1, "steps": 1, "samples": 1, "coherent": False}  # never below one
    partial = card_presets({"presets": {"best": {"samples": 5, "coherent": True, "unknown": 1}}}, DEFAULT_SAMPLING)["best"]
    assert partial == {"views": 8, "steps": 12, "samples": 5, "coherent": True}


def test_the_shipped_presets_are_the_cards_own_and_name_the_validation_run_they_were_chosen_on():
    card = read_model_card(PACKAGED_MODEL)
    presets = card_presets(card, DEFAULT_SAMPLING)
    assert {name: {key: card["presets"][name][key] for key in presets[name]} for name in PRESETS} == presets  # nothing derived
    assert presets["balanced"] == {**presets["balanced"], "views": card["default_sampling"]["views"], "steps": card["default_sampling"]["steps"]}
    fast_file = card["validation_split"]["files"]["fast_bfloat16"]
    assert fast_file in card["presets_basis"]
    recorded = json.loads((Path(__file__).resolve().parents[1] / fast_file).read_text(encoding="utf-8"))
    assert f"{presets['fast']['views']} views, {presets['fast']['steps']} DPM-Solver++ steps" in recorded["what"]


def test_prior_none_is_pure_noise_and_refuses_a_starting_strength():
    assert resolve_sampling(CARD, DEFAULT_SAMPLING, None, {"prior": "none"})["strength"] == 1.0
    assert resolve_sampling(CARD, DEFAULT_SAMPLING, None, {"prior": "none", "strength": 1.0})["strength"] == 1.0
    with pytest.raises(InputError, match="--prior none samples from pure noise"):
        resolve_sampling(CARD, DEFAULT_SAMPLING, None, {"prior": "none", "strength": 0.5})
    with pytest.raises(InputError, match="card's prior none"):
        resolve_sampling({"default_sampling": {"prior": "none"}}, DEFAULT_SAMPLING, None, {"strength": 0.5})
    with pytest.raises(InputError, match="unknown preset"):
        resolve_sampling(CARD, DEFAULT_SAMPLING, "ultra")


def test_the_shipped_card_balanced_is_its_default_sampling():
    card = read_model_card(PACKAGED_MODEL)
    presets = card_presets(card, DEFAULT_SAMPLING)
    sampling = {**DEFAULT_SAMPLING, **card["default_sampling"]}
    assert presets["balanced"] == {"views": sampling["views"], "steps": sampling["steps"], "samples": 1, "coherent": False}
    assert "presets" in card and set(card["presets"]) == set(PRESETS)


@pytest.mark.parametrize("arguments, fragment", [
    (["--samples", "0"], "--samples: must be at least 1"),
    (["--preset", "ultra"], "invalid choice: 'ultra'"),
    (["--prior", "none", "--strength", "0.5"], "--prior none samples from pure noise"),
    (["--prior", "nothing"], "invalid choice: 'nothing'"),
    (["--coherent", "yes"], "unrecognized arguments"),
])
def test_bad_sampling_options_are_one_error_line(tmp_path, model_dir, volume_path, arguments, fragment):
    assert_refused(["reconstruct", volume_path, "-o", tmp_path / "out.nii.gz", "--model", model_dir, *arguments], tmp_path,
                   fragments=[fragment])


def test_a_preset_and_explicit_options_reach_the_sidecar(tmp_path, model_dir, volume_path):
    out = tmp_path / "best.nii.gz"
    code, _, err = run_main(["reconstruct", volume_path, "-o", out, "--model", model_dir, "--preset", "best", "--views", "1",
                             "--uncertainty-output", tmp_path / "unc.nii.gz"])
    assert code == 0, err
    sampling = json.loads((tmp_path / "best.json").read_text(encoding="utf-8"))["Sampling"]
    assert (sampling["views"], sampling["steps"], sampling["samples"], sampling["coherent"]) == (1, 1, 2, True)
    assert "spread across 2 samples" in err and "never measured" in err
    uncertainty = json.loads((tmp_path / "unc.json").read_text(encoding="utf-8"))
    assert uncertainty["UncertaintyAUROC"] is None


def test_prior_none_runs_from_pure_noise(tmp_path, model_dir, volume_path):
    code, _, err = run_main(["reconstruct", volume_path, "-o", tmp_path / "none.nii.gz", "--model", model_dir, "--prior", "none",
                             "--quiet"])
    assert code == 0, err
    sampling = json.loads((tmp_path / "none.json").read_text(encoding="utf-8"))["Sampling"]
    assert sampling["strength"] == 1.0 and sampling["prior"] is None  # null: pure noise, as at --strength 1


def test_model_info_shows_the_presets(model_dir, capsys):
    code, out, _ = run_main(["model-info", "--model", model_dir, "--json"])
    info = json.loads(out)
    assert code == 0 and info["presets"]["best"] == {"views": 2, "steps": 1, "samples": 2, "coherent": True}
    assert info["presets_from_card"] is True
    code, out, _ = run_main(["model-info", "--model", model_dir])
    assert "best 2 views x 1 steps, 2 coherent samples" in out and "fast 1 view x 1 steps, 1 averaged sample" in out


def test_the_slicer_module_passes_the_preset(tmp_path):
    for quality in module_cli.QUALITIES:
        arguments = module_cli.reconstruct_arguments(tmp_path, "axial", [7], None, quality, "cpu")
        assert arguments[arguments.index("--preset") + 1] == quality
        assert "--views" not in arguments and "--steps" not in arguments
    assert "--preset" not in module_cli.reconstruct_arguments(tmp_path, "axial", [7], method="extrude")
    with pytest.raises(ValueError, match="unknown quality"):
        module_cli.reconstruct_arguments(tmp_path, "axial", [7], None, "ultra")


def test_a_cohort_refuses_prior_none_with_a_strength_before_any_volume(tmp_path, model_dir, volume_path):
    out = tmp_path / "out"
    line = assert_refused(["reconstruct-cohort", tmp_path, "-o", out, "--model", model_dir, "--prior", "none", "--strength", "0.5"],
                          fragments=["--prior none samples from pure noise"])
    assert line.startswith("error:") and not any(out.glob("*.nii.gz"))
