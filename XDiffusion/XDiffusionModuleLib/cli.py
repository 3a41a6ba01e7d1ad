"""The `xdiffusion` command lines the module runs, and what it reads back: JSON lines on stderr (progress and
warnings), one JSON object on stdout (`evaluate --json`, `model-info --json`), the JSON sidecar written beside every
output file, and the one-line reason of a failure. The module reaches the library only through this CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

CANCELLED_EXIT_CODE = 130
QUALITIES = ("fast", "balanced", "best")  # `reconstruct --preset`: the model card's numbers for each (`model-info`)
DEVICE_FLAGS = {"auto": "auto", "gpu": "cuda", "cpu": "cpu"}
INPUT_NAME = "input.nrrd"  # written by Slicer's storage node; NRRD keeps the grid to 1e-12
INPUT_LABELS_NAME = "input_labels.nrrd"  # the tumour drawn on the input slices, on the input's grid (NRRD, as the input)
OUTPUT_NAMES = {"image": "reconstruction.nrrd", "segmentation": "tumour_labels.nrrd", "uncertainty": "uncertainty.nrrd"}
UPSAMPLED_NAME = "upsampled.nrrd"  # `xdiffusion upsample`'s output: a new isotropic grid, not the input's
FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")  # what the sidecar name drops


def cli_command(python: Sequence[str]) -> list[str]:
    return [*python, "-m", "xdiffusion.cli"]


@dataclass(frozen=True)
class Progress:
    fraction: float
    eta_s: Optional[int]
    stage: str


@dataclass(frozen=True)
class CliWarning:
    message: str


def parse_event(line: str):
    """A `--progress json` line: `Progress`, `CliWarning` ({"event": "warning"}), or None for any other line."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if record.get("event") == "warning" and "message" in record:
        return CliWarning(str(record["message"]))
    if "progress" in record:
        eta = record.get("eta_s")
        return Progress(float(record["progress"]), None if eta is None else int(eta), str(record.get("stage", "")))
    return None


def parse_json_output(lines: Sequence[str]) -> dict:
    """The one JSON object a `--json` command prints on stdout (the last line that is one)."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                return record
    raise ValueError("the command printed no JSON object")


def format_eta(seconds: Optional[int]) -> str:
    if seconds is None:
        return "estimating time left"
    minutes, rest = divmod(int(seconds), 60)
    return f"about {minutes} min {rest:02d} s left" if minutes else f"about {rest} s left"


def error_message(returncode: Optional[int], stderr: Sequence[str], cancelled: bool = False, what: str = "The command") -> str:
    """One line for the user: the CLI's own `error:` line, never a bare exit status."""
    if cancelled or returncode == CANCELLED_EXIT_CODE:
        return "Cancelled; nothing was written."
    for line in reversed(stderr):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    last = next((line.strip() for line in reversed(stderr) if line.strip() and parse_event(line) is None), "")
    detail = f": {last}" if last else " without a message"
    return f"{what} stopped unexpectedly (exit code {returncode}){detail}. See the log for details."


def sidecar_path(output: Path) -> Path:
    """`x/recon.nii.gz` -> `x/recon.json`: where the CLI describes each output it writes."""
    name = output.name
    for suffix in FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_name(name + ".json")


def read_sidecar(output: Path) -> dict:
    """The output's sidecar ({} when there is none: a library older than the sidecars)."""
    path = sidecar_path(Path(output))
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def reconstruct_arguments(workdir: Path, plane: Optional[str], slice_indices: Sequence[int],
                          slice_position: Optional[float] = None, quality: str = "balanced", device: str = "auto",
                          model_dir: Optional[str] = None, method: str = "xdiffusion",
                          segmentation: bool = True, input_labels: bool = False) -> list[str]:
    """One run whose input and outputs all live in ``workdir``. A 3D input gives ``slice_indices`` (and its plane);
    a single 2D slice gives ``slice_position`` instead (its plane is its own: the CLI reads it from the file).
    ``input_labels``: the tumour drawn on the input slices is in ``workdir`` too (`INPUT_LABELS_NAME`); ``segmentation``:
    the model draws tumour labels of its own (a baseline draws none)."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; use one of {', '.join(QUALITIES)}")
    arguments = ["reconstruct", str(workdir / INPUT_NAME), "-o", str(workdir / OUTPUT_NAMES["image"])]
    if slice_position is not None:
        if slice_indices:
            raise ValueError("a single 2D slice takes a slice position, not slice indices")
        arguments += ["--slice-position", f"{float(slice_position):.6g}"]
    else:
        if not slice_indices:
            raise ValueError("a 3D input needs at least one slice index")
        arguments += ["--plane", str(plane), "--slice-index", *[str(int(i)) for i in slice_indices]]
    arguments += ["--method", method, "--progress", "json"]
    if method == "xdiffusion":
        arguments += ["--preset", quality, "--device", DEVICE_FLAGS[device],
                      "--uncertainty-output", str(workdir / OUTPUT_NAMES["uncertainty"])]
        if model_dir:
            arguments += ["--model", str(model_dir)]
    if segmentation or input_labels:  # drawn labels give every method tumour labels: the outline tapered into 3D
        arguments += ["--segmentation-output", str(workdir / OUTPUT_NAMES["segmentation"])]
    if input_labels:
        arguments += ["--input-segmentation", str(workdir / INPUT_LABELS_NAME)]
    return arguments


def upsample_arguments(workdir: Path, device: str = "auto", method: Optional[str] = None,
                       model_dir: Optional[str] = None) -> list[str]:
    """`xdiffusion upsample` of the thick-slice input in ``workdir`` (every slice an input) onto an isotropic grid at
    the input's in-plane spacing; ``method`` None is the library's default (the best measured one)."""
    arguments = ["upsample", str(workdir / INPUT_NAME), "-o", str(workdir / UPSAMPLED_NAME), "--progress", "json"]
    if method is not None:
        arguments += ["--method", method]
    if method == "xdiffusion":
        arguments += ["--device", DEVICE_FLAGS[device], *(["--model", str(model_dir)] if model_dir else [])]
    return arguments


def evaluate_arguments(reference: Path, prediction: Path, reference_labels: Optional[Path] = None,
                       prediction_labels: Optional[Path] = None, uncertainty: Optional[Path] = None) -> list[str]:
    arguments = ["evaluate", "--reference", str(reference), "--prediction", str(prediction)]
    if reference_labels is not None and prediction_labels is not None:
        arguments += ["--reference-segmentation", str(reference_labels), "--prediction-segmentation", str(prediction_labels)]
    if uncertainty is not None:
        arguments += ["--uncertainty", str(uncertainty)]
    return arguments + ["--json"]


def model_info_arguments(model_dir: Optional[str] = None) -> list[str]:
    return ["model-info", *(["--model", str(model_dir)] if model_dir else []), "--json"]
