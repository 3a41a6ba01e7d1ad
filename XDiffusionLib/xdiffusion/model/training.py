"""Training of the denoiser (and, in latent mode, first the autoencoder), driven by a YAML/JSON config.

Data is whatever torch Dataset/IterableDataset the caller passes, yielding the sample dicts of docs/architecture.md,
so training does not depend on how samples are made. Everything distributed goes through accelerate, so
`accelerate launch -m xdiffusion.cli train ...` scales to several GPUs or nodes unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, set_seed
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from .. import __version__
from ..errors import InputError
from ..io import atomic_output
from .checkpoint import XDiffusionModel, save_model
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig, preset
from .autoencoder_training import autoencoder_metrics, measure_latent_scale, train_autoencoder
from .networks import Denoiser, build_autoencoder, build_unet, encode_target, init_unet_from_pretrained

if TYPE_CHECKING:
    from .campaign import Snapshot  # campaign imports this module: its use here is deferred to call time

Validator = Callable[[XDiffusionModel], Mapping[str, float]]
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
EMA_WEIGHTS = "ema.safetensors"  # the EMA in a checkpoint: safetensors, not accelerate's pickled custom state
AUTOENCODER_RECORD = "latent_scale.json"  # in the run's autoencoder/: its latent scale and how it was trained
AUTOENCODER_KEYS = ("autoencoder_from", "autoencoder_steps", "autoencoder_lr", "autoencoder_tumour_weight")
CONFIG_HISTORY = "config_history.jsonl"  # one line per start of the run: the step it started at, its config
SEGMENTS_TUMOURS_MIN_DICE = 0.5  # held-out whole-tumour Dice below which a model's tumour labels are not offered
UNRECORDED_AUTOENCODER = ("not recorded: this run's autoencoder was trained before its settings were saved with it; "
                          "the run's config, re-read with today's defaults at every resume, does not say how")


@dataclass
class TrainConfig:
    """The `train:` section. `resume` is "", "latest" or a checkpoint folder; `init_from` a local diffusers
    SD/Zero-123 folder; `autoencoder_from` a saved AutoencoderKL folder to reuse instead of training one.

    Campaigns (docs/training_campaign.md): `max_minutes` > 0 stops the run cleanly after that long (counted from the
    trainer's construction), with a checkpoint and a snapshot; `snapshot_dir` receives a campaign snapshot
    (model/campaign.py) every `snapshot_every_minutes` and at the end, and with `resume: latest` a run continues from
    it when it is newer than every local checkpoint."""

    output_dir: str = "runs/xdiffusion"
    steps: int = 10000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
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


def _replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written folder into place; an older folder of the same name is removed only afterwards."""
    if final.exists():
        retired = final.with_name(f".{final.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, final)


def checkpoints(output_dir: Union[str, Path]) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with their step file written last) as (step, folder), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    found = []
    for entry in folder.iterdir() if folder.is_dir() else []:
        match = CHECKPOINT_NAME.match(entry.name)
        if match and (entry / "train_step.json").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


class Trainer:
    """One training run. Construction builds (or resumes) everything; `run()` trains and writes the model folder."""

    def __init__(self, config: Mapping[str, Any], samples: Union[Dataset, IterableDataset],
                 validate: Optional[Validator] = None, held_out: Optional[torch.Tensor] = None) -> None:
        """``held_out``: held-out targets [N, 4, S, S] on which the autoencoder is measured for the model card."""
        self.started = time.monotonic()  # `train.max_minutes` counts from here: autoencoder training included
        self.resolved = dict(config)
        self.config = XDiffusionConfig.from_dict(config["model"])
        self.train = TrainConfig(**config["train"])
        self.samples, self.validate = samples, validate
        self.output_dir = Path(self.train.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=self.train.mixed_precision, gradient_accumulation_steps=self.train.grad_accum,
            log_with="tensorboard" if is_tensorboard_available() else None, project_dir=str(self.output_dir))
        set_seed(self.train.seed, device_specific=True)
        self.held_out = held_out
        self.autoencoder_metrics: dict[str, Any] = {}
        self.autoencoder_training: Optional[dict[str, Any]] = None
        self.last_validation: dict[str, float] = {}
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        snapshot = self._snapshot_to_resume()
        self.autoencoder = self._prepare_autoencoder() if self.config.latent else None
        if self.accelerator.is_main_process:  # after the autoencoder: it fixes model.latent_scale
            with atomic_output(self.output_dir / "config.yaml") as temporary:  # never half a config after a kill
                temporary.write_text(yaml.safe_dump(self.resolved, sort_keys=False))
        if self.train.init_from:
            unet = init_unet_from_pretrained(self.train.init_from, self.config)
        else:
            unet = build_unet(self.config)
        model = Denoiser(unet, ConditionEncoder.from_config(self.config))
        self.noise = DDPMScheduler(num_train_timesteps=self.config.num_train_timesteps,
                                   beta_schedule="squaredcos_cap_v2", prediction_type=self.config.prediction_type)
        self.data_order = torch.Generator()  # reseeded per epoch in `_batches`: the order never depends on history
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.train.lr, weight_decay=self.train.weight_decay)
        schedule = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=self.train.warmup_steps)
        self.model, self.optimizer, self.loader, self.schedule = self.accelerator.prepare(
            model, optimizer, self._loader(self.data_order), schedule)
        # EMA decay ramps up from 0, so short runs still export trained (not initial) weights
        self.ema = EMAModel(self._denoiser().parameters(), decay=self.train.ema_decay, use_ema_warmup=True,
                            power=2 / 3)
        self.ema.to(self.accelerator.device)
        # the EMA is saved beside accelerate's state as safetensors (`save_checkpoint`), not registered with accelerate,
        # which would pickle it and unpickle it with weights_only=False on resume
        self.step = 0
        if snapshot is not None:
            from .campaign import load_snapshot
            load_snapshot(self, snapshot)
        elif self.train.resume:
            self._resume(self.train.resume)
        self._record_config()
        if is_tensorboard_available():
            self.accelerator.init_trackers("xdiffusion")

    def _snapshot_to_resume(self) -> Optional[Snapshot]:
        """With `resume: latest`, the snapshot in `snapshot_dir` when it is newer than every local checkpoint (on a
        fresh machine there are none; after a GPU run its returned snapshot is newer). Its autoencoder is put in place
        here, before `_prepare_autoencoder` would train a new one."""
        from .campaign import read_snapshot, restore_autoencoder, snapshot_step

        if self.train.resume != "latest" or not self.train.snapshot_dir:
            return None
        step = snapshot_step(self.train.snapshot_dir)
        found = checkpoints(self.output_dir)
        if step is None or (found and found[-1][0] >= step):
            return None
        snapshot = read_snapshot(self.train.snapshot_dir)
        if self.config.latent and self.accelerator.is_main_process:
            restore_autoencoder(snapshot, self.output_dir / "autoencoder", self.config)
        self.accelerator.wait_for_everyone()
        return snapshot

    def write_snapshot(self) -> Path:
        """The campaign snapshot of this moment in `train.snapshot_dir` (model/campaign.py)."""
        from .campaign import write_snapshot

        folder = Path(self.train.snapshot_dir)
        if self.accelerator.is_main_process:
            write_snapshot(self, folder)
        self.accelerator.wait_for_everyone()
        return folder

    def _time_is_up(self) -> bool:
        """Whether `train.max_minutes` has passed; every process stops at the same step (the latest clock decides)."""
        if not self.train.max_minutes:
            return False
        late = torch.tensor(float(time.monotonic() - self.started >= 60 * self.train.max_minutes),
                            device=self.accelerator.device)
        return bool(self.accelerator.reduce(late, "max").item()) if self.accelerator.num_processes > 1 else bool(late)

    def _denoiser(self) -> Denoiser:
        return self.accelerator.unwrap_model(self.model)

    def _loader(self, generator: Optional[torch.Generator] = None) -> DataLoader:
        shuffle = not isinstance(self.samples, IterableDataset)
        return DataLoader(self.samples, batch_size=self.train.batch_size, shuffle=shuffle, drop_last=True,
                          num_workers=self.train.num_workers, generator=generator)

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches whose order depends on the seed and the epoch alone, started where `self.step` left off:
        a run resumed from a checkpoint sees exactly the batches (and RNG draws) an uninterrupted run would."""
        consumed = self.step * self.train.grad_accum
        sized = not isinstance(self.samples, IterableDataset)
        per_epoch = len(self.loader) if sized else 0
        epoch, skip = divmod(consumed, per_epoch) if per_epoch else (0, 0 if sized else consumed)
        while True:
            self.data_order.manual_seed((self.train.seed * 1_000_003 + epoch) % 2**63)
            loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            yielded = False
            for batch in loader:
                yielded = True
                yield batch
            if not yielded and not skip:
                raise InputError("the training samples are fewer than one batch (lower train.batch_size)")
            epoch, skip = epoch + 1, 0

    def _prepare_autoencoder(self) -> AutoencoderKL:
        """Train (main process only) or reuse the autoencoder, then freeze it; every process loads the same copy.

        How it was trained is saved beside it when it is trained and read back on every resume, so the model card
        reports the settings that made these weights, never the resumed run's config (whose defaults may have moved).
        """
        folder = self.output_dir / "autoencoder"
        if self.accelerator.is_main_process and not (folder / AUTOENCODER_RECORD).is_file():
            targets = (batch["target"] for batch in self._forever(self._loader()))
            if self.train.autoencoder_from:
                source = Path(self.train.autoencoder_from)
                autoencoder = AutoencoderKL.from_pretrained(source, use_safetensors=True, local_files_only=True)
                earlier = source / AUTOENCODER_RECORD  # present when it comes from another run's autoencoder/
                training = json.loads(earlier.read_text(encoding="utf-8")).get("training") if earlier.is_file() else None
                record = {"trained_in_this_run": False, "from": str(source),
                          **(training or {"note": UNRECORDED_AUTOENCODER})}
            else:
                autoencoder = build_autoencoder(self.config)
                train_autoencoder(autoencoder, targets, self.train.autoencoder_steps, lr=self.train.autoencoder_lr,
                                  tumour_weight=self.train.autoencoder_tumour_weight,
                                  kl_weight=self.config.autoencoder.kl_weight, device=self.accelerator.device)
                record = {
                    "trained_in_this_run": True, "steps": self.train.autoencoder_steps,
                    "batch_size": self.train.batch_size, "lr": self.train.autoencoder_lr,
                    "loss": "L1 on the image channel + L1 on the tumour channels with tumour pixels weighted up, + KL",
                    "tumour_weight": self.train.autoencoder_tumour_weight,
                    "kl_weight": self.config.autoencoder.kl_weight, "seed": self.train.seed,
                    "xdiffusion_version": __version__,
                }
            device = self.accelerator.device
            scale = measure_latent_scale(autoencoder.to(device).eval(), targets, device=device)
            staging = folder.with_name(".autoencoder.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            autoencoder.save_pretrained(staging, safe_serialization=True)
            (staging / AUTOENCODER_RECORD).write_text(json.dumps({"latent_scale": scale, "training": record}) + "\n")
            _replace_dir(staging, folder)
        self.accelerator.wait_for_everyone()
        saved = json.loads((folder / AUTOENCODER_RECORD).read_text(encoding="utf-8"))
        self.config.latent_scale = saved["latent_scale"]
        self.autoencoder_training = saved.get("training") or {"note": UNRECORDED_AUTOENCODER}
        self.resolved["model"] = self.config.to_dict()
        autoencoder = AutoencoderKL.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        autoencoder = autoencoder.to(self.accelerator.device).eval().requires_grad_(False)
        if self.held_out is not None and len(self.held_out):
            self.autoencoder_metrics = {"held_out_slices": len(self.held_out),
                                        **autoencoder_metrics(autoencoder, self.held_out.to(self.accelerator.device))}
        else:
            self.autoencoder_metrics = {"note": "not measured: the run had no held-out data"}
        return autoencoder

    @staticmethod
    def _forever(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yielded = False
            for batch in loader:
                yielded = True
                yield batch
            if not yielded:
                raise InputError("the training samples are fewer than one batch (lower train.batch_size)")

    def _resume(self, which: str) -> None:
        if which == "latest":
            found = checkpoints(self.output_dir)
            if not found:
                return  # nothing saved yet: `resume=latest` also starts a fresh run
            folder = found[-1][1]
        else:
            folder = Path(which)
            if not (folder / "train_step.json").is_file():
                raise InputError(f"{folder} is not a complete training checkpoint")
        legacy = sorted(folder.glob("custom_checkpoint_*.pkl"))  # an older checkpoint's pickled EMA: never unpickled
        if legacy:  # by accelerate (weights_only=False): load the rest through a view without it
            with tempfile.TemporaryDirectory(prefix=".resume-", dir=folder.parent) as view:
                for entry in folder.iterdir():
                    if entry not in legacy:
                        os.symlink(entry.resolve(), Path(view) / entry.name)
                self.accelerator.load_state(view)
        else:
            self.accelerator.load_state(str(folder))
        self.step = json.loads((folder / "train_step.json").read_text(encoding="utf-8"))["step"]
        self._load_ema(folder)
        self._forget_metrics_after_step()

    def _load_ema(self, folder: Path) -> None:
        path = folder / EMA_WEIGHTS
        if path.is_file():
            with safe_open(str(path), framework="pt") as handle:
                state = json.loads(handle.metadata()["state"])
                shadow = [handle.get_tensor(f"shadow.{i:05d}") for i in range(len(handle.keys()))]
        elif (folder / "custom_checkpoint_0.pkl").is_file():  # checkpoints written before EMA_WEIGHTS existed
            state = torch.load(folder / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True)
            shadow = state.pop("shadow_params")
        else:
            raise InputError(f"{folder} holds no EMA state ({EMA_WEIGHTS}); it is not a complete training checkpoint")
        self.ema.load_state_dict({**state, "shadow_params": shadow})
        self.ema.to(self.accelerator.device)

    def _forget_metrics_after_step(self) -> None:
        """Drop metric rows a killed run logged after its last checkpoint, so the resumed curve continues once."""
        path = self.output_dir / "metrics.csv"
        if not self.accelerator.is_main_process or not path.is_file():
            return
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= self.step]
        if len(kept) != len(rows):
            temporary = path.with_name(".metrics.csv.tmp")
            with open(temporary, "w", newline="") as handle:
                csv.writer(handle).writerows(kept)
            os.replace(temporary, path)

    def _record_config(self) -> None:
        """Append this start (its step and config) to the run's config history, dropping starts it supersedes (those
        at or after its step: their work was lost with the kill), so the card can say what trained which steps."""
        if not self.accelerator.is_main_process:
            return
        path = self.output_dir / CONFIG_HISTORY
        starts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []
        starts = [start for start in starts if start["step"] < self.step]
        starts.append({"step": self.step, "config": self.resolved})
        with atomic_output(path) as temporary:
            temporary.write_text("".join(json.dumps(start, default=str) + "\n" for start in starts))

    def _config_changes(self) -> list[dict[str, Any]]:
        """Where the run's earlier pieces used another config than the last one: [{from_step, to_step, key: value}]."""
        path = self.output_dir / CONFIG_HISTORY
        if not path.is_file():
            return []
        starts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        final = _flatten(_card_config(starts[-1]["config"])) if starts else {}
        changes = []
        for start, following in zip(starts, starts[1:]):
            differing = {key: value for key, value in _flatten(_card_config(start["config"])).items()
                         if final.get(key) != value and key not in ("train.steps", "train.resume")}
            if differing:
                changes.append({"from_step": start["step"], "to_step": following["step"], **differing})
        return changes

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimiser, schedule, EMA, RNG) in a temp folder, renamed when complete."""
        folder = self.output_dir / "checkpoints"
        final, staging = folder / f"step-{self.step}", folder / f".step-{self.step}.tmp"
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = self.ema.state_dict()
            shadow = state.pop("shadow_params")
            save_file({f"shadow.{i:05d}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)},
                      str(staging / EMA_WEIGHTS), metadata={"state": json.dumps(state)})
            (staging / "train_step.json").write_text(json.dumps({"step": self.step}) + "\n")
            _replace_dir(staging, final)
            for _, old in checkpoints(self.output_dir)[:-self.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Diffusion loss on one batch: noise the target (or its latent), predict v or epsilon, with CFG dropout."""
        target = batch["target"]
        if self.autoencoder is not None:
            with torch.no_grad():
                target = encode_target(self.autoencoder, target, self.config.latent_scale)
        noise = torch.randn_like(target)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (target.shape[0],), device=target.device)
        noisy = self.noise.add_noise(target, noise, timesteps)
        goal = self.noise.get_velocity(target, noise, timesteps) if self.config.prediction_type == "v_prediction" \
            else noise
        drop = torch.rand(target.shape[0], device=target.device) < self.config.cfg_dropout
        prediction = self.model(noisy, timesteps, batch, drop)
        return F.mse_loss(prediction.float(), goal.float())

    def ema_model(self) -> XDiffusionModel:
        """The parts with EMA weights copied in (call `restore_training_weights` afterwards to keep training)."""
        denoiser = self._denoiser()
        self.ema.store(denoiser.parameters())
        self.ema.copy_to(denoiser.parameters())
        denoiser.eval()
        return XDiffusionModel(self.config, denoiser.unet, denoiser.condition_encoder, self.autoencoder,
                               dict(self.noise.config))

    def restore_training_weights(self) -> None:
        denoiser = self._denoiser()
        self.ema.restore(denoiser.parameters())
        denoiser.train()

    def _log(self, metrics: Mapping[str, Any]) -> None:
        metrics = {name: value for name, value in metrics.items() if isinstance(value, (int, float))}  # not None/notes
        if not self.accelerator.is_main_process:
            return
        path = self.output_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "name", "value"])
            writer.writerows([self.step, name, f"{value:.6g}"] for name, value in metrics.items())
        self.accelerator.log(dict(metrics), step=self.step)

    def _run_validation(self) -> None:
        if self.validate is not None and self.accelerator.is_main_process:
            with torch.no_grad():
                self.last_validation = {f"val/{k}": float(v) for k, v in self.validate(self.ema_model()).items()}
            self.restore_training_weights()
            self._log(self.last_validation)
        self.accelerator.wait_for_everyone()

    def run(self) -> Path:
        """Train to `train.steps` optimiser steps, then write `output_dir/model` with the EMA weights (and a snapshot
        when `train.snapshot_dir` is set). Stopped by `train.max_minutes`, it writes a checkpoint and a snapshot instead
        and returns the snapshot folder (the checkpoint without `snapshot_dir`); `stopped_by_budget` says which."""
        self.stopped_by_budget = False
        last_snapshot = time.monotonic()
        if self.step == 0 and self.autoencoder_metrics:
            self._log({f"autoencoder/{k}": v for k, v in self.autoencoder_metrics.items()})
        self.model.train()
        batches = self._batches()
        progress = tqdm(total=self.train.steps, initial=self.step, desc="training", unit="step",
                        disable=not self.accelerator.is_main_process)
        running: list[float] = []
        while self.step < self.train.steps:
            with self.accelerator.accumulate(self.model):
                loss = self.loss(next(batches))
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
            running.append(loss.detach().item())
            if not self.accelerator.sync_gradients:
                continue
            self.ema.step(self._denoiser().parameters())
            self.step += 1
            progress.update(1)
            if self.step % self.train.log_every == 0:
                mean = sum(running) / len(running)
                self._log({"train/loss": mean, "train/lr": self.schedule.get_last_lr()[0]})
                progress.set_postfix(loss=f"{mean:.4f}")
                running = []
            if self.step % self.train.validate_every == 0:
                self._run_validation()
            if self.step % self.train.checkpoint_every == 0:
                self.save_checkpoint()
            if self._time_is_up():
                self.stopped_by_budget = True
                break
            if self.train.snapshot_dir and time.monotonic() - last_snapshot >= 60 * self.train.snapshot_every_minutes:
                self.write_snapshot()
                last_snapshot = time.monotonic()
        progress.close()
        if self.stopped_by_budget:
            checkpoint = self.save_checkpoint()
            return self.write_snapshot() if self.train.snapshot_dir else checkpoint
        if not self.last_validation or self.step % self.train.validate_every != 0:
            self._run_validation()  # the card reports the exported weights, also after a resume at the last step
        if self.train.snapshot_dir:
            self.write_snapshot()
        return self._export()

    def _segments_tumours(self) -> tuple[bool, str]:
        """Whether the model's tumour labels are worth offering: only when measured on held-out data, as the
        whole-tumour Dice of generated slices (`val/dice_tumour`) and, in latent mode, of the autoencoder."""
        generated = self.last_validation.get("val/dice_tumour")
        if generated is None:
            return False, "not measured: validation gave no held-out tumour Dice"
        basis = f"held-out whole-tumour Dice of generated slices {generated:.2f}"
        if self.autoencoder is not None:
            decoded = self.autoencoder_metrics.get("dice")
            if decoded is None:
                return False, f"{basis}; the autoencoder's held-out tumour Dice was not measured"
            basis += f", of the autoencoder {decoded:.2f}"
            generated = min(generated, decoded)
        verdict = generated >= SEGMENTS_TUMOURS_MIN_DICE
        return verdict, f"{basis} ({'at least' if verdict else 'below'} {SEGMENTS_TUMOURS_MIN_DICE})"

    def _export(self) -> Path:
        parts = self.ema_model()
        folder = self.output_dir / "model"
        if self.accelerator.is_main_process:
            segments, basis = self._segments_tumours()
            card = {
                "training_data": self.resolved.get("data", getattr(self.samples, "description",
                                                                   type(self.samples).__name__)),
                "steps": self.step,
                "batch_size": self.train.batch_size * self.train.grad_accum * self.accelerator.num_processes,
                "validation": self.last_validation,
                "prediction_type": self.config.prediction_type,
                "latent_scale": self.config.latent_scale,
                "segments_tumours": segments,
                "segments_tumours_basis": basis,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "xdiffusion_version": __version__,
                "training_config": _card_config(self.resolved),
                "intended_use": "research only; generated volumes are synthetic and not for diagnosis",
            }
            if self.autoencoder is not None:
                card["autoencoder"] = self.autoencoder_metrics
                card["autoencoder_training"] = self.autoencoder_training
            changes = self._config_changes()
            if changes:
                card["training_config_changes"] = changes
            save_model(folder, parts.unet, parts.condition_encoder, self.autoencoder, parts.scheduler_config,
                       self.config, card)
        self.restore_training_weights()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return folder


def _card_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
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


def train(config: Union[str, os.PathLike, Mapping[str, Any]], overrides: Sequence[str] = (), *,
          samples: Union[Dataset, IterableDataset], validate: Optional[Validator] = None,
          held_out: Optional[torch.Tensor] = None) -> Path:
    """`xdiffusion train CONFIG [key=value ...]`: resolve the config, train on `samples`, return the model folder."""
    return Trainer(resolve_config(config, overrides), samples, validate, held_out).run()
