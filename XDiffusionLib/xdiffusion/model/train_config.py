"""A training run's config: the `train:` section (`TrainConfig`), the config file with its `section.key=value`
overrides and model preset resolved into one dict (`resolve_config`), and the run's config history (one line per
start of the run), from which the model card says which config trained which steps."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from ..atomic_files import atomic_output
from ..errors import InputError
from .config import XDiffusionConfig, preset

AUTOENCODER_KEYS = ("autoencoder_from", "autoencoder_steps", "autoencoder_lr", "autoencoder_tumour_weight")
CONFIG_HISTORY = "config_history.jsonl"  # one line per start of the run: the step it started at, its config


@dataclass
class TrainConfig:
    """The `train:` section. `resume` is "", "latest" or a checkpoint folder; `init_from` a local diffusers
    SD/Zero-123 folder; `autoencoder_from` a saved AutoencoderKL folder to reuse instead of training one.

    Campaigns (docs/training_campaign.md): `max_minutes` > 0 stops the run cleanly after that long (counted from the
    trainer's construction), with a checkpoint and a snapshot; `snapshot_dir` receives a campaign snapshot
    (model/campaign.py) every `snapshot_every_minutes` and at the end, and with `resume: latest` a run continues from
    it when it is newer than every local checkpoint.

    `lr_schedule: cosine` lowers the learning rate along a half cosine from `lr` at step `lr_decay_start` to
    `lr_min` at `steps`; it is keyed on the run's step, not on steps since the last start, so a campaign resumed from
    a snapshot continues the same curve (each start still warms up over `warmup_steps`). `constant` keeps `lr`.

    `snr_gamma` > 0 weights each timestep's loss by min(SNR, gamma) (Min-SNR, Hang et al. 2023, diffusers'
    `compute_snr`): the many nearly noise-free timesteps stop dominating, which speeds up convergence on a CPU budget."""

    output_dir: str = "runs/xdiffusion"
    steps: int = 10000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    lr_decay_start: int = 0
    lr_min: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validate_every: int = 1000
    log_every: int = 50
    seed: int = 0
    num_workers: int = 0
    resume: str = ""
    init_from: str = ""
    autoencoder_from: str = ""
    autoencoder_steps: int = 2000
    autoencoder_lr: float = 1e-3
    autoencoder_tumour_weight: float = 20.0
    max_minutes: float = 0.0
    snapshot_dir: str = ""
    snapshot_every_minutes: float = 30.0
    snr_gamma: float = 0.0

    def lr_factor(self, steps_since_start: int, step: int) -> float:
        """The learning rate over `lr` at run step `step`, `steps_since_start` optimiser steps after this start."""
        warmup = min(1.0, steps_since_start / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.lr_schedule == "constant" or step <= self.lr_decay_start:
            return warmup
        progress = min(1.0, (step - self.lr_decay_start) / (self.steps - self.lr_decay_start))
        floor = self.lr_min / self.lr if self.lr > 0 else 0.0
        return warmup * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def __post_init__(self) -> None:
        casts = {"int": int, "float": float, "str": str}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, casts[f.type](value))
            except (TypeError, ValueError):
                raise InputError(f"train.{f.name} must be {f.type}, not {value!r}") from None
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"train.mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        if min(self.steps, self.batch_size, self.grad_accum, self.checkpoint_every, self.validate_every,
               self.log_every, self.keep_checkpoints) < 1:
            raise InputError("train.steps, batch_size, grad_accum, *_every and keep_checkpoints must be >= 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"train.lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not (0 <= self.lr_decay_start < self.steps and 0 <= self.lr_min <= self.lr):
            raise InputError("train.lr_schedule cosine needs 0 <= train.lr_decay_start < train.steps and "
                             "0 <= train.lr_min <= train.lr")
        if self.snr_gamma < 0:
            raise InputError(f"train.snr_gamma must be >= 0 (0: every timestep weighted alike), not {self.snr_gamma}")
        if self.max_minutes < 0 or self.snapshot_every_minutes <= 0:
            raise InputError("train.max_minutes must be >= 0 (0: no limit) and train.snapshot_every_minutes > 0")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`section.key=value` strings (values parsed as YAML) applied to a nested config dict, returned as a copy."""
    result = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r} is not of the form section.key=value")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(text) if text.strip() else ""
    return result


def resolve_config(config: Union[str, os.PathLike, Mapping[str, Any]],
                   overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Config file or dict + overrides -> {"model": full model dict, "train": full train dict, **other sections}.

    `model.preset` names a starting point (`tiny`, `cpu_default`) that the other model keys refine.
    """
    if isinstance(config, Mapping):
        raw = dict(config)
    else:
        path = Path(config)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}  # YAML is a superset of JSON: one parser for both
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"cannot read training config {path}: {str(error).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise InputError(f"training config {path} must be a mapping of sections")
    raw = apply_overrides(raw, overrides)
    model = dict(raw.get("model") or {})
    name = model.pop("preset", None)
    base = preset(name).to_dict() if name else {}
    merged = _deep_merge(base, model)
    resolved = dict(raw)
    resolved["model"] = XDiffusionConfig.from_dict(merged).to_dict()
    train_section = raw.get("train") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train_section) - known)
    if unknown:
        raise InputError(f"unknown key(s) in train: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    resolved["train"] = dataclasses.asdict(TrainConfig(**train_section))
    return resolved


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key),
                                                                                              dict) else value
    return out


def record_config(output_dir: Path, step: int, resolved: Mapping[str, Any]) -> None:
    """Append this start (its step and config) to the run's config history, dropping starts it supersedes (those
    at or after its step: their work was lost with the kill), so the card can say what trained which steps."""
    path = output_dir / CONFIG_HISTORY
    starts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []
    starts = [start for start in starts if start["step"] < step]
    starts.append({"step": step, "config": resolved})
    with atomic_output(path) as temporary:
        temporary.write_text("".join(json.dumps(start, default=str) + "\n" for start in starts))


def config_changes(output_dir: Path) -> list[dict[str, Any]]:
    """Where the run's earlier pieces used another config than the last one: [{from_step, to_step, key: value}]."""
    path = output_dir / CONFIG_HISTORY
    if not path.is_file():
        return []
    starts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    final = _flatten(card_config(starts[-1]["config"])) if starts else {}
    changes = []
    for start, following in zip(starts, starts[1:]):
        differing = {key: value for key, value in _flatten(card_config(start["config"])).items()
                     if final.get(key) != value and key not in ("train.steps", "train.resume")}
        if differing:
            changes.append({"from_step": start["step"], "to_step": following["step"], **differing})
    return changes


def card_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as the card shows it: the autoencoder's settings left out of `train`, because the card's
    `autoencoder_training` (saved when the autoencoder was trained) says what really made it."""
    shown = json.loads(json.dumps(resolved, default=str))
    for key in AUTOENCODER_KEYS:
        shown.get("train", {}).pop(key, None)
    return shown


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
