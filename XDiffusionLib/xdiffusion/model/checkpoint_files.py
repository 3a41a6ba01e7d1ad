"""A training run's checkpoint folders on disk: `checkpoints/step-N`, each written in a hidden staging folder and
renamed into place when complete (its `train_step.json` written last), the EMA beside accelerate's state as
safetensors, an older checkpoint's pickled EMA never unpickled, and the metrics log trimmed back to a resumed step."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from accelerate.utils import ProjectConfiguration
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
EMA_WEIGHTS = "ema.safetensors"  # the EMA in a checkpoint: safetensors, not accelerate's pickled custom state
STEP_FILE = "train_step.json"  # written last: a checkpoint without it is incomplete
METRICS_LOG = "metrics.csv"


def project_configuration(output_dir: Path) -> ProjectConfiguration:
    """The run folder as accelerate's project (its trackers log there), with accelerate's automatic checkpoint naming
    off: it writes `checkpoints/checkpoint_<i>` in place, so a kill leaves a half-written newest folder that its
    resume would pick; its `total_limit` rotation exists only with that naming, deletes the oldest before the new
    checkpoint is complete, and orders every entry of `checkpoints/` by the first number in its name (our staging
    folders and the `step-N` folders of runs in progress included). So the name (`step-N`, the training step), the
    staging and rename (`train_step.json` last) and the rotation after it stay ours."""
    return ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False)


def replace_dir(staging: Path, final: Path) -> None:
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
        if match and (entry / STEP_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def checkpoint_to_resume(output_dir: Path, which: str) -> Optional[Path]:
    """`train.resume`: "latest" (None when nothing is saved yet: a fresh run) or a checkpoint folder."""
    if which == "latest":
        found = checkpoints(output_dir)
        return found[-1][1] if found else None
    folder = Path(which)
    if not (folder / STEP_FILE).is_file():
        raise InputError(f"{folder} is not a complete training checkpoint")
    return folder


def load_accelerate_state(accelerator, folder: Path) -> None:
    """accelerate's state from a checkpoint; an older checkpoint's pickled EMA (custom_checkpoint_*.pkl), which
    accelerate would unpickle with weights_only=False, is left out through a view of the folder without it."""
    legacy = sorted(folder.glob("custom_checkpoint_*.pkl"))
    if legacy:
        with tempfile.TemporaryDirectory(prefix=".resume-", dir=folder.parent) as view:
            for entry in folder.iterdir():
                if entry not in legacy:
                    os.symlink(entry.resolve(), Path(view) / entry.name)
            accelerator.load_state(view)
    else:
        accelerator.load_state(str(folder))


def read_step(folder: Path) -> int:
    return json.loads((folder / STEP_FILE).read_text(encoding="utf-8"))["step"]


def read_ema_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's EMA state dict (for `EMAModel.load_state_dict`), from its safetensors file or, for checkpoints
    written before it existed, from the old pickle read with torch's weights-only loader."""
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
    return {**state, "shadow_params": shadow}


def write_ema_and_step(staging: Path, ema_state: dict[str, Any], step: int) -> None:
    """The EMA (safetensors, its non-tensor state in the metadata), then the step file that completes the checkpoint."""
    state = dict(ema_state)
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i:05d}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)},
              str(staging / EMA_WEIGHTS), metadata={"state": json.dumps(state)})
    (staging / STEP_FILE).write_text(json.dumps({"step": step}) + "\n")


def forget_metrics_after_step(output_dir: Path, step: int) -> None:
    """Drop metric rows a killed run logged after its last checkpoint, so the resumed curve continues once."""
    path = output_dir / METRICS_LOG
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= step]
    if len(kept) != len(rows):
        temporary = path.with_name(".metrics.csv.tmp")
        with open(temporary, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
        os.replace(temporary, path)
