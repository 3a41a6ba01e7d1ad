"""Campaign snapshots: what a long training campaign commits so that a stop never loses more than one interval.

    snapshot.json            step, sha256 and size of each shard, which tensor lies in which shard, the resolved
                             training config, the autoencoder's latent scale and training record, the last validation
    xdiffusion_config.json   the model config (as in a saved model folder)
    metrics.csv              the training log up to `step`
    weights-00001-of-0000N.safetensors
                             float16 weights, keys prefixed by component (`unet.`, `condition_encoder.`,
                             `autoencoder.`), each file at most `max_shard_mb`

The denoiser's weights are its EMA (what a model exports), the autoencoder's its frozen weights. float16 keeps the
shipped model's snapshot near 7 MB, so git holds one per commit cheaply; shards keep every file under the 16 MiB that
a GPU machine's output may return. A run resumed from a snapshot gets these weights in both the model and its EMA,
continues the step count, and starts a fresh AdamW whose learning rate warms up again over `train.warmup_steps`:
the optimiser moments are not kept (they would triple the size), so the first steps after such a resume are not
bit-identical to an uninterrupted run, unlike a resume from a local checkpoint. `export_model` turns a snapshot into
a model folder, so a campaign's weights can be sampled between commits (`scripts/export_snapshot.py`).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import __version__
from ..errors import InputError
from .checkpoint import save_model
from .conditioning import ConditionEncoder
from .config import XDiffusionConfig
from .networks import build_autoencoder, build_unet
from .train_config import card_config
from .training import AUTOENCODER_RECORD, INTENDED_USE, Trainer, _replace_dir, conditioning_card, noise_schedule

SNAPSHOT_FORMAT = "xdiffusion-campaign-snapshot/1"
SNAPSHOT_INDEX = "snapshot.json"  # written last: a folder without it is no snapshot
MODEL_CONFIG = "xdiffusion_config.json"
TRAINING_LOG = "metrics.csv"
DEFAULT_SHARD_MB = 16.0
TENSOR_HEADER_BYTES = 160  # safetensors header entry of one tensor beyond its name: dtype, shape, offsets (generous)
MIB = 1024 * 1024


@dataclass
class Snapshot:
    """A verified snapshot: its index (snapshot.json) and its float16 weights by prefixed key."""

    folder: Path
    index: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.index["step"])

    def component(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"{name}."
        return {key[len(prefix):]: value for key, value in self.weights.items() if key.startswith(prefix)}


def trained_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The denoiser's EMA weights and the autoencoder's weights, float16 on the CPU, keys prefixed by component."""
    parts = trainer.ema_model()
    try:
        modules = {"unet": parts.unet, "condition_encoder": parts.condition_encoder}
        if parts.autoencoder is not None:
            modules["autoencoder"] = parts.autoencoder
        weights = {}
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                dtype = torch.float16 if value.is_floating_point() else value.dtype
                # a copy: restoring the training weights below overwrites the EMA values in the parameters in place
                weights[f"{name}.{key}"] = value.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
        return weights
    finally:
        trainer.restore_training_weights()


