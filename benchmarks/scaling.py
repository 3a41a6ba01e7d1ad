"""Time and memory against cube size S, views N and input slices K, with randomly initialised models of the default
architecture (time and memory do not depend on the weights). Each configuration runs in its own process so its peak
resident memory is its own (GNU time). Writes results/scaling.json.

The U-Net works on (S/4)^2 latents, so its cost per slice grows as S^2 and a volume has N*S slices: sampling time is
expected to grow as N * S^3 * steps, decoding likewise, and memory as N * S^3 plus the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from common import python_command, random_model, run_measured, write_results

MARK = "SCALING-RESULT "


def worker(cube: int, views: int, inputs: int, steps: int) -> None:
    from xdiffusion import geometry
    from xdiffusion.pipeline import XDiffusionPipeline

    torch.set_grad_enabled(False)
    pipeline = XDiffusionPipeline.from_model(random_model(cube))
    rng = np.random.default_rng(0)
    coordinates = np.linspace(cube * 0.3, cube * 0.7, inputs).round()
    slices = [geometry.CubeSlice(rng.uniform(-1, 1, (cube, cube)).astype(np.float32), 2, float((c - (cube - 1) / 2) / (cube / 2)))
              for c in coordinates]
    marks = []
    pipeline(slices, "t1", views=1, steps=1)  # warm-up: first calls build kernels
    started = time.perf_counter()
    conditioning_started = time.perf_counter()
    pipeline._conditioning(slices, geometry.view_rotations(views), 0)
    conditioning = time.perf_counter() - conditioning_started
    started = time.perf_counter()
    result = pipeline(slices, "t1", views=views, steps=steps, progress=lambda f, stage: marks.append((time.perf_counter(), stage)) or True)
    total = time.perf_counter() - started
    step_times = [t for t, stage in marks if stage.startswith("step ")]
    averaging = next(t for t, stage in marks if stage.startswith("averaging"))
    estimate = pipeline.estimate_memory(views * cube, 1.0, views)
    chunk = pipeline.choose_chunk_size(estimate, views * cube)
    print(MARK + json.dumps({
        "cube": cube, "views": views, "inputs": inputs, "steps": steps, "seconds_total": round(total, 3),
        "seconds_conditioning": round(conditioning, 3),
        "seconds_per_step": round((step_times[-1] - step_times[0]) / max(1, len(step_times) - 1), 3) if len(step_times) > 1 else round(step_times[0] - started - conditioning, 3),
        "seconds_first_step_with_conditioning": round(step_times[0] - started, 3),
        "seconds_decode": round(averaging - step_times[-1], 3), "seconds_averaging": round(started + total - averaging, 3),
        "unet_evaluations": result.unet_evaluations, "estimated_peak_mb": round(estimate.total(chunk) / 1024**2, 1), "chunk": chunk,
    }), flush=True)


def measure(cube: int, views: int, inputs: int, steps: int) -> dict:
    run = run_measured(python_command(__file__, "--worker", str(cube), str(views), str(inputs), str(steps)))
    lines = [line for line in run["stdout"].splitlines() if line.startswith(MARK)]
    if run["returncode"] != 0 or not lines:
        raise SystemExit(f"worker S={cube} N={views} K={inputs} failed:\n{run['stderr'][-3000:]}")
    row = json.loads(lines[-1][len(MARK):])
    row["peak_rss_mb"] = run["peak_rss_mb"]
    row["process_seconds"] = run["seconds"]
    print(f"  S={cube:>3} N={views} K={inputs} steps={steps}: {row['seconds_total']:6.1f} s in the pipeline "
          f"({row['seconds_per_step']:.2f} s/step, decode {row['seconds_decode']:.2f} s, averaging {row['seconds_averaging']:.2f} s), "
          f"peak {row['peak_rss_mb']} MB (estimated {row['estimated_peak_mb']} MB)", flush=True)
    return row


def fit_exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cubes", default="32,48,64,96,128")
    parser.add_argument("--views", default="1,2,4,8")
    parser.add_argument("--inputs", default="1,2,4")
    parser.add_argument("--steps", type=int, default=2, help="solver steps per run (time per step is reported)")
    parser.add_argument("--worker", nargs=4, type=int, metavar=("S", "N", "K", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]
    baseline = run_measured(python_command("-c", "import torch, diffusers, scipy, SimpleITK, xdiffusion.pipeline"))["peak_rss_mb"]
    print(f"runtime baseline (python + torch + diffusers + xdiffusion imported): {baseline} MB")
    print("cube size (N=1, K=1):")
    cubes = [measure(s, 1, 1, args.steps) for s in ints(args.cubes)]
    print("views (S=64, K=1):")
    views = [measure(64, n, 1, args.steps) for n in ints(args.views)]
    print("input slices (S=64, N=1):")
    inputs = [measure(64, 1, k, args.steps) for k in ints(args.inputs)]
    exponents = {
        "step_vs_cube": fit_exponent([r["cube"] for r in cubes], [r["seconds_per_step"] for r in cubes]),
        "decode_vs_cube": fit_exponent([r["cube"] for r in cubes], [max(r["seconds_decode"], 1e-3) for r in cubes]),
        "averaging_vs_cube": fit_exponent([r["cube"] for r in cubes], [max(r["seconds_averaging"], 1e-3) for r in cubes]),
        "step_vs_views": fit_exponent([r["views"] for r in views], [r["seconds_per_step"] for r in views]),
        "peak_memory_vs_views": fit_exponent([r["views"] for r in views], [r["peak_rss_mb"] for r in views]),
    }
    path = write_results("scaling", {"steps_per_run": args.steps, "baseline_rss_mb": baseline, "cubes": cubes, "views": views, "inputs": inputs,
                                     "log_log_slopes": {k: round(v, 2) for k, v in exponents.items()}})
    print("log-log slopes (3 = cubic, 1 = linear): " + ", ".join(f"{k} {v:.2f}" for k, v in exponents.items()))
    print(f"written to {path}")


if __name__ == "__main__":
    sys.exit(main())
