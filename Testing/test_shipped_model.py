"""The shipped weights on the shipped sample: every solver must land where the checked-in reference says.

This is the test that loads the real model (a sampling bug such as diffusers' DDIM clipping latents to ±1 went
unnoticed while only tiny random models were tested). One view, few steps, fixed seed, two torch threads: seconds
per case. The reference (Testing/reference/shipped_model_reference.json) belongs to one set of weights and one
default sampling; when either changes, re-record it with the command the failure names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xdiffusion.demo import score_on_sample
from xdiffusion.model_card import read_model_card, weight_problems
from xdiffusion.model_location import PACKAGED_MODEL
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.solvers import SOLVERS

REFERENCE = json.loads((Path(__file__).resolve().parent / "reference" / "shipped_model_reference.json").read_text(encoding="utf-8"))
RE_RECORD = f"re-record with: {REFERENCE['re_record']}"
CASES = {case["name"]: case for case in REFERENCE["cases"]}


def test_the_reference_belongs_to_the_shipped_model():
    card = read_model_card(PACKAGED_MODEL)
    assert not weight_problems(PACKAGED_MODEL, card), "the shipped weights do not match their own card"
    assert card["sha256"] == REFERENCE["model_sha256"], f"the shipped model's weights changed since the reference; {RE_RECORD}"
    assert card.get("default_sampling", {}) == REFERENCE["default_sampling"], \
        f"the shipped model's default sampling changed since the reference; {RE_RECORD}"


def test_the_reference_itself_is_sane():
    """Recorded numbers can be wrong too (DDIM's were 3 dB low while it clipped): the solvers must agree."""
    assert {f"default/{solver}" for solver in SOLVERS} <= set(CASES), "every solver needs a default-sampling case"
    default = [CASES[f"default/{solver}"] for solver in SOLVERS]
    psnr = [case["psnr"] for case in default]
    assert max(psnr) - min(psnr) < 1.0, f"the solvers disagree by more than 1 dB on the default sampling: {psnr}"
    assert all(abs(case["brain_volume_rel_err"]) < 0.25 for case in default), default
    for case in default:
        assert {key: case["sampling"][key] for key in REFERENCE["default_sampling"] if key != "views"} == \
            {key: value for key, value in REFERENCE["default_sampling"].items() if key != "views"}, case["name"]
        assert case["sampling"]["views"] == 1 and case["sampling"].get("samples", 1) == 1 and not case["sampling"].get("coherent")


@pytest.fixture(scope="module")
def shipped_pipeline():
    threads = torch.get_num_threads()
    torch.set_num_threads(REFERENCE["torch_threads"])
    yield XDiffusionPipeline.from_pretrained(PACKAGED_MODEL)
    torch.set_num_threads(threads)


def test_latent_samples_are_never_clipped_and_pixel_models_keep_their_scheduler_config(shipped_pipeline):
    """Latents are not bounded to ±1: diffusers' DDIM default (clip_sample=True) ruined the shipped model's DDIM."""
    from test_pipeline import tiny_model

    for solver in SOLVERS:
        assert shipped_pipeline.make_scheduler(solver).config.get("clip_sample", False) is False, solver
    pixel = tiny_model()  # pixel space: [-1, 1] is the data's own range, so the config's clipping stays
    assert XDiffusionPipeline.from_model(pixel).make_scheduler("ddim").config.clip_sample is pixel.scheduler_config["clip_sample"] is True


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_solver_reproduces_the_reference(shipped_pipeline, name):
    case, tolerance = CASES[name], REFERENCE["tolerance"]
    scores = score_on_sample(shipped_pipeline, **case["sampling"])
    assert scores["psnr"] == pytest.approx(case["psnr"], abs=tolerance["psnr_db"]), \
        f"{name}: PSNR {scores['psnr']:.2f} dB, reference {case['psnr']:.2f} dB (if the model changed on purpose, {RE_RECORD})"
    assert scores["brain_volume_rel_err"] == pytest.approx(case["brain_volume_rel_err"], abs=tolerance["brain_volume_rel_err"]), \
        f"{name}: brain-volume error {scores['brain_volume_rel_err']:+.3f}, reference {case['brain_volume_rel_err']:+.3f}"
