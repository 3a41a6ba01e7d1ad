"""What the small side networks' trainings (label net, through-plane net) share: their set-up from a campaign
config, the learning-rate schedule, the optimiser step, the validation log and the resume point.

Each run appends one CSV row per validation, keeps its best weights in one folder and its last in another; a rerun
continues from the last weights at the largest logged step. Columns may be added between runs, so a row is read by
name and a missing cell is None rather than an error.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Type, TypeVar

import torch
from diffusers import ModelMixin

Net = TypeVar("Net", bound=ModelMixin)


def campaign_setup(config: str | Path, output: Optional[Path] = None) -> tuple[int, list, Path]:
    """(seed, training subjects, output folder) of a campaign config: only its training split is ever read."""
    from .model.training import resolve_config
    from .training_run import DataConfig, split_subjects

    resolved = resolve_config(config)
    data = DataConfig(**(resolved.get("data") or {}))
    subjects, _ = split_subjects(data)
    return data.seed, subjects, output or Path(resolved["train"]["output_dir"])


def cosine_schedule(optimiser: torch.optim.Optimizer, steps: int, start_step: int = 0,
                    floor: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate from its full value down to ``floor`` of it at ``steps`` along a half cosine, picking up at
    ``start_step`` for a resumed run (no fast-forwarding of a scheduler before the first update)."""
    def factor(done: int) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(done + start_step, steps) / max(1, steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def optimiser_step(net: torch.nn.Module, loss: torch.Tensor, optimiser: torch.optim.Optimizer,
                   schedule: torch.optim.lr_scheduler.LRScheduler) -> float:
    """One update with the gradient norm clipped to 1 (a rare bad crop cannot throw the small net off); the loss."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimiser.step()
    schedule.step()
    return loss.item()


def logged(log: Path, column: str) -> list[Optional[float]]:
    """One column of the log as numbers, None where a row lacks it (a log begun before the column existed)."""
    if not log.is_file():
        return []
    with log.open(newline="") as handle:
        cells = [row.get(column) for row in csv.DictReader(handle)]
    return [float(cell) if cell not in (None, "", "None") else None for cell in cells]


def best_logged(log: Path, column: str, default: float) -> float:
    """The best (largest) value of ``column`` so far, ``default`` for a new log: what new weights must beat."""
    return max((value for value in logged(log, column) if value is not None), default=default)


def append_row(log: Path, row: dict) -> None:
    """Append one row; a log with other columns is rewritten under their union first, so every row stays readable."""
    rows: list[dict] = []
    columns = list(row)
    if log.is_file():
        with log.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            old = list(reader.fieldnames or [])
        columns = old + [name for name in row if name not in old]
        if columns == old:
            with log.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=columns).writerow(row)
            return
    with log.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([*rows, row])


def resume_from(log: Path, weights: Path, net_class: Type[Net]) -> tuple[Optional[Net], int]:
    """The last saved weights and the largest logged step, or (None, 0) when either is missing (a fresh run)."""
    if not (log.is_file() and (weights / "config.json").is_file()):
        return None, 0
    steps = [int(value) for value in logged(log, "step") if value is not None]
    return net_class.from_pretrained(weights, use_safetensors=True), max(steps, default=0)
