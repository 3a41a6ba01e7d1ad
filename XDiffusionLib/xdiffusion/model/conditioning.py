"""Learned embedding of everything the denoiser is told besides pixels: which slices are given, where, the view and
the target depth, and the modality.

It produces a vector added to the U-Net's time embedding (global, cheap, reaches every block) and a few tokens for
cross-attention (one per input slot plus one for the view), so the U-Net can attend to individual inputs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .config import XDiffusionConfig


def fourier_features(x: torch.Tensor, count: int) -> torch.Tensor:
    """`x` in [-1, 1] -> (..., 1 + 2*count): octave sines/cosines resolve nearby depths an MLP alone would blur."""
    freqs = math.pi * 2.0 ** torch.arange(count, device=x.device, dtype=x.dtype)
    angles = x[..., None] * freqs
    return torch.cat([x[..., None], torch.sin(angles), torch.cos(angles)], dim=-1)


def rotation_6d(rotation: torch.Tensor) -> torch.Tensor:
    """First two columns of R: a continuous rotation code (a quaternion or Euler angles would have jumps)."""
    return rotation[..., :, :2].transpose(-1, -2).reshape(*rotation.shape[:-2], 6)


def slab_feature(thickness: torch.Tensor) -> torch.Tensor:
    """Slab thickness (cube half-widths) -> a roughly unit-range feature; absent slots (0) map to the thin end."""
    return (torch.log(thickness.clamp(min=1e-3)) + 3.0) / 2.0


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, dim_out))


class ConditionEncoder(ModelMixin, ConfigMixin):
    """Conditioning dict (docs/architecture.md) -> (vector [B, embed_dim], tokens [B, max_inputs + 1, token_dim]).

    Rows flagged in `drop` get a learned null vector and null tokens instead (classifier-free guidance).
    A diffusers model: its init arguments are its config (`for_model` derives them from a model's
    `XDiffusionConfig`). A saved model keeps its own layout (model/checkpoint.py): `condition_encoder/config.json`
    holds `init_kwargs` alone and `condition_encoder/model.safetensors` the weights, checked by SHA-256 on loading.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, max_inputs: int, num_modalities: int, embed_dim: int, token_dim: int, hidden_dim: int = 128,
                 plane_embed_dim: int = 16, fourier_features: int = 6, modality_embed_dim: int = 16,
                 slab_thickness: bool = False) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = dict(
            max_inputs=max_inputs, num_modalities=num_modalities, embed_dim=embed_dim, token_dim=token_dim,
            hidden_dim=hidden_dim, plane_embed_dim=plane_embed_dim, fourier_features=fourier_features,
            modality_embed_dim=modality_embed_dim, slab_thickness=slab_thickness)
        self.num_fourier = fourier_features
        self.slab_thickness = slab_thickness
        position_dim = 1 + 2 * fourier_features
        self.plane_embedding = nn.Embedding(3, plane_embed_dim)
        self.slot_embedding = nn.Embedding(max_inputs, hidden_dim)
        self.absent_slot = nn.Parameter(torch.zeros(hidden_dim))
        self.slot_mlp = _mlp(plane_embed_dim + position_dim + int(slab_thickness), hidden_dim, hidden_dim)
        self.modality_embedding = nn.Embedding(num_modalities, modality_embed_dim)
        self.view_mlp = _mlp(6 + position_dim + modality_embed_dim, hidden_dim, hidden_dim)
        self.to_vector = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden_dim, embed_dim))
        self.to_tokens = nn.Linear(hidden_dim, token_dim)
        # the vector is added to a (possibly pretrained) time embedding: start at zero so training starts from it
        nn.init.zeros_(self.to_vector[1].weight)
        nn.init.zeros_(self.to_vector[1].bias)
        self.null_vector = nn.Parameter(torch.zeros(embed_dim))
        self.null_tokens = nn.Parameter(torch.randn(max_inputs + 1, token_dim) * 0.02)

    @classmethod
    def for_model(cls, config: XDiffusionConfig) -> "ConditionEncoder":
        """The encoder a model of ``config`` uses (`from_config`, diffusers' own, takes the init arguments instead)."""
        c = config.conditioning
        return cls(max_inputs=config.max_inputs, num_modalities=len(config.modalities),
                   embed_dim=config.unet.time_embed_dim, token_dim=config.unet.cross_attention_dim,
                   hidden_dim=c.hidden_dim, plane_embed_dim=c.plane_embed_dim, fourier_features=c.fourier_features,
                   modality_embed_dim=c.modality_embed_dim, slab_thickness=config.slab_conditioning)

    def forward(self, batch: Mapping[str, torch.Tensor],
                drop: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        present = batch["input_present"].to(self.absent_slot.dtype)
        batch_size, slots = present.shape
        plane = self.plane_embedding(batch["input_plane"].round().long().clamp(0, 2))
        position = fourier_features(batch["input_position"].to(present.dtype), self.num_fourier)
        slot_index = torch.arange(slots, device=present.device)
        features = [plane, position]
        if self.slab_thickness:  # log scale: thin (~2/S) and 8 mm slabs differ by a factor, not an offset
            features.append(slab_feature(batch["input_thickness"].to(present.dtype))[..., None])
        slot = self.slot_mlp(torch.cat(features, dim=-1)) + self.slot_embedding(slot_index)
        slot = present[..., None] * slot + (1 - present[..., None]) * self.absent_slot

        modality = self.modality_embedding(batch["modality"].round().long().reshape(batch_size))
        view = self.view_mlp(torch.cat([
            rotation_6d(batch["rotation"].to(present.dtype)),
            fourier_features(batch["depth"].to(present.dtype).reshape(batch_size), self.num_fourier),
            modality], dim=-1))

        pooled = (present[..., None] * slot).sum(1) / present.sum(1, keepdim=True).clamp(min=1.0)
        vector = self.to_vector(torch.cat([view, pooled], dim=-1))
        tokens = self.to_tokens(torch.cat([view[:, None], slot], dim=1))
        if drop is not None:
            keep = (~drop.to(device=vector.device, dtype=torch.bool)).to(vector.dtype)
            vector = keep[:, None] * vector + (1 - keep[:, None]) * self.null_vector
            tokens = keep[:, None, None] * tokens + (1 - keep[:, None, None]) * self.null_tokens
        return vector, tokens
