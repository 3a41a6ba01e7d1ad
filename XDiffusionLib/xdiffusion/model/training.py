"""Training of the denoiser (and, in latent mode, first the autoencoder), driven by a YAML/JSON config.

Data is whatever torch Dataset/IterableDataset the caller passes, yielding the sample dicts of docs/architecture.md,
so training does not depend on how samples are made. Everything distributed goes through accelerate, so
`accelerate launch -m xdiffusion.cli train ...` scales to several GPUs or nodes unchanged.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, set_seed
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from .. import __version__
from ..compute import limit_training_threads
from ..errors import InputError
from ..io import atomic_output
from .checkpoint import XDiffusionModel, save_model
from .checkpoint_files import (checkpoint_to_resume, checkpoints, forget_metrics_after_step, load_accelerate_state,
                               project_configuration, read_ema_state, read_step, write_ema_and_step)
from .checkpoint_files import CHECKPOINT_NAME, EMA_WEIGHTS, replace_dir as _replace_dir  # noqa: F401 (re-exported)
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig
from .autoencoder_training import AUTOENCODER_RECORD, UNRECORDED_AUTOENCODER, autoencoder_metrics, save_run_autoencoder
from .networks import (Denoiser, LatentTargets, build_unet, encode_target, init_condition_encoder, init_unet_from_pretrained,
                       min_snr_weights)
from .train_config import TrainConfig, card_config, config_changes, record_config, resolve_config
from .train_config import AUTOENCODER_KEYS, CONFIG_HISTORY, _deep_merge, apply_overrides  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from .campaign import Snapshot  # campaign imports this module: its use here is deferred to call time

Validator = Callable[[XDiffusionModel], Mapping[str, float]]
SEGMENTS_TUMOURS_MIN_DICE = 0.5  # held-out whole-tumour Dice below which a model's tumour labels are not offered
INTENDED_USE = "research only; generated volumes are synthetic and not for diagnosis"
ATLAS_SAMPLING_BASIS = ("an atlas-conditioned model reads the registered atlas at strength 1 (it starts from noise); "
                        "the validation split preferred this to the atlas as an SDEdit start (docs/model.md)")


def conditioning_card(config: XDiffusionConfig) -> dict:
    """The card entries a model's conditioning implies: an atlas-conditioned model samples with its atlas by default,
    since withholding it (`--prior extrude`) gives the model less than it was trained to read."""
    if not config.atlas_conditioning:
        return {}
    return {"default_sampling": {"prior": "atlas", "strength": 1.0}, "default_sampling_basis": ATLAS_SAMPLING_BASIS}


def noise_schedule(config: XDiffusionConfig) -> DDPMScheduler:
    """The forward process every model is trained with; its config is saved beside the weights for the samplers."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=config.prediction_type)


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
            log_with="tensorboard" if is_tensorboard_available() else None, project_config=project_configuration(self.output_dir))
        set_seed(self.train.seed, device_specific=True)
        if self.accelerator.device.type == "cpu":
            limit_training_threads(self.train.num_workers)
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
        # `init_from` starts a fresh run only: a resumed one has its own weights, and the folder it started from may
        # be gone (a campaign continued on another machine)
        fresh = snapshot is None and not (self.train.resume and checkpoint_to_resume(self.output_dir, self.train.resume))
        if self.train.init_from and fresh:
            unet = init_unet_from_pretrained(self.train.init_from, self.config)
        else:
            unet = build_unet(self.config)
        model = Denoiser(unet, ConditionEncoder.for_model(self.config))
        if self.train.init_from and fresh:
            init_condition_encoder(model.condition_encoder, self.train.init_from)
        # on the CPU with a loader worker, the frozen autoencoder encodes the targets there (`LatentTargets`): a quarter
        # of a detail-model step, run beside the denoiser's step instead of before it
        self._encode_in_workers = self.autoencoder is not None and self.train.num_workers > 0 and self.accelerator.device.type == "cpu"
        self.noise = noise_schedule(self.config)
        self.data_order = torch.Generator()  # reseeded per epoch in `_batches`: the order never depends on history
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.train.lr, weight_decay=self.train.weight_decay)
        self.step = 0  # the schedule reads the run's step (set by a resume below), not its own count of steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda steps_since_start: self.train.lr_factor(steps_since_start, self.step))
        self.model, self.optimizer, self.loader, self.schedule = self.accelerator.prepare(
            model, optimizer, self._loader(self.data_order, encode=self._encode_in_workers), schedule)
        # EMA decay ramps up from 0, so short runs still export trained (not initial) weights
        self.ema = EMAModel(self._denoiser().parameters(), decay=self.train.ema_decay, use_ema_warmup=True,
                            power=2 / 3)
        self.ema.to(self.accelerator.device)
        # the EMA is saved beside accelerate's state as safetensors (`save_checkpoint`), not registered with accelerate,
        # which would pickle it and unpickle it with weights_only=False on resume
        if snapshot is not None:
            from .campaign import load_snapshot
            load_snapshot(self, snapshot)
            for group in self.optimizer.param_groups:  # the schedule was built at step 0: its first rate, at this step
                group["lr"] = group["initial_lr"] * self.train.lr_factor(0, self.step)
        elif self.train.resume:
            self._resume(self.train.resume)
        if self.accelerator.is_main_process:
            record_config(self.output_dir, self.step, self.resolved)
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

    def _loader(self, generator: Optional[torch.Generator] = None, encode: bool = False) -> DataLoader:
        shuffle = not isinstance(self.samples, IterableDataset)
        collate = LatentTargets(self.autoencoder, self.config.latent_scale) if encode else None
        return DataLoader(self.samples, batch_size=self.train.batch_size, shuffle=shuffle, drop_last=True,
                          num_workers=self.train.num_workers, generator=generator, collate_fn=collate)

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
            save_run_autoencoder(folder, self.config, self.train, targets, self.accelerator.device)
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
        folder = checkpoint_to_resume(self.output_dir, which)
        if folder is None:
            return  # nothing saved yet: `resume=latest` also starts a fresh run
        load_accelerate_state(self.accelerator, folder)
        self.step = read_step(folder)
        self.ema.load_state_dict(read_ema_state(folder))
        self.ema.to(self.accelerator.device)
        if self.accelerator.is_main_process:
            forget_metrics_after_step(self.output_dir, self.step)

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimiser, schedule, RNG) + EMA in a temp folder, renamed when complete (`project_configuration`)."""
        folder = self.output_dir / "checkpoints"
        final, staging = folder / f"step-{self.step}", folder / f".step-{self.step}.tmp"
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_ema_and_step(staging, self.ema.state_dict(), self.step)
            _replace_dir(staging, final)
            for _, old in checkpoints(self.output_dir)[:-self.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Diffusion loss on one batch: noise the target (or its latent), predict v or epsilon, with CFG dropout."""
        target = batch["target"]
        if "target_latent" in batch:  # encoded by the loader's worker
            target = batch["target_latent"]
        elif self.autoencoder is not None:
            with torch.no_grad():
                target = encode_target(self.autoencoder, target, self.config.latent_scale)
        noise = torch.randn_like(target)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (target.shape[0],), device=target.device)
        noisy = self.noise.add_noise(target, noise, timesteps)
        goal = self.noise.get_velocity(target, noise, timesteps) if self.config.prediction_type == "v_prediction" \
            else noise
        drop = torch.rand(target.shape[0], device=target.device) < self.config.cfg_dropout
        prediction = self.model(noisy, timesteps, batch, drop)
        if not self.train.snr_gamma:
            return F.mse_loss(prediction.float(), goal.float())
        weight = min_snr_weights(self.noise, timesteps, self.train.snr_gamma, self.config.prediction_type)
        per_sample = F.mse_loss(prediction.float(), goal.float(), reduction="none").flatten(1).mean(dim=1)
        return (per_sample * weight).mean()

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
                "training_config": card_config(self.resolved),
                "intended_use": INTENDED_USE,
                **conditioning_card(self.config),
            }
            if self.autoencoder is not None:
                card["autoencoder"] = self.autoencoder_metrics
                card["autoencoder_training"] = self.autoencoder_training
            changes = config_changes(self.output_dir)
            if changes:
                card["training_config_changes"] = changes
            save_model(folder, parts.unet, parts.condition_encoder, self.autoencoder, parts.scheduler_config,
                       self.config, card)
        self.restore_training_weights()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return folder


def train(config: Union[str, os.PathLike, Mapping[str, Any]], overrides: Sequence[str] = (), *,
          samples: Union[Dataset, IterableDataset], validate: Optional[Validator] = None,
          held_out: Optional[torch.Tensor] = None) -> Path:
    """`xdiffusion train CONFIG [key=value ...]`: resolve the config, train on `samples`, return the model folder."""
    return Trainer(resolve_config(config, overrides), samples, validate, held_out).run()
