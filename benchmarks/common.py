"""Shared by the benchmark scripts: the machine's description, the model to measure, random models of the default
architecture at other cube sizes, child processes measured for wall time and peak memory, JSON results written
atomically."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from xdiffusion.io import atomic_output

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TRAINED_RUN = ROOT / "runs" / "cpu_default" / "model"
DEFAULT_CONFIG = ROOT / "configs" / "cpu_default.yaml"


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = None
    try:
        memory = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def add_precision_option(parser, note: str = "") -> None:
    """``--precision float32|bfloat16`` (default float32, so numbers stay comparable across CPUs), the same in every
    benchmark that loads a model; ``note`` says what else the choice touches."""
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="what the networks compute in (bfloat16: native on AMX / AVX512-BF16 CPUs)" + (f"; {note}" if note else ""))


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average_at_end": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None, **data}
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def model_dir(explicit: Optional[str] = None) -> Path:
    """--model, else the freshly trained default run, else the model shipped in the package."""
    from xdiffusion.model_location import resolve_model_dir

    if explicit:
        return resolve_model_dir(explicit)
    if (TRAINED_RUN / "model_index.json").is_file():
        return TRAINED_RUN
    return resolve_model_dir(None)


def default_config(cube_size: int = 64):
    """The shipped default's architecture (configs/cpu_default.yaml) at another cube size."""
    from xdiffusion.model import XDiffusionConfig
    from xdiffusion.model.training import resolve_config

    return XDiffusionConfig.from_dict(resolve_config(DEFAULT_CONFIG, [f"model.cube_size={cube_size}"])["model"])


def random_model(cube_size: int = 64, seed: int = 0):
    """A randomly initialised model of the default architecture: timing and memory do not depend on weights."""
    from diffusers import DDPMScheduler

    from xdiffusion.model import ConditionEncoder, XDiffusionModel, build_autoencoder, build_unet

    torch.manual_seed(seed)
    config = default_config(cube_size)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                              prediction_type=config.prediction_type)
    autoencoder = build_autoencoder(config).eval() if config.latent else None
    return XDiffusionModel(config, build_unet(config).eval(), ConditionEncoder.for_model(config).eval(), autoencoder,
                           dict(scheduler.config))


def run_measured(command: Sequence[str], env: Optional[dict] = None, timeout: float = 1800) -> dict[str, object]:
    """Run a child process; its wall seconds and peak resident memory (GNU time's figure, else getrusage)."""
    env = {**os.environ, **(env or {})}
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    full = [timer, "-v", *command] if timer else list(command)
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = subprocess.run(full, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - started
    peak_kb = None
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
    if match:
        peak_kb = int(match.group(1))
    else:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak_kb = after if after > before else None  # only valid when this child set a new maximum
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1) if peak_kb else None,
            "returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr}


def python_command(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def xdiffusion_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "xdiffusion.cli", *arguments]


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started
