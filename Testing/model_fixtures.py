"""Shared by the model tests: random conditioning batches in the sample format of docs/architecture.md, and one
thread per test."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
import torch


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size, slots = config.cube_size, config.max_inputs
    present = (torch.rand(batch_size, slots, generator=g) < 0.5).float()
    present[:, 0] = 1.0
    rotation, _ = torch.linalg.qr(torch.randn(batch_size, 3, 3, generator=g))
    return {
        "target": torch.randn(batch_size, 4, size, size, generator=g).clamp(-1, 1),
        "inputs": torch.randn(batch_size, slots, size, size, generator=g) * present[..., None, None],
        "input_present": present,
        "input_plane": torch.randint(0, 3, (batch_size, slots), generator=g).float(),
        "input_position": torch.rand(batch_size, slots, generator=g) * 2 - 1,
        "guess": torch.randn(batch_size, 1, size, size, generator=g),
        "known_distance": torch.rand(batch_size, 1, size, size, generator=g),
        "rotation": rotation,
        "depth": torch.rand(batch_size, generator=g) * 2 - 1,
        "modality": torch.randint(0, len(config.modalities), (batch_size,), generator=g).float(),
    }


def save_untrained(folder: Path, config, card: Optional[dict] = None, label_net=None, seed: Optional[int] = None) -> Path:
    """An untrained model of ``config`` saved as a model folder (its scheduler as training would make it), for tests
    that need a loadable model but not a trained one; ``seed`` fixes its weights."""
    from diffusers import DDPMScheduler

    from xdiffusion.model import ConditionEncoder, build_unet, save_model

    if seed is not None:
        torch.manual_seed(seed)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, prediction_type=config.prediction_type)
    return save_model(folder, build_unet(config).eval(), ConditionEncoder.for_model(config).eval(), None,
                      dict(scheduler.config), config, card or {}, label_net=label_net)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny networks gain nothing from threads, and OpenMP spin-waiting on a shared 2-core machine can slow them
    fifty-fold; one thread keeps these tests fast and their timing stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
