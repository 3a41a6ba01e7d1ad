"""Where a run computes: the device and its precision (`choose_device`), the host memory available now (psutil), the CPU
cores this process may use, and torch's thread pool kept within them. No model here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import psutil
import torch

from .errors import InputError


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_runs_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 natively (AMX or AVX512-BF16, read from /proc/cpuinfo; False where that
    file is missing). Elsewhere oneDNN emulates bfloat16 and it is no faster than float32."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def choose_device(name: str = "auto", precision: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``, ``cpu`` or ``cuda`` → (device, dtype). Precision ``auto``: bfloat16 (else float16) on a GPU;
    on the CPU bfloat16 where it is native (`cpu_runs_bfloat16`; the shipped model reconstructs a 1 mm brain in 59 s
    instead of 97 s on a 2-core AMX Xeon at the same validation scores, docs/performance.md), else float32."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but this PyTorch build sees no CUDA GPU (use --device cpu or auto)")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return torch.device(name), torch.float32
    if name == "cpu":
        return torch.device(name), torch.bfloat16 if precision == "bfloat16" or cpu_runs_bfloat16() else torch.float32
    bfloat16 = precision == "bfloat16" or torch.cuda.is_bf16_supported()
    return torch.device(name), torch.bfloat16 if bfloat16 else torch.float16


def available_host_memory() -> Optional[int]:
    """Bytes the OS can give us now (Linux: MemAvailable); None if unknown."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def usable_cores() -> int:
    """CPU cores this process may really use: its affinity mask, capped by a cgroup CPU quota (containers; psutil
    does not read cgroup quotas)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def limit_threads() -> None:
    """Never more torch threads than usable cores: an oversubscribed OpenMP pool spin-waits and slows every call."""
    if torch.get_num_threads() > usable_cores():
        torch.set_num_threads(usable_cores())


def limit_training_threads(loader_workers: int) -> None:
    """CPU training: torch threads only on the cores the data loader's workers leave free (never more than asked).
    Measured on the detail campaign (2 cores, one worker building samples and encoding latents): 2.6-3.1 s a step
    with 2 threads, 2.1 s with 1: a pool that shares a core with the worker waits for it at every barrier."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores() - loader_workers)))
