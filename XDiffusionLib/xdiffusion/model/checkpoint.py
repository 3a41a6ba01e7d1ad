"""The saved-model folder (diffusers layout) and its integrity checks.

    unet/                 config.json + diffusion_pytorch_model.safetensors
    condition_encoder/    config.json + model.safetensors
    vae/                  (latent models only) config.json + diffusion_pytorch_model.safetensors
    label_net/            (models with pixel-space tumour labels) config.json + diffusion_pytorch_model.safetensors
    scheduler/            scheduler_config.json
    xdiffusion_config.json, model_index.json, model_card.json (with the SHA-256 of every weight file), README.md

Weights are safetensors only (loading them cannot run code) and are checked against the card before use, so a
truncated download or an edited file is refused with one line instead of producing silent garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..checksums import sha256_file
from ..errors import ModelError
from ..io import atomic_output
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig

if TYPE_CHECKING:  # MONAI (behind the label net) takes seconds to import: only models with a label net pay for it
    from .label_net import TumourLabelNet

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
ENCODER_WEIGHTS = "condition_encoder/model.safetensors"
VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
LABEL_NET_WEIGHTS = "label_net/diffusion_pytorch_model.safetensors"


@dataclass
class XDiffusionModel:
    """The parts a sampler needs; what `load_model` returns and what training hands to its validation hook."""

    config: XDiffusionConfig
    unet: UNet2DConditionModel
    condition_encoder: ConditionEncoder
    autoencoder: Optional[AutoencoderKL]
    scheduler_config: dict[str, Any]
    model_card: dict[str, Any] = field(default_factory=dict)
    label_net: Optional["TumourLabelNet"] = None  # pixel-space tumour labels (models whose denoiser draws none)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _readme(card: dict[str, Any]) -> str:
    lines = ["# XDiffusion model", "", "Generates synthetic MRI volumes: a research tool, not for diagnosis.", ""]
    for key in sorted(k for k in card if k != "sha256"):
        lines.append(f"- **{key}**: {json.dumps(card[key], default=str)}")
    lines += ["", "## SHA-256 of the weight files", ""]
    lines += [f"- `{name}`: `{digest}`" for name, digest in sorted(card["sha256"].items())]
    return "\n".join(lines) + "\n"


def save_model(folder: Union[str, Path], unet: UNet2DConditionModel, condition_encoder: ConditionEncoder,
               autoencoder: Optional[AutoencoderKL], scheduler_config: dict[str, Any], config: XDiffusionConfig,
               model_card: dict[str, Any], label_net: Optional["TumourLabelNet"] = None) -> Path:
    """Write the model folder atomically: it is built beside the target and renamed into place, so readers see the
    old folder or the new one, never half of one. Returns the folder."""
    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        unet.save_pretrained(staging / "unet", safe_serialization=True, max_shard_size="1000GB")
        _write_json(staging / "condition_encoder" / "config.json", condition_encoder.init_kwargs)
        save_file({k: v.detach().contiguous().cpu() for k, v in condition_encoder.state_dict().items()},
                  str(staging / ENCODER_WEIGHTS))
        parts = {"unet": ["diffusers", "UNet2DConditionModel"],
                 "condition_encoder": ["xdiffusion.model.conditioning", "ConditionEncoder"],
                 "scheduler": ["diffusers", "DDPMScheduler"]}
        weights = [UNET_WEIGHTS, ENCODER_WEIGHTS]
        if autoencoder is not None:
            autoencoder.save_pretrained(staging / "vae", safe_serialization=True, max_shard_size="1000GB")
            parts["vae"] = ["diffusers", "AutoencoderKL"]
            weights.append(VAE_WEIGHTS)
        if label_net is not None:
            label_net.save_pretrained(staging / "label_net", safe_serialization=True)
            parts["label_net"] = ["xdiffusion.model.label_net", "TumourLabelNet"]
            weights.append(LABEL_NET_WEIGHTS)
        _write_json(staging / "scheduler" / "scheduler_config.json", dict(scheduler_config))
        config.to_json(staging / "xdiffusion_config.json")
        _write_json(staging / "model_index.json", {"_class_name": "XDiffusionModel", **parts})
        card = dict(model_card)
        card["sha256"] = {name: sha256_file(staging / name) for name in weights}
        _write_json(staging / "model_card.json", card)
        (staging / "README.md").write_text(_readme(card))
        os.chmod(staging, 0o755)
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, retired / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def update_model_card(folder: Union[str, Path], changes: dict[str, Any]) -> dict[str, Any]:
    """Set ``changes`` in a saved model's card (a None value removes the key) and rewrite its README; the weights and
    their SHA-256 stay as they are. For facts measured after saving (held-out metrics, what a field really was)."""
    folder = Path(folder)
    card = _read_json(folder / "model_card.json")
    if "sha256" in changes:
        raise ModelError("the weight hashes are not edited by hand; save the model again instead")
    for key, value in changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    for name, text in (("model_card.json", json.dumps(card, indent=2, sort_keys=True, default=str) + "\n"),
                       ("README.md", _readme(card))):
        with atomic_output(folder / name) as temporary:
            temporary.write_text(text)
    return card


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model folder is incomplete: {path} is missing") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None


def _verified_weights(folder: Path, name: str, hashes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read a weight file once, check its bytes against the card, and only then parse them."""
    if name not in hashes:
        raise ModelError(f"the model card in {folder} has no SHA-256 for {name}; refusing to load unverified weights")
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model folder is incomplete: {folder / name} is missing") from None
    if hashlib.sha256(data).hexdigest() != hashes[name]:
        raise ModelError(f"{folder / name} does not match the SHA-256 in its model card (corrupted or modified)")
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors' errors name internals, not the file
        raise ModelError(f"{folder / name} is not a valid safetensors file: {error}") from None


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, folder: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ModelError(f"the {what} weights in {folder} do not match its config: {detail}") from None


