"""Training throughput on this CPU (samples/s of the training step of the default model: autoencoder encode, U-Net
forward and backward, AdamW) against the data side (SampleGenerator samples/s from the cached cubes, and through a
DataLoader with 0, 1, 2 worker processes), to show whether data loading is the bottleneck. If the default model's
training log exists, its measured rate is reported too. Writes results/training_throughput.json.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import ROOT, random_model, write_results


def load_cubes(cache: Path, limit: int):
    from xdiffusion.data.training_set import _load_cube

    files = sorted(cache.glob("*/variant-*.npz"))[:limit]
    if not files:
        return [], 0.0
    started = time.perf_counter()
    cubes = [_load_cube(path) for path in files]
    return cubes, (time.perf_counter() - started) / len(cubes)


def synthetic_cubes(count: int, side: int = 64):
    from xdiffusion.data.samples import TrainingCube

    rng = np.random.default_rng(0)
    return [TrainingCube(rng.random((side,) * 3, dtype=np.float32) * 500, np.zeros((side,) * 3, np.uint8), "t1") for _ in range(count)]


def generator_rate(samples, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        samples[index]
    return count / (time.perf_counter() - started)


def loader_rate(samples, workers: int, batch: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(samples, batch_size=batch, shuffle=False, num_workers=workers, drop_last=True,
                                         persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per training run, not per batch
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - started)


def train_step_rate(samples, batch: int, steps: int) -> tuple[float, float]:
    from diffusers import DDPMScheduler

    from xdiffusion.model import Denoiser, encode_target

    model = random_model(64)
    config = model.config
    denoiser = Denoiser(model.unet.train(), model.condition_encoder.train())
    autoencoder = model.autoencoder.eval().requires_grad_(False)
    noise_schedule = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule="squaredcos_cap_v2", prediction_type=config.prediction_type)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    data = {key: torch.stack([samples[i][key] for i in range(batch)]) for key in samples[0]}

    def step() -> None:
        with torch.no_grad():
            target = encode_target(autoencoder, data["target"], config.latent_scale)
        noise = torch.randn_like(target)
        timesteps = torch.randint(0, config.num_train_timesteps, (batch,))
        noisy = noise_schedule.add_noise(target, noise, timesteps)
        goal = noise_schedule.get_velocity(target, noise, timesteps)
        drop = torch.rand(batch) < config.cfg_dropout
        loss = F.mse_loss(denoiser(noisy, timesteps, data, drop), goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    encode_started = time.perf_counter()
    with torch.no_grad():
        encode_target(autoencoder, data["target"], config.latent_scale)
    return batch / seconds, time.perf_counter() - encode_started


def logged_rate(log: Path) -> dict | None:
    """The real run's rate from its tqdm lines: 'N/TOTAL [elapsed<remaining, ...]'."""
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    found = re.findall(r"training:.*?(\d+)/(\d+) \[(\d+):(\d+)(?::(\d+))?<", text)
    if not found:
        return None
    step, total, a, b, c = found[-1]
    elapsed = int(a) * 3600 + int(b) * 60 + int(c) if c else int(a) * 60 + int(b)
    return {"steps": int(step), "of": int(total), "elapsed_s": elapsed, "steps_per_second": round(int(step) / max(1, elapsed), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default=str(ROOT / "runs" / "cpu_default" / "cube_cache"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    from xdiffusion.data.samples import SampleGenerator

    cubes, load_seconds = load_cubes(Path(args.cache), 48)
    source = "cached training cubes"
    if not cubes:
        cubes, source = synthetic_cubes(16), "synthetic cubes (no cache found)"
    modalities = sorted({c.modality for c in cubes} | {"t1", "t2", "any"})
    samples = SampleGenerator(cubes, modalities, 4, seed=0, length=100_000)
    rate = generator_rate(samples, args.samples)
    print(f"SampleGenerator: {rate:.0f} samples/s in one process ({len(cubes)} {source}; loading a cached cube takes {load_seconds * 1000:.0f} ms, once)")
    loaders = {}
    for workers in (0, 1, 2):
        loaders[workers] = round(loader_rate(samples, workers, args.batch, args.batches), 1)
        print(f"DataLoader, {workers} workers: {loaders[workers]} samples/s")
    threads = torch.get_num_threads()
    train_rate, encode_seconds = train_step_rate(samples, args.batch, args.steps)
    print(f"training step (batch {args.batch}, {threads} threads): {train_rate:.1f} samples/s; "
          f"data is {rate / train_rate:.0f}x faster than the step in one process")
    logged = logged_rate(ROOT / "runs" / "cpu_default" / "train.log")
    if logged:
        print(f"the default model's training run: {logged['steps_per_second']} steps/s = {logged['steps_per_second'] * args.batch:.1f} samples/s over {logged['steps']} steps")
    path = write_results("training_throughput", {
        "batch": args.batch, "cube_source": source, "cube_load_ms": round(load_seconds * 1000, 1),
        "sample_generator_per_second": round(rate, 1), "dataloader_per_second": loaders,
        "train_step_samples_per_second": round(train_rate, 2), "autoencoder_encode_seconds_per_batch": round(encode_seconds, 3),
        "data_to_step_ratio": round(rate / train_rate, 1), "logged_training_run": logged,
    })
    print(f"written to {path}")


if __name__ == "__main__":
    main()
