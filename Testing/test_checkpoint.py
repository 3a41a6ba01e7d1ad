"""Saved-model folders: exact round trip, and refusal of tampered, truncated, missing or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import random_batch, single_thread  # noqa: F401 (autouse fixture)

from xdiffusion.errors import ModelError
from xdiffusion.model import (ConditionEncoder, build_autoencoder, build_unet, denoiser_forward, load_model, preset,
                              save_model)
from xdiffusion.model.checkpoint import ENCODER_WEIGHTS, UNET_WEIGHTS, VAE_WEIGHTS, sha256_file


def _save(folder, latent=False):
    torch.manual_seed(0)
    config = preset("tiny")
    config.latent = latent
    unet, encoder = build_unet(config), ConditionEncoder.for_model(config)
    torch.nn.init.normal_(encoder.to_vector[1].weight)
    autoencoder = build_autoencoder(config) if latent else None
    save_model(folder, unet, encoder, autoencoder, {"num_train_timesteps": 1000}, config,
               {"training_data": "random", "steps": 0})
    return config, unet, encoder, autoencoder


@pytest.mark.parametrize("latent", [False, True])
def test_round_trip_gives_identical_outputs(tmp_path, latent):
    config, unet, encoder, autoencoder = _save(tmp_path / "model", latent)
    loaded = load_model(tmp_path / "model")
    assert loaded.config == config and loaded.scheduler_config == {"num_train_timesteps": 1000}
    assert loaded.model_card["training_data"] == "random"
    batch = random_batch(config, 2)
    noisy = torch.randn(2, config.target_channels, config.unet_size, config.unet_size)
    with torch.no_grad():
        expected = denoiser_forward(unet.eval(), encoder, noisy, torch.tensor([5, 500]), batch)
        got = denoiser_forward(loaded.unet, loaded.condition_encoder, noisy, torch.tensor([5, 500]), batch)
    assert torch.equal(expected, got)
    if latent:
        assert torch.equal(loaded.autoencoder.state_dict()["decoder.conv_out.weight"],
                           autoencoder.state_dict()["decoder.conv_out.weight"])
    card = json.loads((tmp_path / "model" / "model_card.json").read_text(encoding="utf-8"))
    for name, digest in card["sha256"].items():
        assert sha256_file(tmp_path / "model" / name) == digest
        assert digest in (tmp_path / "model" / "README.md").read_text(encoding="utf-8")


def test_save_replaces_an_existing_folder_and_leaves_no_temporaries(tmp_path):
    _save(tmp_path / "model")
    (tmp_path / "model" / "stale.txt").write_text("old")
    _save(tmp_path / "model", latent=True)
    assert not (tmp_path / "model" / "stale.txt").exists()
    assert load_model(tmp_path / "model").autoencoder is not None
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("name", [UNET_WEIGHTS, ENCODER_WEIGHTS, VAE_WEIGHTS])
def test_tampered_byte_is_refused(tmp_path, name):
    _save(tmp_path / "model", latent=True)
    path = tmp_path / "model" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(tmp_path / "model")


def test_truncated_or_missing_file_is_refused(tmp_path):
    _save(tmp_path / "model")
    path = tmp_path / "model" / UNET_WEIGHTS
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="SHA-256"):
        load_model(tmp_path / "model")
    path.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(tmp_path / "model")


def test_config_that_does_not_match_the_weights_is_refused(tmp_path):
    _save(tmp_path / "model")
    path = tmp_path / "model" / "xdiffusion_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["max_inputs"] = 3
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not match"):
        load_model(tmp_path / "model")


def test_unet_config_edited_to_other_shapes_is_refused(tmp_path):
    _save(tmp_path / "model")
    path = tmp_path / "model" / "unet" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["layers_per_block"] = 2
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not match its config"):
        load_model(tmp_path / "model")
