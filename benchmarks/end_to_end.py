"""What a user waits for on this machine: `xdiffusion demo` and `xdiffusion reconstruct` of the shipped sample from one
slice with the default settings, each a fresh process (start-up, imports and model loading included), wall time and
peak resident memory (GNU time); then where the time of one reconstruction goes, stage by stage, in-process.
Writes results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import model_dir, run_measured, write_results, xdiffusion_command

TARGETS = {"demo_seconds": 60.0, "reconstruct_seconds": 45.0, "peak_memory_gb": 4.0}


def stages(folder: Path) -> dict[str, float]:
    from xdiffusion.cli import DEFAULT_SAMPLING
    from xdiffusion.demo import SAMPLE_IMAGE
    from xdiffusion.io import read_image, write_volume
    from xdiffusion.pipeline import XDiffusionPipeline
    from xdiffusion.reconstruct import reconstruct, select_slices

    times, marks = {}, []
    started = time.perf_counter()
    pipeline = XDiffusionPipeline.from_pretrained(folder)
    times["load model"] = time.perf_counter() - started
    sampling = {**DEFAULT_SAMPLING, **pipeline.model_card.get("default_sampling", {})}
    t = time.perf_counter()
    inputs = select_slices(read_image(SAMPLE_IMAGE), "axial")
    times["read input"] = time.perf_counter() - t
    t = time.perf_counter()
    result = reconstruct(inputs, "xdiffusion", pipeline, "t1", lambda f, stage: marks.append((time.perf_counter(), stage)) or True, **sampling)
    end = time.perf_counter()
    steps = [m for m, stage in marks if stage.startswith("step ")]
    averaging = next(m for m, stage in marks if stage.startswith("averaging"))
    times["prior + conditioning + step 1"] = steps[0] - t
    times[f"steps 2-{len(steps)}"] = steps[-1] - steps[0]
    times["decode"] = averaging - steps[-1]
    times["average views + resample to input grid"] = end - averaging
    with tempfile.TemporaryDirectory() as folder_out:
        t = time.perf_counter()
        write_volume(result.image, Path(folder_out) / "out.nii.gz")
        write_volume(result.segmentation, Path(folder_out) / "seg.nii.gz")
        write_volume(result.uncertainty, Path(folder_out) / "unc.nii.gz")
        times["write 3 NIfTI (gzip)"] = time.perf_counter() - t
    if sampling.get("prior") == "atlas" and float(sampling.get("strength", 1.0)) < 1.0:
        t = time.perf_counter()
        reconstruct(inputs, "atlas")
        times["of which: the atlas prior's registration (timed apart)"] = time.perf_counter() - t
    return {"sampling": sampling, "seconds": {k: round(v, 3) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    folder = model_dir(args.model)
    from xdiffusion.demo import SAMPLE_IMAGE
    from xdiffusion.model_location import PACKAGED_MODEL

    model_args = [] if folder.resolve() == PACKAGED_MODEL.resolve() else ["--model", str(folder)]
    results = {"model": str(folder), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as scratch:
        demo = run_measured(xdiffusion_command("demo", "--output-dir", f"{scratch}/demo", "--progress", "json", *model_args))
        if demo["returncode"] != 0:
            raise SystemExit(f"demo failed:\n{demo['stderr'][-3000:]}")
        rec = run_measured(xdiffusion_command("reconstruct", str(SAMPLE_IMAGE), "-o", f"{scratch}/out.nii.gz", "--quiet", *model_args))
        if rec["returncode"] != 0:
            raise SystemExit(f"reconstruct failed:\n{rec['stderr'][-3000:]}")
        metrics = (Path(scratch) / "demo" / "metrics.json").read_text()
    import json

    demo_metrics = json.loads(metrics)
    results["demo"] = {"seconds": demo["seconds"], "peak_rss_mb": demo["peak_rss_mb"], "psnr": demo_metrics["xdiffusion"]["psnr"],
                       "ssim": demo_metrics["xdiffusion"]["ssim"], "extrude_psnr": demo_metrics["extrude"]["psnr"], "atlas_psnr": demo_metrics["atlas"]["psnr"],
                       "sampling": demo_metrics["sampling"]}
    results["reconstruct"] = {"seconds": rec["seconds"], "peak_rss_mb": rec["peak_rss_mb"]}
    print(f"xdiffusion demo: {demo['seconds']:.1f} s, peak {demo['peak_rss_mb']} MB (target <= 60 s, <= 4 GB); "
          f"PSNR {results['demo']['psnr']:.2f} dB (extrude {results['demo']['extrude_psnr']:.2f} dB)")
    print(f"xdiffusion reconstruct (sample, one axial slice, defaults): {rec['seconds']:.1f} s, peak {rec['peak_rss_mb']} MB (target <= 45 s)")
    torch.set_grad_enabled(False)
    results["stages"] = stages(folder)
    started = time.perf_counter()
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import xdiffusion.cli, torch, diffusers, SimpleITK"], check=True)
    results["stages"]["seconds"]["python + imports (fresh process)"] = round(time.perf_counter() - started, 3)
    for name, seconds in results["stages"]["seconds"].items():
        print(f"  {name:<42}{seconds:7.2f} s")
    print(f"written to {write_results('end_to_end', results)}")


if __name__ == "__main__":
    main()
