"""The denoiser (conditioning encoder + diffusers U-Net), its optional autoencoder, saved-model folders and training.

The sampling loop calls `denoiser_forward`; everything else it needs comes from `load_model`.
"""

from .checkpoint import XDiffusionModel, load_model, save_model
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig, preset
from .networks import (Denoiser, build_autoencoder, build_unet, decode_latent, denoiser_forward, encode_target,
                       init_unet_from_pretrained)

__all__ = [
    "ConditionEncoder", "Denoiser", "XDiffusionConfig", "XDiffusionModel", "autoencoder_metrics", "build_autoencoder",
    "build_unet", "decode_latent", "denoiser_forward", "encode_target", "init_unet_from_pretrained", "load_model",
    "measure_latent_scale", "preset", "save_model", "train_autoencoder",
]


def __getattr__(name: str):
    """The autoencoder's training (`autoencoder_training`) loads only when asked for: sampling never needs it."""
    if name in ("autoencoder_metrics", "measure_latent_scale", "train_autoencoder"):
        from . import autoencoder_training

        return getattr(autoencoder_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
