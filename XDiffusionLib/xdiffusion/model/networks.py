"""Construction of the denoising U-Net and the autoencoder (both stock diffusers models), and the one function that
turns a noisy target plus a conditioning dict into a U-Net prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from torch.utils.data import default_collate

from ..errors import ModelError
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig


def build_unet(config: XDiffusionConfig) -> UNet2DConditionModel:
    """A fresh U-Net; `class_embed_type="identity"` lets the condition vector add straight to the time embedding."""
    u = config.unet
    return UNet2DConditionModel(
        sample_size=config.unet_size,
        in_channels=config.unet_in_channels,
        out_channels=config.target_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.cross_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.cross_attention)),
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=u.cross_attention_dim,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
        class_embed_type="identity",
    )


def init_unet_from_pretrained(local_dir: Union[str, Path], config: XDiffusionConfig) -> UNet2DConditionModel:
    """Start from a local diffusers Stable Diffusion / Zero-123 folder, or an XDiffusion model folder
    (`local_dir/unet/`), keeping all its weights except conv_in/conv_out, which are widened to our channels:
    overlapping channels are copied and the new input channels start at zero, so at step 0 the network sees exactly
    what it was pretrained on (an XDiffusion model given a new conditioning channel, e.g. the atlas, predicts what it
    predicted before until it learns to read it).
    """
    folder = Path(local_dir)
    if not (folder / "unet" / "config.json").is_file():
        raise ModelError(f"no diffusers U-Net at {folder / 'unet'} (expected config.json and weights there)")
    try:
        source = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                      use_safetensors=True)  # never a pickled .bin from a download
    except Exception as error:  # diffusers raises many types for unreadable folders; the user needs one line
        raise ModelError(f"cannot load the pretrained U-Net in {folder}: {str(error).splitlines()[0]}") from None
    found = {
        "block_out_channels": tuple(source.config.block_out_channels),
        "layers_per_block": source.config.layers_per_block,
        "cross_attention": tuple("CrossAttn" in t for t in source.config.down_block_types),
        "cross_attention_dim": source.config.cross_attention_dim,
        "time_embed_dim": source.time_embedding.linear_2.out_features,
    }
    wanted = {name: getattr(config.unet, name) for name in found}
    differ = [f"{n}={found[n]} (config has {wanted[n]})" for n in found if found[n] != wanted[n]]
    if differ:
        raise ModelError(f"set model.unet to match the pretrained U-Net in {folder}: " + ", ".join(differ))

    settings = dict(source.config)
    settings.update(in_channels=config.unet_in_channels, out_channels=config.target_channels,
                    class_embed_type="identity", sample_size=config.unet_size)
    unet = UNet2DConditionModel.from_config(settings)
    state = source.state_dict()
    for name in ("conv_in", "conv_out"):
        old_w, old_b = state.pop(f"{name}.weight"), state.pop(f"{name}.bias")
        layer: nn.Conv2d = getattr(unet, name)
        with torch.no_grad():
            if name == "conv_in":
                layer.weight.zero_()
            out_n, in_n = min(layer.out_channels, old_w.shape[0]), min(layer.in_channels, old_w.shape[1])
            layer.weight[:out_n, :in_n] = old_w[:out_n, :in_n]
            layer.bias[:out_n] = old_b[:out_n]
    unet.load_state_dict(state, strict=False)
    return unet


def init_condition_encoder(encoder: ConditionEncoder, local_dir: Union[str, Path]) -> None:
    """Load the condition encoder of an XDiffusion model folder into ``encoder`` (strictly: same conditioning config);
    a Stable Diffusion folder has none, and ``encoder`` keeps its fresh weights."""
    weights = Path(local_dir) / "condition_encoder" / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors.torch import load_file

    try:
        encoder.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as error:
        raise ModelError(f"the condition encoder in {weights.parent} does not match the config's model.conditioning: "
                         f"{' '.join(str(error).split())[:200]}") from None


def condition_images(batch: Mapping[str, torch.Tensor], size: int, drop: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixel-aligned conditioning [B, C*f^2, size, size]: inputs, presence maps, guess, known distance (C = 2K+2),
    the extruded label maps and the atlas guess with its presence map where the batch has them.

    In latent space (`size` < S) they are folded with `pixel_unshuffle`, which is lossless, unlike resizing.
    Rows in `drop` are zeroed (the unconditional branch of classifier-free guidance).
    """
    inputs = batch["inputs"]
    present = batch["input_present"].to(inputs.dtype)[..., None, None].expand_as(inputs)
    parts = [inputs, present, batch["guess"].to(inputs.dtype), batch["known_distance"].to(inputs.dtype)]
    if "label_guess" in batch:  # label-conditioned models: the input slices' tumour labels, extruded into the view
        parts.append(batch["label_guess"].to(inputs.dtype))
    if "atlas_guess" in batch:  # atlas-conditioned models: the registered atlas in the view, or -1 where withheld
        parts += [batch["atlas_guess"].to(inputs.dtype), batch["atlas_present"].to(inputs.dtype)]
    images = torch.cat(parts, 1)
    if drop is not None:
        images = images * (~drop.to(device=images.device, dtype=torch.bool)).to(images.dtype)[:, None, None, None]
    factor = images.shape[-1] // size
    if factor * size != images.shape[-1]:
        raise ValueError(f"cube side {images.shape[-1]} is not a multiple of the U-Net grid {size}")
    return F.pixel_unshuffle(images, factor) if factor > 1 else images


