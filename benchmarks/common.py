"""Shared by the benchmark scripts: the machine's description and JSON results written atomically."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from xdiffusion.io import atomic_output

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps({"machine": machine(), **data}, indent=2, allow_nan=False) + "\n")
    return path
