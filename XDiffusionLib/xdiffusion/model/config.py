"""The model's hyper-parameters in one typed, JSON-serialisable place.

A saved model folder stores this next to its weights, so a folder alone says how to rebuild (and check) the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import InputError

PREDICTION_TYPES = ("v_prediction", "epsilon")
IMAGE_CHANNELS = 4  # image + tumour labels 1, 2, 3 (docs/architecture.md, `target`)
LABEL_MAPS = 3  # BraTS labels 1, 2, 3
ATLAS_MAPS = 2  # the registered atlas guess in the view, and where it is present (1) or withheld (0)


@dataclass
class AutoencoderConfig:
    """The KL autoencoder of latent mode; `downsample` is its spatial factor (2, 4 or 8)."""

    latent_channels: int = 4
    downsample: int = 4
    base_channels: int = 32
    layers_per_block: int = 1
    norm_num_groups: int = 32
    kl_weight: float = 1e-6

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        levels = int(math.log2(self.downsample))
        return (self.base_channels,) + (2 * self.base_channels,) * levels


@dataclass
class UNetConfig:
    """Widths of the diffusers U-Net; `cross_attention` says which resolution levels attend to the condition tokens."""

    block_out_channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    cross_attention: tuple[bool, ...] = (False, True, True)
    cross_attention_dim: int = 128
    attention_head_dim: int = 32
    norm_num_groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        """The diffusers U-Net's time-embedding width, which the condition vector is added to."""
        return 4 * self.block_out_channels[0]


@dataclass
class ConditioningConfig:
    """Sizes inside the `ConditionEncoder`."""

    hidden_dim: int = 128
    plane_embed_dim: int = 16
    fourier_features: int = 6
    modality_embed_dim: int = 16


@dataclass
class XDiffusionConfig:
    """Everything needed to rebuild the denoiser; `latent_scale` is measured after the autoencoder is trained."""

    cube_size: int = 64
    max_inputs: int = 4
    modalities: list[str] = field(default_factory=lambda: ["t1", "t2"])
    latent: bool = False
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    cfg_dropout: float = 0.1
    latent_scale: float = 1.0
    # issue 13/14/17 conditioning; all off in models saved before they existed (their configs lack the keys)
    tumour_in_target: bool = True  # False: the denoiser draws the image only; labels come from the pixel-space label net
    label_conditioning: bool = False  # the input slices' tumour labels, extruded into each view, condition the image
    slab_conditioning: bool = False  # each input slot carries its slab thickness (a thick slice is a slab mean)
    atlas_conditioning: bool = False  # the atlas registered to the input slices, in each view (issue 13 item 4)

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities)
        self.unet.block_out_channels = tuple(int(c) for c in self.unet.block_out_channels)
        self.unet.cross_attention = tuple(bool(a) for a in self.unet.cross_attention)
        problems = []
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}, not {self.prediction_type!r}")
        if len(self.unet.cross_attention) != len(self.unet.block_out_channels):
            problems.append("unet.cross_attention needs one entry per unet.block_out_channels entry")
        if self.latent and self.autoencoder.downsample not in (2, 4, 8):
            problems.append("autoencoder.downsample must be 2, 4 or 8")
        if self.cube_size % (self.downsample * 2 ** (len(self.unet.block_out_channels) - 1)):
            problems.append(f"cube_size {self.cube_size} must be divisible by the downsample factor times the U-Net's "
                            f"{2 ** (len(self.unet.block_out_channels) - 1)}x reduction")
        if not self.modalities or self.max_inputs < 1 or not 0.0 <= self.cfg_dropout < 1.0:
            problems.append("need at least one modality, max_inputs >= 1 and 0 <= cfg_dropout < 1")
        if problems:
            raise InputError("invalid model config: " + "; ".join(problems))

    @property
    def downsample(self) -> int:
        """Side of the U-Net grid relative to the cube: 1 in pixel space."""
        return self.autoencoder.downsample if self.latent else 1

    @property
    def unet_size(self) -> int:
        return self.cube_size // self.downsample

    @property
    def image_channels(self) -> int:
        """Channels of a target slice: the image, plus the three tumour labels where they are drawn by the denoiser."""
        return IMAGE_CHANNELS if self.tumour_in_target else 1

    @property
    def target_channels(self) -> int:
        """Channels the U-Net denoises: the slice's image channels, or the autoencoder's latent channels."""
        return self.autoencoder.latent_channels if self.latent else self.image_channels

    @property
    def condition_image_channels(self) -> int:
        """Pixel-aligned conditioning images at cube resolution: inputs, presence maps, guess, known distance, and
        the extruded input labels (one map per BraTS label) when the model is label-conditioned, and the atlas guess
        with its presence map when it is atlas-conditioned."""
        return (2 * self.max_inputs + 2 + (LABEL_MAPS if self.label_conditioning else 0)
                + (ATLAS_MAPS if self.atlas_conditioning else 0))

    @property
    def unet_in_channels(self) -> int:
        return self.target_channels + self.condition_image_channels * self.downsample**2

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet"]["block_out_channels"] = list(self.unet.block_out_channels)
        data["unet"]["cross_attention"] = list(self.unet.cross_attention)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "XDiffusionConfig":
        """Build from a (possibly partial) dict, refusing unknown keys so typos do not pass silently."""
        data = dict(data)
        nested = {"autoencoder": AutoencoderConfig, "unet": UNetConfig, "conditioning": ConditioningConfig}
        for name, sub in nested.items():
            if name in data:
                data[name] = _build(sub, data[name], f"model.{name}")
        return _build(cls, data, "model")

    def to_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "XDiffusionConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _build(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping, not {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**data)


def preset(name: str) -> XDiffusionConfig:
    """`tiny`: pixel space at 16^3, milliseconds per step, for tests. `cpu_default`: 64^3 in 16^2 latents, for 2 cores."""
    if name == "tiny":
        return XDiffusionConfig(
            cube_size=16,
            latent=False,
            autoencoder=AutoencoderConfig(latent_channels=4, downsample=2, base_channels=8, norm_num_groups=4),
            unet=UNetConfig(block_out_channels=(16, 32), layers_per_block=1, cross_attention=(False, True),
                            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
            conditioning=ConditioningConfig(hidden_dim=32, plane_embed_dim=4, fourier_features=4,
                                            modality_embed_dim=4),
        )
    if name == "cpu_default":
        return XDiffusionConfig(cube_size=64, latent=True)
    raise InputError(f"unknown model preset {name!r} (known: tiny, cpu_default)")