def denoiser_forward(unet: UNet2DConditionModel, condition_encoder: ConditionEncoder, noisy: torch.Tensor,
                     timesteps: torch.Tensor, batch_conditioning: Mapping[str, torch.Tensor],
                     drop_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The U-Net's prediction (v or epsilon, per the config) for `noisy` [B, C, s, s] at `timesteps` [B] or scalar.

    For guidance, stack the conditional and unconditional halves in one batch with `drop_mask` True on the second.
    """
    dtype = next(unet.parameters()).dtype
    images = condition_images(batch_conditioning, noisy.shape[-1], drop_mask)
    vector, tokens = condition_encoder(batch_conditioning, drop_mask)
    sample = torch.cat([noisy, images.to(noisy.dtype)], dim=1).to(dtype)
    return unet(sample, timesteps, encoder_hidden_states=tokens.to(dtype), class_labels=vector.to(dtype)).sample


class Denoiser(nn.Module):
    """U-Net + condition encoder as one module, so training has one optimiser, one EMA and one `prepare` call."""

    def __init__(self, unet: UNet2DConditionModel, condition_encoder: ConditionEncoder) -> None:
        super().__init__()
        self.unet = unet
        self.condition_encoder = condition_encoder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, batch: Mapping[str, torch.Tensor],
                drop_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return denoiser_forward(self.unet, self.condition_encoder, noisy, timesteps, batch, drop_mask)


def build_autoencoder(config: XDiffusionConfig) -> AutoencoderKL:
    """KL autoencoder for a target slice's channels (image, and tumour where the denoiser draws it); spatial factor
    `config.autoencoder.downsample`."""
    a = config.autoencoder
    levels = len(a.block_out_channels)
    return AutoencoderKL(
        in_channels=config.image_channels, out_channels=config.image_channels, latent_channels=a.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=a.block_out_channels, layers_per_block=a.layers_per_block,
        norm_num_groups=a.norm_num_groups, sample_size=config.cube_size)


def encode_target(autoencoder: AutoencoderKL, target: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """[B, 4, S, S] -> scaled latents; the posterior mode keeps encoding deterministic for training targets."""
    return autoencoder.encode(target).latent_dist.mode() * latent_scale


def decode_latent(autoencoder: AutoencoderKL, latents: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """Inverse of `encode_target`: scaled latents -> [B, 4, S, S] in [-1, 1]-ish units."""
    return autoencoder.decode(latents / latent_scale).sample


class LatentTargets:
    """A DataLoader collate that also encodes the batch's targets with the frozen autoencoder (posterior mode, as
    `Trainer.loss` would), as ``target_latent``; it runs in the loader's worker process."""

    def __init__(self, autoencoder: AutoencoderKL, latent_scale: float) -> None:
        self.autoencoder, self.latent_scale = autoencoder, latent_scale

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = default_collate(samples)
        with torch.no_grad():
            batch["target_latent"] = encode_target(self.autoencoder, batch["target"], self.latent_scale)
        return batch


def min_snr_weights(noise: DDPMScheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023): min(SNR, gamma) on the clean-sample error, put in
    terms of what the network predicts (divided by SNR for noise, by SNR + 1 for v), as diffusers' examples do."""
    from diffusers.training_utils import compute_snr  # training only: inference never imports training utilities

    snr = compute_snr(noise, timesteps)
    return snr.clamp(max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