def _shards(weights: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in key order, packed greedily into groups whose safetensors files stay within ``limit`` bytes."""
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 8
    for key in sorted(weights):
        tensor = weights[key]
        cost = tensor.numel() * tensor.element_size() + len(key) + TENSOR_HEADER_BYTES
        if 8 + cost > limit:
            raise InputError(f"weight {key} ({cost / MIB:.1f} MiB) alone exceeds the shard limit of {limit / MIB:.1f} MiB")
        if current and size + cost > limit:
            shards.append(current)
            current, size = {}, 8
        current[key] = tensor
        size += cost
    if current:
        shards.append(current)
    return shards


def write_snapshot(trainer: Trainer, folder: Union[str, Path], max_shard_mb: float = DEFAULT_SHARD_MB) -> Path:
    """Write the trainer's snapshot to ``folder``, built beside it and renamed into place: a reader (or a `git add`)
    sees the previous snapshot or this one, never a mix."""
    folder = Path(folder).absolute()
    limit = int(max_shard_mb * MIB)
    shards = _shards(trained_weights(trainer), limit)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        weight_map, files = {}, {}
        for number, shard in enumerate(shards, start=1):
            name = f"weights-{number:05d}-of-{len(shards):05d}.safetensors"
            data = save_safetensors(shard)
            if len(data) > limit:  # the header allowance is an estimate: never hand back a file over the limit
                raise InputError(f"shard {name} came out at {len(data)} bytes, over the {limit}-byte limit")
            (staging / name).write_bytes(data)
            files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            weight_map.update(dict.fromkeys(shard, name))
        trainer.config.to_json(staging / MODEL_CONFIG)
        log = trainer.output_dir / TRAINING_LOG
        if log.is_file():
            shutil.copyfile(log, staging / TRAINING_LOG)
        index = {
            "format": SNAPSHOT_FORMAT,
            "step": trainer.step,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "xdiffusion_version": __version__,
            "dtype": "float16",
            "weights": "EMA of the denoiser (unet, condition_encoder); the frozen autoencoder as trained",
            "validation": trainer.last_validation,
            "autoencoder": None if trainer.autoencoder is None else {
                "latent_scale": trainer.config.latent_scale, "training": trainer.autoencoder_training},
            "training_config": json.loads(json.dumps(trainer.resolved, default=str)),
            "files": files,
            "weight_map": weight_map,
        }
        (staging / SNAPSHOT_INDEX).write_text(json.dumps(index, indent=1) + "\n")
        os.chmod(staging, 0o755)
        _replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_snapshot(folder: Union[str, Path]) -> Snapshot:
    """Read and verify a snapshot (every shard's size and SHA-256 against the index), or refuse with one line."""
    folder = Path(folder)
    try:
        index = json.loads((folder / SNAPSHOT_INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} holds no campaign snapshot ({SNAPSHOT_INDEX} is missing)") from None
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {folder / SNAPSHOT_INDEX}: {error}") from None
    if not isinstance(index, dict) or index.get("format") != SNAPSHOT_FORMAT:
        raise InputError(f"{folder / SNAPSHOT_INDEX} is not a {SNAPSHOT_FORMAT} index")
    weights: dict[str, torch.Tensor] = {}
    for name, expected in index["files"].items():
        try:
            data = (folder / name).read_bytes()
        except FileNotFoundError:
            raise InputError(f"snapshot {folder} is incomplete: {name} is missing") from None
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise InputError(f"{folder / name} does not match its SHA-256 in {SNAPSHOT_INDEX} (truncated or modified)")
        weights.update(load_safetensors(data))
    if set(weights) != set(index["weight_map"]):
        raise InputError(f"the shards in {folder} do not hold the tensors its {SNAPSHOT_INDEX} lists")
    return Snapshot(folder, index, weights)


def snapshot_step(folder: Union[str, Path]) -> Optional[int]:
    """The step of the snapshot in ``folder`` from its index alone (no weights read), or None when there is none."""
    path = Path(folder) / SNAPSHOT_INDEX
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None


def restore_autoencoder(snapshot: Snapshot, folder: Path, config: XDiffusionConfig) -> None:
    """Put the snapshot's autoencoder where a run keeps its own (`output_dir/autoencoder`), with its latent scale and
    training record, so the run reuses it instead of training a new one the denoiser never saw."""
    autoencoder, record = _snapshot_autoencoder(snapshot, config)
    staging = folder.with_name(f".{folder.name}.snapshot.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    autoencoder.save_pretrained(staging, safe_serialization=True)
    (staging / AUTOENCODER_RECORD).write_text(json.dumps(
        {"latent_scale": record["latent_scale"], "training": record.get("training")}) + "\n")
    _replace_dir(staging, folder)


def _snapshot_autoencoder(snapshot: Snapshot, config: XDiffusionConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The snapshot's frozen autoencoder, built from ``config`` and loaded strictly, with its record (latent scale,
    training); refused with one line for a latent model's snapshot that holds none."""
    record = snapshot.index.get("autoencoder")
    if record is None:
        raise InputError(f"the model is latent but snapshot {snapshot.folder} holds no autoencoder")
    autoencoder = build_autoencoder(config)
    _load_component(autoencoder, snapshot, "autoencoder")
    return autoencoder, record


def _load_component(module: torch.nn.Module, snapshot: Snapshot, name: str) -> None:
    try:
        module.load_state_dict(snapshot.component(name), strict=True)  # float16 is widened to the module's dtype
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise InputError(f"the {name} weights in snapshot {snapshot.folder} do not match the run's config: {detail}") from None


def load_snapshot(trainer: Trainer, snapshot: Snapshot) -> None:
    """Continue ``trainer`` from ``snapshot``: its weights into the denoiser and the EMA, its step, its training log.

    The EMA's step count is set to the snapshot's too, so its decay continues where it was instead of warming up.
    """
    denoiser = trainer.accelerator.unwrap_model(trainer.model)
    _load_component(denoiser.unet, snapshot, "unet")
    _load_component(denoiser.condition_encoder, snapshot, "condition_encoder")
    trainer.ema.shadow_params = [p.detach().clone() for p in denoiser.parameters()]
    trainer.ema.optimization_step = snapshot.step
    trainer.step = snapshot.step
    log = snapshot.folder / TRAINING_LOG
    if trainer.accelerator.is_main_process and log.is_file():
        with open(log, newline="") as handle:  # the snapshot's log is the run's history up to its step
            rows = [row for row in csv.reader(handle)]
        kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= snapshot.step]
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        temporary = trainer.output_dir / f".{TRAINING_LOG}.tmp"
        temporary.write_text(text.getvalue())
        os.replace(temporary, trainer.output_dir / TRAINING_LOG)


def export_model(snapshot: Snapshot, folder: Union[str, Path], label_net: Optional[Union[str, Path]] = None) -> Path:
    """A model folder (`save_model` layout, what `reconstruct --model` loads) from a campaign snapshot, so that a
    campaign's weights can be sampled and measured between its commits without a run to its last step. The card says
    it is a snapshot, carries the snapshot's own validation and offers no tumour labels (nothing was measured)."""
    config = XDiffusionConfig.from_json(snapshot.folder / MODEL_CONFIG)
    unet, encoder = build_unet(config), ConditionEncoder.for_model(config)
    _load_component(unet, snapshot, "unet")
    _load_component(encoder, snapshot, "condition_encoder")
    autoencoder, record = _snapshot_autoencoder(snapshot, config) if config.latent else (None, None)
    labels = None
    if label_net is not None:
        from .label_net import TumourLabelNet

        try:
            labels = TumourLabelNet.from_pretrained(str(label_net), use_safetensors=True)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot load the tumour label net in {label_net}: {' '.join(str(error).split())[:200]}") from None
    index = snapshot.index
    card = {
        "campaign_snapshot": {"folder": str(snapshot.folder), "step": snapshot.step, "created": index.get("created"),
                              "snapshot_sha256": hashlib.sha256((snapshot.folder / SNAPSHOT_INDEX).read_bytes()).hexdigest()},
        "steps": snapshot.step,
        "validation": index.get("validation") or {},
        "prediction_type": config.prediction_type,
        "latent_scale": config.latent_scale,
        "segments_tumours": False,
        "segments_tumours_basis": "a campaign snapshot: tumour labels not measured on held-out data",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "xdiffusion_version": __version__,
        "training_config": card_config(index.get("training_config") or {}),
        "intended_use": INTENDED_USE,
        **conditioning_card(config),
    }
    if autoencoder is not None:
        card["autoencoder"] = _autoencoder_metrics(snapshot.folder / TRAINING_LOG)
        card["autoencoder_training"] = record.get("training")
    return save_model(folder, unet, encoder, autoencoder, dict(noise_schedule(config).config), config, card, labels)


def _autoencoder_metrics(log: Path) -> dict[str, Union[int, float]]:
    """The autoencoder's held-out numbers as the run logged them (`autoencoder/...` rows) when it was trained."""
    if not log.is_file():
        return {}
    with open(log, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("name", "").startswith("autoencoder/")]
    return {row["name"].removeprefix("autoencoder/"): int(row["value"]) if row["value"].isdigit() else float(row["value"])
            for row in rows}