@contextlib.contextmanager
def _diffusers_errors_only():
    """diffusers warns on a dtype cast that "modules ... should be kept in float32: []" even when none are: on every
    bfloat16 run that line would reach the user's stderr (and break JSON progress)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def load_model(folder: Union[str, Path], device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32) -> XDiffusionModel:
    """Load a folder written by `save_model`, refusing (ModelError) anything whose hashes or configs do not match."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    card = _read_json(folder / "model_card.json")
    hashes = card.get("sha256") if isinstance(card, dict) else None
    if not isinstance(hashes, dict):
        raise ModelError(f"the model card in {folder} lists no weight hashes")
    index = _read_json(folder / "model_index.json")
    try:
        config = XDiffusionConfig.from_dict(_read_json(folder / "xdiffusion_config.json"))
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"invalid xdiffusion_config.json in {folder}: {error}") from None
    if config.latent != ("vae" in index):
        raise ModelError(f"xdiffusion_config.json says latent={config.latent} but model_index.json "
                         f"{'lists' if 'vae' in index else 'lacks'} a vae in {folder}")
    weights = [UNET_WEIGHTS, ENCODER_WEIGHTS] + ([VAE_WEIGHTS] if config.latent else [])
    weights += [LABEL_NET_WEIGHTS] if "label_net" in index else []
    states = {name: _verified_weights(folder, name, hashes) for name in weights}

    try:
        unet = UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json"))
        encoder = ConditionEncoder(**_read_json(folder / "condition_encoder" / "config.json"))
        autoencoder = AutoencoderKL.from_config(_read_json(folder / "vae" / "config.json")) if config.latent else None
        label_net = None
        if "label_net" in index:
            from .label_net import TumourLabelNet

            label_net = TumourLabelNet.from_config(_read_json(folder / "label_net" / "config.json"))
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"cannot build the networks described in {folder}: {error}") from None
    expected = {
        "unet in_channels": (unet.config.in_channels, config.unet_in_channels),
        "unet out_channels": (unet.config.out_channels, config.target_channels),
        "unet class_embed_type": (unet.config.class_embed_type, "identity"),
        "unet cross_attention_dim": (unet.config.cross_attention_dim, config.unet.cross_attention_dim),
        "condition encoder": (encoder.init_kwargs, ConditionEncoder.for_model(config).init_kwargs),
    }
    if autoencoder is not None:
        expected["vae latent_channels"] = (autoencoder.config.latent_channels, config.autoencoder.latent_channels)
        expected["vae downsample"] = (2 ** (len(autoencoder.config.block_out_channels) - 1), config.downsample)
    wrong = [what for what, (found, wanted) in expected.items() if found != wanted]
    if wrong:
        raise ModelError(f"xdiffusion_config.json in {folder} does not match the saved networks ({', '.join(wrong)})")
    _load_into(unet, states[UNET_WEIGHTS], "U-Net", folder)
    _load_into(encoder, states[ENCODER_WEIGHTS], "condition encoder", folder)
    if autoencoder is not None:
        _load_into(autoencoder, states[VAE_WEIGHTS], "autoencoder", folder)
    if label_net is not None:
        _load_into(label_net, states[LABEL_NET_WEIGHTS], "tumour label net", folder)
    parts = [part for part in (unet, encoder, autoencoder, label_net) if part is not None]
    for part in parts:
        part.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:  # diffusers warns on every dtype cast, float32 included: cast only when needed
            with _diffusers_errors_only():
                part.to(dtype)
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    return XDiffusionModel(config, unet, encoder, autoencoder, scheduler_config, card, label_net)
