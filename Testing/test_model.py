"""Model construction: config round-trip, conditioning, the denoiser's channel assembly, autoencoder metrics and
initialisation from a (tiny, locally built) Stable-Diffusion-shaped checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from model_fixtures import random_batch, single_thread  # noqa: F401 (autouse fixture)

from xdiffusion.errors import InputError, ModelError
from xdiffusion.evaluate import PSNR_CAP_DB
from xdiffusion.model import (ConditionEncoder, XDiffusionConfig, autoencoder_metrics, build_autoencoder, build_unet,
                              denoiser_forward, init_unet_from_pretrained, preset)
from xdiffusion.model.networks import condition_images


@pytest.mark.parametrize("name", ["tiny", "cpu_default"])
def test_config_json_round_trip(name, tmp_path):
    config = preset(name)
    config.latent_scale = 0.37
    config.to_json(tmp_path / "c.json")
    assert XDiffusionConfig.from_json(tmp_path / "c.json") == config


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(InputError, match="unknown key"):
        XDiffusionConfig.from_dict({"cube_sise": 32})
    with pytest.raises(InputError, match="unknown key"):
        XDiffusionConfig.from_dict({"unet": {"width": 3}})
    with pytest.raises(InputError, match="prediction_type"):
        XDiffusionConfig(prediction_type="sample")
    with pytest.raises(InputError, match="divisible"):
        XDiffusionConfig(cube_size=60, latent=True)


def test_cpu_default_channel_layout():
    config = preset("cpu_default")
    assert (config.unet_size, config.target_channels) == (16, 4)
    assert config.unet_in_channels == 4 + (2 * 4 + 2) * 16


@pytest.mark.parametrize("name", ["tiny", "cpu_default"])
def test_denoiser_output_shape(name):
    config = preset(name)
    batch = random_batch(config, 2)
    noisy = torch.randn(2, config.target_channels, config.unet_size, config.unet_size)
    with torch.no_grad():
        out = denoiser_forward(build_unet(config), ConditionEncoder.for_model(config), noisy, torch.tensor([3, 900]),
                               batch)
    assert out.shape == noisy.shape and torch.isfinite(out).all()


def test_pixel_unshuffle_keeps_every_conditioning_pixel():
    config = preset("cpu_default")
    batch = random_batch(config, 2)
    folded = condition_images(batch, config.unet_size)
    assert folded.shape == (2, config.condition_image_channels * 16, 16, 16)
    unfolded = torch.nn.functional.pixel_shuffle(folded, 4)
    assert torch.equal(unfolded[:, :4], batch["inputs"])
    assert torch.equal(unfolded[:, 8:9], batch["guess"])


def test_condition_encoder_sees_each_field_and_drop_gives_the_null():
    config = preset("tiny")
    encoder = ConditionEncoder.for_model(config)
    torch.nn.init.normal_(encoder.to_vector[1].weight)  # zero-initialised for training; make it informative here
    batch = random_batch(config, 2)
    vector, tokens = encoder(batch)
    assert vector.shape == (2, config.unet.time_embed_dim)
    assert tokens.shape == (2, config.max_inputs + 1, config.unet.cross_attention_dim)
    for key, change in [("depth", 0.1), ("input_position", 0.1), ("modality", 1.0), ("input_plane", 1.0)]:
        moved = dict(batch)
        moved[key] = (batch[key] + change) % (3 if key == "input_plane" else 2)
        assert not torch.allclose(encoder(moved)[0], vector), key
    turned = dict(batch, rotation=batch["rotation"].flip(-1))
    assert not torch.allclose(encoder(turned)[1], tokens)

    drop = torch.tensor([True, False])
    dropped_vector, dropped_tokens = encoder(batch, drop)
    assert torch.equal(dropped_vector[0], encoder.null_vector) and torch.equal(dropped_tokens[0], encoder.null_tokens)
    assert torch.allclose(dropped_vector[1], vector[1]) and torch.allclose(dropped_tokens[1], tokens[1])
    assert condition_images(batch, config.unet_size, drop)[0].abs().sum() == 0


def test_absent_slot_contents_are_ignored():
    config = preset("tiny")
    encoder = ConditionEncoder.for_model(config)
    torch.nn.init.normal_(encoder.to_vector[1].weight)
    batch = random_batch(config, 1)
    batch["input_present"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    other = dict(batch, input_plane=batch["input_plane"].clone(), input_position=batch["input_position"] * 0.5)
    other["input_plane"][0, 1:] = (other["input_plane"][0, 1:] + 1) % 3
    other["input_position"][0, 0] = batch["input_position"][0, 0]
    for a, b in zip(encoder(batch), encoder(other)):
        assert torch.allclose(a, b)


def test_autoencoder_metrics_perfect_and_wrong():
    config = preset("tiny")
    autoencoder = build_autoencoder(config)
    target = torch.ones(2, 4, 16, 16)
    target[:, 1:, :8] = -1
    metrics = autoencoder_metrics(autoencoder, target)
    assert set(metrics) == {"psnr", "dice", "dice_label1", "dice_label2", "dice_label3"}
    assert metrics["psnr"] < 30 and 0 <= metrics["dice"] <= 1

    class Identity(torch.nn.Module):  # the metric itself: exact reconstruction gives the capped PSNR (evaluate.psnr), Dice 1
        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mode": lambda self: x})()})()

        def decode(self, z):
            return type("O", (), {"sample": z})()

    perfect = autoencoder_metrics(Identity(), target)
    assert perfect["psnr"] == PSNR_CAP_DB and perfect["dice"] == 1.0


def _tiny_sd_checkpoint(folder) -> UNet2DConditionModel:
    torch.manual_seed(0)
    sd = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    sd.save_pretrained(folder / "unet", safe_serialization=True)
    return sd


def test_init_from_pretrained_keeps_weights_and_zero_inits_new_inputs(tmp_path):
    source = _tiny_sd_checkpoint(tmp_path)
    config = preset("tiny")
    unet = init_unet_from_pretrained(tmp_path, config)
    assert unet.conv_in.in_channels == config.unet_in_channels
    assert torch.equal(unet.conv_in.weight[:, :4], source.conv_in.weight)
    assert unet.conv_in.weight[:, 4:].abs().sum() == 0
    assert torch.equal(unet.conv_out.weight, source.conv_out.weight)
    mid = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(unet.state_dict()[mid], source.state_dict()[mid])

    # with the new channels at zero and a zero condition vector, the network is exactly the pretrained one
    batch = random_batch(config, 2)
    noisy = torch.randn(2, 4, 16, 16)
    tokens = torch.randn(2, 5, 32)
    with torch.no_grad():
        ours = unet(torch.cat([noisy, condition_images(batch, 16)], 1), 10, tokens,
                    class_labels=torch.zeros(2, 64)).sample
        theirs = source(noisy, 10, tokens).sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_init_from_pretrained_refuses_mismatch(tmp_path):
    _tiny_sd_checkpoint(tmp_path)
    config = preset("tiny")
    config = dataclasses.replace(config, unet=dataclasses.replace(config.unet, cross_attention_dim=48))
    with pytest.raises(ModelError, match="cross_attention_dim=32"):
        init_unet_from_pretrained(tmp_path, config)
    with pytest.raises(ModelError, match="no diffusers U-Net"):
        init_unet_from_pretrained(tmp_path / "missing", preset("tiny"))
