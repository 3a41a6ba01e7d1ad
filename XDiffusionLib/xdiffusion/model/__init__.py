"""The denoiser (conditioning encoder + diffusers U-Net), its optional autoencoder, saved-model folders and training.

The sampling loop calls `denoiser_forward`; everything else it needs comes from `load_model`.
"""

from .checkpoint import XDiffusionModel, load_model, save_model
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig, preset
from .networks import (Denoiser, autoencoder_metrics, build_autoencoder, build_unet, decode_latent, denoiser_forward,
                       encode_target, init_unet_from_pretrained, measure_latent_scale, train_autoencoder)

__all__ = [
    "ConditionEncoder", "Denoiser", "XDiffusionConfig", "XDiffusionModel", "autoencoder_metrics", "build_autoencoder",
    "build_unet", "decode_latent", "denoiser_forward", "encode_target", "init_unet_from_pretrained", "load_model",
    "measure_latent_scale", "preset", "save_model", "train_autoencoder",
]
