"""Our batched multi-view sampler against the official-style loop, on the same model and the same input.

Official X-Diffusion style: one slice at a time, 50 DDIM steps, classifier-free guidance 7.5 (two U-Net calls per
slice per step). Ours: every slice of every view in one batch per solver step, DPM-Solver++ with few steps, guidance
1 (no second call). Prints U-Net evaluations per second and seconds per volume; writes results/sampling.json.
The naive loop is timed on `--naive-slices` slices and scaled to a whole volume (it is linear in slices: each slice
is an independent sequence of batch-1 calls); the scaling is stated in the output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import write_results
from xdiffusion import geometry
from xdiffusion.demo import SAMPLE_IMAGE
from xdiffusion.io import read_volume
from xdiffusion.model_location import resolve_model_dir
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.reconstruct import place_in_cube, select_slices


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--naive-steps", type=int, default=50)
    parser.add_argument("--naive-guidance", type=float, default=7.5)
    parser.add_argument("--naive-slices", type=int, default=4)
    args = parser.parse_args()

    pipeline = XDiffusionPipeline.from_pretrained(resolve_model_dir(args.model))
    side = pipeline.model_config.cube_size
    inputs = select_slices(read_volume(SAMPLE_IMAGE), "axial")
    slices, _, _ = place_in_cube(inputs, side)
    pipeline(slices, "t1", views=1, steps=1)  # warm-up: first calls allocate

    ours, ours_seconds = timed(lambda: pipeline(slices, "t1", views=args.views, steps=args.steps))
    rotations = geometry.view_rotations(args.views)
    conditioning = pipeline._conditioning(slices, rotations, pipeline.model_config.modalities.index("t1"))
    rows = np.linspace(0, args.views * side - 1, args.naive_slices).round().astype(int)
    naive_evaluations = 0
    started = time.perf_counter()
    for row in rows:
        single = {key: value[row:row + 1] for key, value in conditioning.items()}
        _, evaluations = pipeline.generate_slices(single, args.naive_steps, args.naive_guidance, solver="ddim", chunk_size=1)
        naive_evaluations += evaluations
    naive_seconds_measured = time.perf_counter() - started
    per_slice = naive_seconds_measured / len(rows)
    naive_volume_seconds = per_slice * args.views * side
    results = {
        "model_cube": side,
        "views": args.views,
        "ours": {
            "solver": "dpmsolver++", "steps": args.steps, "guidance": 1.0,
            "seconds_per_volume": round(ours_seconds, 2),
            "unet_evaluations": ours.unet_evaluations,
            "unet_evaluations_per_second": round(ours.unet_evaluations / ours_seconds, 1),
        },
        "official_style": {
            "solver": "ddim", "steps": args.naive_steps, "guidance": args.naive_guidance, "batch": 1,
            "slices_timed": len(rows),
            "seconds_per_slice": round(per_slice, 3),
            "seconds_per_volume_scaled": round(naive_volume_seconds, 1),
            "unet_evaluations_per_volume": 2 * args.naive_steps * args.views * side,
            "unet_evaluations_per_second": round(naive_evaluations / naive_seconds_measured, 1),
        },
        "speedup": round(naive_volume_seconds / ours_seconds, 1),
    }
    path = write_results("sampling", results)
    print(f"ours: {ours_seconds:.1f} s/volume, {results['ours']['unet_evaluations_per_second']} U-Net evals/s "
          f"({args.views} views x {side} slices x {args.steps} steps, one batch per step)")
    print(f"official-style: {naive_volume_seconds:.0f} s/volume (scaled from {len(rows)} slices), "
          f"{results['official_style']['unet_evaluations_per_second']} U-Net evals/s (batch 1, 50 DDIM steps, guidance 7.5)")
    print(f"speed-up {results['speedup']}x; written to {path}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
