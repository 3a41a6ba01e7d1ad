"""Training the autoencoder of a latent model: its loss, the fit, its latent scale and its held-out metrics.

Training code: inference never imports this module (`networks.py` holds what sampling needs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from .. import __version__
from .checkpoint_files import replace_dir
from .networks import build_autoencoder

if TYPE_CHECKING:
    from .config import XDiffusionConfig
    from .train_config import TrainConfig

AUTOENCODER_RECORD = "latent_scale.json"  # in the run's autoencoder/: its latent scale and how it was trained
UNRECORDED_AUTOENCODER = ("not recorded: this run's autoencoder was trained before its settings were saved with it; "
                          "the run's config, re-read with today's defaults at every resume, does not say how")


METRIC_CHUNK = 32  # held-out slices through the autoencoder at a time


def autoencoder_metrics(autoencoder: AutoencoderKL, target: torch.Tensor) -> dict[str, Optional[float]]:
    """Reconstruction PSNR of the image channel (range [-1, 1], so peak-to-peak 2) and Dice of each tumour channel
    (positive = inside), pooled over the batch. Pass held-out slices: the training batches say nothing about unseen
    data. A label absent from the truth has no Dice (``None``, not a free 1.0), and ``dice`` is the mean over the
    labels present (``None`` if none is).
    """
    from ..evaluate import dice as dice_overlap, psnr  # scikit-image: not on the GPU pack's training path

    with torch.no_grad():  # in chunks: thousands of held-out 128^2 slices at once took 23 GB (an OOM kill)
        recon = torch.cat([autoencoder.decode(autoencoder.encode(target[i:i + METRIC_CHUNK]).latent_dist.mode()).sample
                           .clamp(-1, 1).float().cpu() for i in range(0, target.shape[0], METRIC_CHUNK)])
    recon, target = recon.numpy(), target.float().cpu().numpy()
    metrics: dict[str, Optional[float]] = {"psnr": psnr((target[:, 0] + 1.0) / 2.0, (recon[:, 0] + 1.0) / 2.0)}
    dices = []
    for channel in range(1, target.shape[1]):
        truth, guess = target[:, channel] > 0, recon[:, channel] > 0
        dice = dice_overlap(truth, guess) if truth.any() else None
        metrics[f"dice_label{channel}"] = dice
        dices += [dice] if dice is not None else []
    metrics["dice"] = sum(dices) / len(dices) if dices else None
    return metrics


def autoencoder_loss(recon: torch.Tensor, target: torch.Tensor, tumour_weight: float) -> torch.Tensor:
    """L1 on the image channel plus L1 on the tumour channels with tumour pixels weighted up: tumours cover a few
    percent of a slice, and unweighted L1 is minimised by never drawing one (a measured failure, Dice 0)."""
    image = F.l1_loss(recon[:, :1], target[:, :1])
    if target.shape[1] == 1:  # an image-only autoencoder (labels live in pixel space)
        return image
    weights = 1.0 + (tumour_weight - 1.0) * (target[:, 1:] > 0).to(recon.dtype)
    tumour = (weights * (recon[:, 1:] - target[:, 1:]).abs()).sum() / weights.sum()
    return image + tumour


def train_autoencoder(autoencoder: AutoencoderKL, targets: Iterable[torch.Tensor], steps: int, lr: float = 1e-3,
                      kl_weight: float = 1e-6, device: Union[str, torch.device] = "cpu", tumour_weight: float = 20.0,
                      decoder_only: bool = False) -> None:
    """Fit the autoencoder on batches of targets [B, 4, S, S] (`autoencoder_loss` + a small KL that keeps latents
    bounded for diffusion), then freeze it; measure it with `autoencoder_metrics` on held-out slices.

    ``decoder_only`` keeps the encoder, and so every latent a U-Net was trained on, unchanged.
    """
    if steps < 1:
        raise ValueError("train_autoencoder needs steps >= 1")
    autoencoder.to(device).train()
    trained = autoencoder.decoder.parameters() if decoder_only else autoencoder.parameters()
    parameters = list(trained) + (list(autoencoder.post_quant_conv.parameters()) if decoder_only and autoencoder.post_quant_conv is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    batches: Iterator[torch.Tensor] = iter(targets)
    for _ in range(steps):
        target = next(batches).to(device)
        if decoder_only:
            with torch.no_grad():
                latents = autoencoder.encode(target).latent_dist.sample()
            loss = autoencoder_loss(autoencoder.decode(latents).sample, target, tumour_weight)
        else:
            posterior = autoencoder.encode(target).latent_dist
            recon = autoencoder.decode(posterior.sample()).sample
            loss = autoencoder_loss(recon, target, tumour_weight) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
    autoencoder.eval().requires_grad_(False)


def measure_latent_scale(autoencoder: AutoencoderKL, targets: Iterable[torch.Tensor], batches: int = 8,
                         device: Union[str, torch.device] = "cpu") -> float:
    """1 / std of the latents over a few batches, so the diffusion sees unit-variance data as its noise schedule
    assumes."""
    values = []
    with torch.no_grad():
        for _, target in zip(range(batches), targets):
            values.append(autoencoder.encode(target.to(device)).latent_dist.mode().flatten().float())
    return float(1.0 / torch.cat(values).std().clamp(min=1e-6))


def save_run_autoencoder(folder: Path, config: XDiffusionConfig, train: TrainConfig, targets: Iterator[torch.Tensor],
                         device: Union[str, torch.device]) -> None:
    """A run's autoencoder: trained on ``targets`` (or taken from `train.autoencoder_from`), its latent scale measured
    (or kept from the other run's record: its denoiser, which a run continued with `init_from` starts from, was
    trained at that scale), then saved in ``folder`` with both, and how it was trained, in `AUTOENCODER_RECORD`;
    renamed into place complete."""
    if train.autoencoder_from:
        source = Path(train.autoencoder_from)
        autoencoder = AutoencoderKL.from_pretrained(source, use_safetensors=True, local_files_only=True)
        earlier = source / AUTOENCODER_RECORD  # present when it comes from another run's autoencoder/
        saved = json.loads(earlier.read_text(encoding="utf-8")) if earlier.is_file() else {}
        record = {**(saved.get("training") or {"note": UNRECORDED_AUTOENCODER}),  # how the other run trained it,
                  "trained_in_this_run": False, "from": str(source)}  # but not in this run, whatever it recorded
        scale = saved.get("latent_scale")
    else:
        autoencoder = build_autoencoder(config)
        train_autoencoder(autoencoder, targets, train.autoencoder_steps, lr=train.autoencoder_lr,
                          tumour_weight=train.autoencoder_tumour_weight,
                          kl_weight=config.autoencoder.kl_weight, device=device)
        image_only = config.image_channels == 1  # `autoencoder_loss` then has no tumour term
        record = {
            "trained_in_this_run": True, "steps": train.autoencoder_steps,
            "batch_size": train.batch_size, "lr": train.autoencoder_lr,
            "loss": "L1 on the image channel (image only: labels are the label net's), + KL" if image_only else
                    "L1 on the image channel + L1 on the tumour channels with tumour pixels weighted up, + KL",
            "tumour_weight": None if image_only else train.autoencoder_tumour_weight,
            "kl_weight": config.autoencoder.kl_weight, "seed": train.seed,
            "xdiffusion_version": __version__,
        }
        scale = None
    if scale is None:
        scale = measure_latent_scale(autoencoder.to(device).eval(), targets, device=device)
    staging = folder.with_name(".autoencoder.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    autoencoder.save_pretrained(staging, safe_serialization=True)
    (staging / AUTOENCODER_RECORD).write_text(json.dumps({"latent_scale": scale, "training": record}) + "\n")
    replace_dir(staging, folder)
