"""Our sampler against the official-style loop on the same model, machine, input and number of views, in one run,
and the speed/quality curve (solver x steps x views).

- Official X-Diffusion style: one slice at a time, 50 DDIM steps, classifier-free guidance 7.5 (conditional and
  unconditional halves in one batch of 2 per step, as the official code does), decoded slice by slice. Timed on
  `--naive-slices` slices spread over the views and scaled to the whole volume (it is exactly linear in slices: each
  slice is an independent chain of batch-2 calls); its quality comes from the same sampler settings run batched over
  the whole volume (same arithmetic, so the same quality), then realigned, fused and resampled like ours, with the
  same conditioning as our default (an atlas-conditioned model reads the registered atlas; every row starts from
  noise).
- Ours: every slice of every view in one batch per solver step, a multistep solver with few steps, guidance 1 (no
  unconditional call at all), the end-to-end `reconstruct` timed (conditioning, sampling, decoding, fusing and the
  resampling onto the input grid all included, so the comparison is conservative for us).
Quality: PSNR and SSIM of the reconstructed sample (xdiffusion/sample_data/sample_t1.nii.gz) against its truth.
Writes results/speed_quality.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import add_precision_option, model_dir, timed, write_results
from xdiffusion import geometry
from xdiffusion.demo import SAMPLE_IMAGE
from xdiffusion.evaluate import evaluate_volumes
from xdiffusion.io import read_volume
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.reconstruct import place_in_cube, reconstruct, select_slices


def integers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--views", type=int, default=None, help="views of the head-to-head comparison and of the solver curve (default: the CLI's)")
    parser.add_argument("--steps", type=int, default=None, help="our steps (default: the CLI's)")
    parser.add_argument("--solver", default="dpmsolver++", help="our solver (the pipeline's default)")
    parser.add_argument("--curve", nargs="+", default=["dpmsolver++:4,6,8,12", "unipc:4,6,8", "ddim:12,25"], metavar="SOLVER:STEPS",
                        help="solvers and their step counts for the curve")
    parser.add_argument("--curve-views", default="1,2,6")
    parser.add_argument("--naive-steps", type=int, default=50)
    parser.add_argument("--naive-guidance", type=float, default=7.5)
    parser.add_argument("--naive-slices", type=int, default=6)
    parser.add_argument("--skip-official-quality", action="store_true", help="time the official loop only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    add_precision_option(parser, "both samplers alike")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    folder = model_dir(args.model)
    pipeline = XDiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, args.precision))
    from xdiffusion.cli import DEFAULT_SAMPLING

    defaults = {**DEFAULT_SAMPLING, **pipeline.model_card.get("default_sampling", {})}
    args.views = args.views or int(defaults["views"])
    args.steps = args.steps or int(defaults["steps"])
    side = pipeline.model_config.cube_size
    fusion = str(defaults["fusion"])  # every row, the official style's quality too, fuses its views the card's way
    modality = "t1"
    truth = read_volume(SAMPLE_IMAGE)
    inputs = select_slices(truth, "axial")
    reconstruct(inputs, "xdiffusion", pipeline, modality, views=1, steps=1)  # warm-up: first calls build kernels

    def measure(solver: str, steps: int, views: int, guidance: float, strength: float = 1.0, prior: str = "extrude") -> dict:
        result, seconds = timed(lambda: reconstruct(inputs, "xdiffusion", pipeline, modality, views=views, steps=steps,
                                                    guidance=guidance, solver=solver, seed=args.seed, strength=strength, prior=prior,
                                                    fusion=fusion))
        metrics = evaluate_volumes(truth, result.image)
        row = {"solver": solver, "steps": steps, "views": views, "guidance": guidance, "strength": strength, "prior": prior, "seconds": round(seconds, 2),
               "unet_evaluations": result.unet_evaluations, "psnr": round(metrics["psnr"], 3), "ssim": round(metrics["ssim"], 4)}
        print(f"  {solver:<12} steps {steps:>3}  views {views}  guidance {guidance:<4}  strength {strength} ({prior})  {seconds:7.1f} s  "
              f"{result.unet_evaluations:>6} U-Net evals  PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}", flush=True)
        return row

    print(f"model {folder} (cube {side}); sample {SAMPLE_IMAGE.name}, middle axial slice")
    print("ours, default settings:")
    strength, prior = float(defaults.get("strength", 1.0)), str(defaults.get("prior", "extrude"))
    ours = measure(args.solver, args.steps, args.views, 1.0, strength, prior)
    # the official sampling starts from noise: so do the curves, with the default's conditioning (an atlas-conditioned
    # model reads its atlas at strength 1; an SDEdit prior below 1 is dropped)
    curve_prior = prior if strength >= 1.0 else "extrude"
    print("ours from pure noise (the curves below start from noise, like the official sampling):")
    pure = ours if strength >= 1.0 else measure(args.solver, args.steps, args.views, 1.0)

    # official-style timing: batch-2 (guided) calls, one slice at a time
    slices, _, _ = place_in_cube(inputs, side)
    rotations = geometry.view_rotations(args.views)
    conditioning = pipeline._conditioning(slices, rotations, pipeline.model_config.modalities.index(modality))
    rows = np.linspace(0, args.views * side - 1, args.naive_slices).round().astype(int)
    single = {key: value[rows[0]:rows[0] + 1] for key, value in conditioning.items()}
    pipeline.generate_slices(single, 2, args.naive_guidance, solver="ddim", chunk_size=1)  # warm-up of batch-2 shapes
    started = time.perf_counter()
    for row in rows:
        single = {key: value[row:row + 1] for key, value in conditioning.items()}
        pipeline.generate_slices(single, args.naive_steps, args.naive_guidance, solver="ddim", chunk_size=1)
    per_slice = (time.perf_counter() - started) / len(rows)
    official_seconds = per_slice * args.views * side
    official = {"solver": "ddim", "steps": args.naive_steps, "guidance": args.naive_guidance, "views": args.views,
                "batch": "1 slice (2 with guidance)", "slices_timed": len(rows), "seconds_per_slice": round(per_slice, 3),
                "seconds_per_volume_sampling_only": round(official_seconds, 1),
                "unet_evaluations_per_volume": 2 * args.naive_steps * args.views * side}
    print(f"official-style: {per_slice:.2f} s per slice x {args.views * side} slices = {official_seconds:.0f} s per volume "
          f"(sampling and decoding only; timed on {len(rows)} slices)")
    if not args.skip_official_quality:
        print("official-style quality (same settings, batched):")
        quality = measure("ddim", args.naive_steps, args.views, args.naive_guidance, 1.0, curve_prior)
        official.update(psnr=quality["psnr"], ssim=quality["ssim"], batched_seconds=quality["seconds"])

    print("curve: solvers x steps")
    curve = []
    for spec in args.curve:
        solver, _, step_list = spec.partition(":")
        for steps in integers(step_list):
            if (solver, steps, args.views) == (args.solver, args.steps, args.views):
                curve.append(pure)
                continue
            curve.append(measure(solver, steps, args.views, 1.0, 1.0, curve_prior))
    print("curve: views")
    views_curve = []
    for views in integers(args.curve_views):
        if views != args.views:
            views_curve.append(measure(args.solver, args.steps, views, 1.0, 1.0, curve_prior))
    views_curve = sorted(views_curve + [pure], key=lambda row: row["views"])

    def verdict(row: dict) -> dict:
        speedup = per_slice * row["views"] * side / row["seconds"]  # the official loop at this row's number of views
        loss = official["psnr"] - row["psnr"] if "psnr" in official and row["views"] == args.views else None
        return {**row, "speedup": round(speedup, 1), "psnr_loss_db": None if loss is None else round(loss, 3),
                "meets_target": bool(speedup >= 25 and (loss is None or loss <= 0.5))}

    candidates = [verdict(r) for r in curve]
    passing = [r for r in candidates if r["meets_target"]]
    best = min(passing, key=lambda r: r["seconds"]) if passing else None
    results = {
        "model": str(folder), "model_cube": side, "precision": args.precision, "fusion": fusion, "sample": SAMPLE_IMAGE.name, "seed": args.seed,
        "ours_default": verdict(ours), "ours_pure_noise": verdict(pure), "official_style": official, "curve": candidates,
        "views_curve": [verdict(r) for r in views_curve], "fastest_meeting_target": best,
    }
    path = write_results("speed_quality", results)
    d = results["ours_default"]
    print(f"ours ({args.solver}, {args.steps} steps, {args.views} views): {d['seconds']} s end to end, "
          f"speed-up {d['speedup']}x over the official-style loop, PSNR {d['psnr']} dB"
          + (f" vs official-style {official['psnr']} dB (loss {d['psnr_loss_db']} dB)" if "psnr" in official else ""))
    if best:
        print(f"fastest setting meeting >= 25x at <= 0.5 dB loss: {best['solver']} {best['steps']} steps "
              f"({best['seconds']} s, {best['speedup']}x, loss {best['psnr_loss_db']} dB)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
