"""How much memory sampling needs and how it stays within it: the estimate of a run from the model's config
(`estimate_memory`), the slices per network call that fit (`choose_chunk_size`, `check_host_memory`), and calls in
chunks that halve the chunk and retry on an out-of-memory error (`ChunkedCalls`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import compute
from .errors import InputError, ModelError

CPU_CHUNK = 256  # slices per U-Net call on a CPU: bigger batches buy nothing there, and bound the activations
GPU_MEMORY_SHARE = 0.7  # of the free GPU memory, for one chunk's activations (the rest: allocator slack, cuDNN work)
HOST_MEMORY_SHARE = 0.9  # of the available host memory a CPU run may plan to use
GIB = 1024.0**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs: per slice of one U-Net chunk (guidance included) and of one decode chunk, and the rest
    (weights, conditioning, latents, the per-view volumes and their average), which does not shrink with chunks."""

    unet_per_slice: int
    decode_per_slice: int
    fixed: int

    def per_slice(self) -> int:
        return max(self.unet_per_slice, self.decode_per_slice)

    def total(self, chunk_size: int) -> int:
        return self.fixed + chunk_size * self.per_slice()


def estimate_memory(config, unet: torch.nn.Module, condition_encoder: torch.nn.Module, autoencoder: Optional[torch.nn.Module],
                    dtype: torch.dtype, count: int, guidance: float = 1.0, views: int = 0) -> MemoryEstimate:
    """Peak bytes of sampling ``count`` slices (``views`` whole views when averaged afterwards) with a model's networks,
    from its config (an `XDiffusionConfig`).

    U-Net activations per slice: its skip connections plus a working set of a dozen feature maps of the widest
    level and the attention matrices (materialised by the CPU's attention); the decoder's likewise at full
    resolution. Calibrated against measured peaks in benchmarks/scaling.py (docs/performance.md).
    """
    item = torch.finfo(dtype).bits // 8
    u, s, side = config.unet, config.unet_size, config.cube_size
    levels = len(u.block_out_channels)
    skips, widest, attention = u.block_out_channels[0] * s * s, 0, 0
    for level, channels in enumerate(u.block_out_channels):
        r = s >> level
        skips += channels * r * r * u.layers_per_block + (channels * (r // 2) ** 2 if level < levels - 1 else 0)
        widest = max(widest, channels * r * r)
        if u.cross_attention[level]:
            heads = max(1, channels // u.attention_head_dim)
            attention = max(attention, heads * (r * r) ** 2 + 8 * channels * r * r)  # scores + GEGLU inner
    inputs = config.unet_in_channels * s * s
    unet_bytes = (skips + 12 * widest + attention + inputs) * item * (2 if guidance != 1.0 else 1)
    decode = 0
    if autoencoder is not None:
        blocks = autoencoder.config.block_out_channels
        decode_widest = max(c * (side >> level) ** 2 for level, c in enumerate(blocks))
        decode = (8 * decode_widest + (s * s) ** 2 + 4 * side * side) * item
    weights = sum(p.numel() * p.element_size() for part in (unet, condition_encoder, autoencoder)
                  if part is not None for p in part.parameters())
    cube = side**3
    latents = count * config.target_channels * s * s * 4 * 4  # latents, model output, scheduler history
    conditioning = count * 2 * side * side * 4 + 40 * cube  # guess + known distance; sample points, extruded cube
    # decoded, per-view copies, fusing (the in-plane fusion keeps every realigned view, float64)
    volumes = views * (3 * 16 + 8) * cube + 130 * cube if views else count * 4 * side * side * 4
    return MemoryEstimate(int(unet_bytes), int(decode), int(weights + latents + conditioning + volumes))


def choose_chunk_size(device: torch.device, estimate: MemoryEstimate, count: int, requested: Optional[int] = None) -> int:
    """Slices per network call: ``requested`` if given, else what fits the free GPU memory, else CPU_CHUNK."""
    if requested is not None:
        return max(1, min(int(requested), count))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # the weights are already resident, so not free
        budget = GPU_MEMORY_SHARE * free
        return max(1, min(count, int(budget // max(1, estimate.per_slice()))))
    return max(1, min(count, CPU_CHUNK))


def check_host_memory(device: torch.device, estimate: MemoryEstimate, chunk_size: int,
                      available: Optional[int] = None) -> int:
    """On the CPU: the chunk size that fits the available memory, or an InputError saying what the run needs."""
    available = compute.available_host_memory() if available is None else available
    if available is None or device.type == "cuda":
        return chunk_size
    budget = HOST_MEMORY_SHARE * available
    if estimate.total(1) > budget:
        raise InputError(
            f"this reconstruction needs about {estimate.total(1) / GIB:.1f} GB of memory but only "
            f"{available / GIB:.1f} GB is available; use fewer --views, a smaller model, or a GPU")
    fitting = int((budget - estimate.fixed) // max(1, estimate.per_slice()))
    return max(1, min(chunk_size, fitting))


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA OOM, or the CPU allocator's refusal: both are retried with smaller chunks."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


class ChunkedCalls:
    """Network calls over the rows of a batch, ``size`` rows at a time, for one sampling run.

    An out-of-memory error halves ``size`` for the rest of the run and retries the same rows (rows already done are
    kept), saying so through the call's ``report(stage)``. accelerate's `find_executable_batch_size` is not used: it restarts
    the whole decorated function from its first row, forgets the smaller size at the next call, and says nothing."""

    def __init__(self, size: int):
        self.size = max(1, int(size))

    def __call__(self, count: int, function: Callable[[int, int], torch.Tensor], report: Callable[[str], None]) -> torch.Tensor:
        """``function(start, stop)`` over [0, count), concatenated."""
        parts, start = [], 0
        while start < count:
            stop = min(count, start + self.size)
            try:
                parts.append(function(start, stop))
            except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried; others re-raised
                if not is_out_of_memory(error):
                    raise
                self._shrink(error, report)
                continue
            start = stop
        return torch.cat(parts)

    def _shrink(self, error: BaseException, report: Callable[[str], None]) -> None:
        where = "GPU memory" if isinstance(error, torch.cuda.OutOfMemoryError) else "memory"
        if self.size <= 1:
            raise ModelError(f"out of {where} even for one slice at a time ({' '.join(str(error).split())[:160]})") from None
        self.size = max(1, self.size // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        report(f"out of {where}: retrying with {self.size} slices per batch")
