"""Memory safety of sampling: chunk sizes from free memory, out-of-memory retries with half the chunk (told through
the progress callback), and a CPU run that cannot fit refused up front with the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xdiffusion.compute as compute_module
import xdiffusion.memory as memory_module
import xdiffusion.pipeline as pipeline_module
from test_pipeline import cube_slices, tiny_model
from xdiffusion.compute import available_host_memory
from xdiffusion.errors import InputError, ModelError
from xdiffusion.pipeline import XDiffusionPipeline


@pytest.fixture(scope="module")
def pipeline() -> XDiffusionPipeline:
    return XDiffusionPipeline.from_model(tiny_model())


def fail_once(monkeypatch, error: BaseException, fail_above: int = 0):
    """Make the denoiser raise `error` once for a batch bigger than `fail_above`; record every batch size."""
    real = pipeline_module.denoiser_forward
    state = {"failed": False, "sizes": []}

    def flaky(unet, encoder, noisy, *args, **kwargs):
        state["sizes"].append(noisy.shape[0])
        if not state["failed"] and noisy.shape[0] > fail_above:
            state["failed"] = True
            raise error
        return real(unet, encoder, noisy, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "denoiser_forward", flaky)
    return state


def test_gpu_out_of_memory_retries_with_half_the_chunk_and_says_so(pipeline, monkeypatch):
    expected = pipeline(cube_slices(1), "t1", views=2, steps=2, seed=1, chunk_size=32)
    state = fail_once(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    stages = []
    result = pipeline(cube_slices(1), "t1", views=2, steps=2, seed=1, chunk_size=32,
                      progress=lambda fraction, stage: stages.append((fraction, stage)))
    assert state["sizes"][:2] == [32, 16] and max(state["sizes"][1:]) == 16  # halved, and stays halved
    retry = [stage for _, stage in stages if "retrying" in stage]
    assert retry == ["out of GPU memory: retrying with 16 slices per batch"]
    fractions = [fraction for fraction, _ in stages]
    assert fractions == sorted(fractions)
    np.testing.assert_allclose(result.image, expected.image, atol=1e-5)  # same rows, same noise: same volume


def test_guided_batches_are_retried_too(pipeline, monkeypatch):
    state = fail_once(monkeypatch, torch.cuda.OutOfMemoryError("CUDA out of memory"), fail_above=8)
    pipeline(cube_slices(1), "t1", views=1, steps=1, guidance=2.0, chunk_size=8)  # 16 per call: doubled for guidance
    assert state["sizes"][:2] == [16, 8]


def test_out_of_memory_with_one_slice_is_a_clear_error(pipeline, monkeypatch):
    def always(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipeline_module, "denoiser_forward", always)
    with pytest.raises(ModelError, match="even for one slice"):
        pipeline(cube_slices(1), "t1", views=1, steps=1, chunk_size=4)


def test_other_errors_are_not_retried(pipeline, monkeypatch):
    state = fail_once(monkeypatch, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        pipeline(cube_slices(1), "t1", views=1, steps=1, chunk_size=4)
    assert state["sizes"] == [4]


def test_cpu_run_that_cannot_fit_is_refused_with_the_numbers(pipeline, monkeypatch):
    monkeypatch.setattr(compute_module, "available_host_memory", lambda: 1024**2)  # 1 MiB free
    estimate = pipeline.estimate_memory(6 * 16, 1.0, 6).total(1)
    with pytest.raises(InputError, match=r"needs about [0-9.]+ GB of memory but only 0\.0 GB is available") as raised:
        pipeline(cube_slices(1), "t1", views=6, steps=1)
    assert f"{estimate / 1024**3:.1f} GB" in str(raised.value)


def test_cpu_chunk_shrinks_to_fit_before_refusing(pipeline):
    estimate = pipeline.estimate_memory(64, 1.0, 4)
    room_for_ten = int((estimate.fixed + 10 * estimate.per_slice()) / memory_module.HOST_MEMORY_SHARE) + 1
    assert pipeline.check_host_memory(estimate, 64, available=room_for_ten) == 10
    assert pipeline.check_host_memory(estimate, 64, available=10 * 1024**3) == 64


def test_gpu_chunk_comes_from_free_memory(pipeline, monkeypatch):
    monkeypatch.setattr(XDiffusionPipeline, "device", property(lambda self: torch.device("cuda")))  # only the chunk
    gpu = pipeline  # arithmetic is exercised: nothing runs on it
    estimate = gpu.estimate_memory(1000, 1.0, 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * estimate.per_slice(), 16 * 1024**3))
    assert gpu.choose_chunk_size(estimate, 1000) == int(100 * memory_module.GPU_MEMORY_SHARE)
    assert gpu.choose_chunk_size(estimate, 30) == 30
    assert gpu.choose_chunk_size(estimate, 1000, requested=7) == 7


def test_estimate_grows_with_views_guidance_and_cube():
    small = XDiffusionPipeline.from_model(tiny_model())
    one, four = small.estimate_memory(16, 1.0, 1), small.estimate_memory(64, 1.0, 4)
    assert four.fixed > one.fixed and small.estimate_memory(16, 7.5, 1).unet_per_slice == 2 * one.unet_per_slice


def test_available_host_memory_is_a_plausible_number():
    available = available_host_memory()
    assert available is None or 16 * 1024**2 < available < 1024**5


def test_cpu_threads_never_exceed_usable_cores(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(compute_module, "usable_cores", lambda: 1)
        XDiffusionPipeline.from_model(tiny_model())
        assert torch.get_num_threads() == 1
        torch.set_num_threads(1)
        monkeypatch.setattr(compute_module, "usable_cores", lambda: 8)
        XDiffusionPipeline.from_model(tiny_model())
        assert torch.get_num_threads() == 1  # lowered when oversubscribed, never raised over the user's choice
    finally:
        torch.set_num_threads(threads)
