"""The model card is the model's: the autoencoder settings that made the weights (not a resumed run's re-defaulted
config), autoencoder numbers measured on held-out data, no free Dice 1.0 for an absent label, and a measured
`segments_tumours`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import single_thread  # noqa: F401 (autouse fixture)
from test_training import CopyGuessSamples, _config

from xdiffusion.data.samples import TrainingCube
from xdiffusion.evaluate import PSNR_CAP_DB
from xdiffusion.model import autoencoder_metrics, build_autoencoder, load_model, preset
from xdiffusion.model.training import AUTOENCODER_RECORD, Trainer, resolve_config, train
from xdiffusion.model_card import read_model_card
from xdiffusion.model_location import PACKAGED_MODEL
from xdiffusion.training_run import held_out_targets


class Identity(torch.nn.Module):
    """An autoencoder that reconstructs exactly: the metric alone is under test."""

    def encode(self, x):
        return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

    def decode(self, z):
        return type("O", (), {"sample": z})()


def test_an_absent_label_has_no_dice_and_is_left_out_of_the_mean():
    target = -torch.ones(2, 4, 8, 8)
    target[:, 0] = 0.5
    target[:, 2, :4] = 1.0  # only label 2 present
    metrics = autoencoder_metrics(Identity(), target)
    assert metrics["dice_label1"] is None and metrics["dice_label3"] is None
    assert metrics["dice_label2"] == 1.0 and metrics["dice"] == 1.0
    empty = autoencoder_metrics(Identity(), torch.cat([target[:, :1], -torch.ones(2, 3, 8, 8)], 1))
    assert empty["dice"] is None and empty["psnr"] == PSNR_CAP_DB  # no tumour anywhere: nothing to score, not a perfect 1.0


def test_held_out_targets_cut_every_axis_and_skip_background():
    image = np.zeros((16, 16, 16), np.float32)
    image[4:12, 4:12, 4:12] = 100.0
    tumour = np.zeros((16, 16, 16), np.uint8)
    tumour[6:8, 6:8, 6:8] = 2
    targets = held_out_targets([TrainingCube(image, tumour, "t1")], stride=2)
    assert targets.shape == (3 * 4, 4, 16, 16)  # slices 5, 7, 9, 11 of each axis hold brain; 1, 3, 13, 15 do not
    assert targets[:, 0].max() == pytest.approx(1.0) and (targets[:, 2] > 0).any() and not (targets[:, 1] > 0).any()


def _latent_config(tmp_path, **train_settings):
    settings = {"steps": 2, "autoencoder_steps": 3, "validate_every": 100, "checkpoint_every": 1, **train_settings}
    config = _config(tmp_path, **settings)
    config["model"]["latent"] = True
    return config


def test_the_card_reports_the_autoencoder_on_held_out_data(tmp_path):
    held_out = torch.stack([CopyGuessSamples(count=400)[i]["target"] for i in range(300, 316)])
    folder = train(_latent_config(tmp_path), samples=CopyGuessSamples(), held_out=held_out)
    card = load_model(folder).model_card
    expected = autoencoder_metrics(load_model(folder).autoencoder, held_out)
    assert card["autoencoder"]["held_out_slices"] == 16
    assert card["autoencoder"]["psnr"] == pytest.approx(expected["psnr"])
    assert card["autoencoder"]["dice"] == pytest.approx(expected["dice"])
    without = train(_latent_config(tmp_path / "other"), samples=CopyGuessSamples())
    assert "psnr" not in load_model(without).model_card["autoencoder"]  # no held-out data: no numbers at all


def test_a_resumed_run_reports_the_autoencoder_settings_that_trained_it(tmp_path):
    """The shipped card claimed tumour weight 20 for a plain-L1 autoencoder: on resume the config was re-read with
    the defaults of the day. The settings are now saved with the autoencoder and carried through every resume."""
    Trainer(resolve_config(_latent_config(tmp_path, autoencoder_tumour_weight=3.0)), CopyGuessSamples()).run()
    resumed = resolve_config(_latent_config(tmp_path, steps=3, resume="latest"))  # the key left out: re-defaulted
    assert resumed["train"]["autoencoder_tumour_weight"] == 20.0
    card = load_model(Trainer(resumed, CopyGuessSamples()).run()).model_card
    assert card["steps"] == 3
    assert card["autoencoder_training"]["tumour_weight"] == 3.0 and card["autoencoder_training"]["steps"] == 3
    assert card["autoencoder_training"]["batch_size"] == 8 and card["autoencoder_training"]["trained_in_this_run"]
    assert not any(key.startswith("autoencoder_") for key in card["training_config"]["train"])


def test_a_run_continued_from_another_keeps_its_autoencoder_and_latent_scale(tmp_path):
    """`init_from` a model folder plus `autoencoder_from` its run's autoencoder: the denoiser it starts from was
    trained on latents at that run's scale, so the new run must not measure a scale of its own."""
    first = Trainer(resolve_config(_latent_config(tmp_path / "first")), CopyGuessSamples()).run()
    scale = load_model(first).config.latent_scale
    follow = _latent_config(tmp_path / "second", init_from=str(first),
                            autoencoder_from=str(tmp_path / "first" / "run" / "autoencoder"))
    card = load_model(Trainer(resolve_config(follow), CopyGuessSamples(count=48)).run()).model_card
    assert card["autoencoder_training"]["trained_in_this_run"] is False
    assert card["autoencoder_training"]["steps"] == 3  # how the first run trained it, carried over
    assert load_model(tmp_path / "second" / "run" / "model").config.latent_scale == scale
    shutil.rmtree(first)  # a campaign resumed elsewhere: the folder it started from is not there
    resumed = {**follow, "train": {**follow["train"], "steps": 3, "resume": "latest"}}
    assert load_model(Trainer(resolve_config(resumed), CopyGuessSamples(count=48)).run()).model_card["steps"] == 3


