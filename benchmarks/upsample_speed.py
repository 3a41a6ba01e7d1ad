"""Speed and memory of `xdiffusion upsample` on the issue's workload: 30 thick slices to a 1 mm brain on 2 CPU cores.

    python benchmarks/upsample_speed.py [--runs 3] [--methods bspline learned]

The stack is the packaged sample brain (SRI24 at 2 mm) brought to 1 mm (B-spline; 240 x 240 x 155), averaged over 30
axial slabs of 5 mm (`upsample.slabs.slab_average`); the command writes a 240 x 240 x 150 volume at 1 mm. Each run is a fresh process
(`common.run_measured`: wall seconds including start-up and model loading, GNU time's peak resident memory).
Writes results/upsample_speed.json with the median, minimum and maximum per method against the targets.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import machine, run_measured, write_results, xdiffusion_command
import numpy as np

from xdiffusion.io import Geometry, Volume, read_volume, write_volume
from xdiffusion.demo import SAMPLE_IMAGE
from xdiffusion.upsample.resampling import resample
from xdiffusion.upsample.slabs import slab_average

TARGETS = {"seconds": 120.0, "peak_memory_gb": 4.0}
SLABS, VOXELS_PER_SLAB = 30, 5


def one_millimetre_brain() -> Volume:
    """The sample on a 1 mm grid covering the same box (voxel edges kept)."""
    sample = read_volume(SAMPLE_IMAGE)
    geometry = sample.geometry
    shape = tuple(int(round(n * s)) for n, s in zip(geometry.shape, geometry.spacing))
    corner = geometry.index_to_physical(np.full(3, -0.5))
    grid = Geometry(shape, np.ones(3), corner + geometry.direction @ np.full(3, 0.5), geometry.direction)
    return Volume(resample(sample, grid, "bspline"), grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["bspline", "learned"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        stack_path = Path(folder) / "thick.nii.gz"
        write_volume(slab_average(one_millimetre_brain(), 2, VOXELS_PER_SLAB, 2, SLABS), stack_path)
        for method in args.methods:
            runs = []
            for number in range(args.runs):
                run = run_measured(xdiffusion_command("upsample", str(stack_path), "-o", str(Path(folder) / f"{method}{number}.nii.gz"),
                                                      "--method", method, "--quiet"))
                if run["returncode"] != 0:
                    raise SystemExit(f"upsample --method {method} failed: {run['stderr'].strip().splitlines()[-1]}")
                runs.append(run)
            seconds = [r["seconds"] for r in runs]
            peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
            results[method] = {"seconds_median": statistics.median(seconds), "seconds_min": min(seconds), "seconds_max": max(seconds),
                               "peak_rss_mb_max": max(peaks) if peaks else None, "runs": len(runs)}
            print(f"{method}: median {results[method]['seconds_median']:.1f} s ({min(seconds):.1f}-{max(seconds):.1f}), "
                  f"peak {results[method]['peak_rss_mb_max']} MB (targets {TARGETS['seconds']:.0f} s, {TARGETS['peak_memory_gb']:.0f} GB)")
    path = write_results("upsample_speed", {"workload": f"{SLABS} axial slabs of {VOXELS_PER_SLAB} mm (the sample brain) to 1 mm, "
                                            "240 x 240 x 150 out", "targets": TARGETS, "methods": results,
                                            "threads_note": f"torch threads in the child: the CLI's own choice on {machine()['cores']} cores"})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