def test_an_autoencoder_saved_without_its_settings_is_reported_as_unrecorded(tmp_path):
    Trainer(resolve_config(_latent_config(tmp_path)), CopyGuessSamples()).run()
    record = tmp_path / "run" / "autoencoder" / AUTOENCODER_RECORD
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({"latent_scale": saved["latent_scale"], "metrics": {"dice_label1": 1.0}}))  # as before
    card = load_model(Trainer(resolve_config(_latent_config(tmp_path, steps=3, resume="latest")), CopyGuessSamples()).run()).model_card
    assert set(card["autoencoder_training"]) == {"note"} and "not recorded" in card["autoencoder_training"]["note"]


def test_a_changed_config_on_resume_is_listed_with_the_steps_it_trained(tmp_path):
    common = {"checkpoint_every": 2, "validate_every": 100}
    Trainer(resolve_config(_config(tmp_path, steps=2, **common)), CopyGuessSamples()).run()
    card = load_model(Trainer(resolve_config(_config(tmp_path, steps=4, lr=1e-3, resume="latest", **common)),
                              CopyGuessSamples()).run()).model_card
    assert card["training_config"]["train"]["lr"] == 1e-3
    assert card["training_config_changes"] == [{"from_step": 0, "to_step": 2, "train.lr": 3e-3}]


@pytest.mark.parametrize("dice, expected", [(None, False), (0.1, False), (0.8, True)])
def test_segments_tumours_is_true_only_when_measured(tmp_path, dice, expected):
    scores = {"psnr": 20.0} if dice is None else {"psnr": 20.0, "dice_tumour": dice}
    card = load_model(train(_config(tmp_path, steps=1, validate_every=1), samples=CopyGuessSamples(),
                            validate=lambda model: scores)).model_card
    assert card["segments_tumours"] is expected and card["segments_tumours_basis"]


def test_the_shipped_card_is_the_shipped_models():
    """The card says what the shipped weights are (an image-only autoencoder, no tumour labels of their own, the
    campaign step they come from) and why they ship: validation numbers that are the ones in the files it names."""
    card = read_model_card(PACKAGED_MODEL)
    assert card["segments_tumours"] is False and "draws no tumour labels" in card["segments_tumours_basis"]
    assert card["autoencoder_training"]["tumour_weight"] is None and "image only" in card["autoencoder_training"]["loss"]
    assert card["autoencoder"]["held_out_slices"] > 0 and card["steps"] == card["campaign_snapshot"]["step"]
    validation = card["validation_split"]
    for name in ("default_float32", "default_bfloat16", "fast_bfloat16", "default_in_plane_bfloat16", "fast_in_plane_bfloat16"):
        recorded = json.loads((Path(__file__).resolve().parents[1] / validation["files"][name]).read_text(encoding="utf-8"))
        row = next(r for r in recorded["rows"] if r["name"].endswith(" atlas 1"))
        assert validation[name] == {key: row[key] for key in validation[name]}, name
        assert recorded.get("fusion", "mean") == ("in-plane" if "in_plane" in name else "mean"), name
    for key in ("psnr", "psnr_mask", "ssim"):  # why it replaced the previous default, and why its views are fused in-plane
        assert validation["default_float32"][key] > max(validation["previous_default"][key], validation["atlas"][key]), key
        assert validation["default_in_plane_bfloat16"][key] > validation["default_bfloat16"][key], key
    assert card["default_sampling"]["fusion"] == "in-plane" and "validation split" in card["default_sampling_basis"]


def test_training_batch_metrics_are_gone_from_train_autoencoder():
    """`train_autoencoder` returns nothing to put in a card: held-out numbers come from `autoencoder_metrics`."""
    from xdiffusion.model import train_autoencoder

    autoencoder = build_autoencoder(preset("tiny"))
    batches = (torch.rand(2, 4, 16, 16) * 2 - 1 for _ in range(2))
    assert train_autoencoder(autoencoder, batches, 2) is None


def test_the_validator_scores_generated_tumours_when_the_truth_has_some():
    from test_pipeline import tiny_model
    from xdiffusion.training_run import make_validator

    image = np.zeros((16, 16, 16), np.float32)
    image[2:14, 2:14, 2:14] = 100.0
    tumour = np.zeros((16, 16, 16), np.uint8)
    tumour[3:13, 3:13, 3:13] = 2  # most of the brain: every drawn slice crosses it
    metrics = make_validator([TrainingCube(image, tumour, "t1")], ["t1", "t2"], 4, count=2, steps=1)(tiny_model())
    assert 0.0 <= metrics["dice_tumour"] <= 1.0
    healthy = make_validator([TrainingCube(image, np.zeros_like(tumour), "t1")], ["t1", "t2"], 4, count=2, steps=1)(tiny_model())
    assert "dice_tumour" not in healthy  # no tumour in the truth: no Dice, rather than a free one
