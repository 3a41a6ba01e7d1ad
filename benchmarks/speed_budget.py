"""The speed budget of issue 13 on this machine: `xdiffusion reconstruct` of a 1 mm 181 × 217 × 181 T1 from its middle
axial slice, each run a fresh process (start-up, imports, model loading, the atlas registration and writing
included), wall time and peak resident memory (GNU time). Default sampling (the model card's) and ``--preset fast``,
each in float32 and in bfloat16 (bfloat16 only where this CPU computes it natively: elsewhere it is emulated and
slower, and ``--precision auto`` keeps float32).

    XDIFFUSION_CACHE=<fetched data> python benchmarks/speed_budget.py [--model DIR] [--repeats N] [--output NAME]

The scan: the fetched MNI152 NLin6Asym T1 (182 × 218 × 182 at 1 mm, whole head), its last index on each axis dropped
so that the grid is 181 × 217 × 181. Timing only: nothing here is scored. Writes results/NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import model_dir, run_measured, write_results, xdiffusion_command  # noqa: E402

TARGETS = {"default_seconds": 90.0, "fast_seconds": 30.0, "peak_memory_gb": 4.0}
SHAPE = (181, 217, 181)
SOURCE = "mni152nlin6asym"


def write_scan(folder: Path) -> Path:
    """The 181 × 217 × 181 1 mm scan, written as NIfTI with the source's geometry (the origin stays: only the high
    ends are dropped)."""
    from xdiffusion.data.fetch import default_cache_dir
    from xdiffusion.io import Geometry, Volume, read_volume, write_volume

    source = next((default_cache_dir() / SOURCE).glob("*_T1w.nii.gz"), None)
    if source is None:
        raise SystemExit(f"error: no fetched {SOURCE} T1 under {default_cache_dir()} (run xdiffusion fetch-data)")
    volume = read_volume(source)
    cut = volume.array[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    if cut.shape != SHAPE:
        raise SystemExit(f"error: {source} is {volume.array.shape}, smaller than {SHAPE}")
    geometry = Geometry(SHAPE, volume.geometry.spacing, volume.geometry.origin, volume.geometry.direction)
    return write_volume(Volume(cut, geometry), folder / "scan_181x217x181.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, metavar="DIR", help="default: the freshly trained default run, else the shipped model")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (the median is reported)")
    parser.add_argument("--output", default="speed_budget", help="results name under benchmarks/results/")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be at least 1, got {args.repeats}")
    from xdiffusion.compute import cpu_runs_bfloat16

    folder = model_dir(args.model)
    precisions = ["float32", "bfloat16"] if cpu_runs_bfloat16() else ["float32"]
    settings = [(preset, precision) for preset in ("default", "fast") for precision in precisions]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scan = write_scan(Path(scratch))
        for preset, precision in settings:
            options = ["--precision", precision] + ([] if preset == "default" else ["--preset", preset])
            runs = []
            for _ in range(args.repeats):
                run = run_measured(xdiffusion_command("reconstruct", str(scan), "-o", f"{scratch}/out.nii.gz", "--model", str(folder),
                                                      "--quiet", *options))
                if run["returncode"] != 0:
                    raise SystemExit(f"error: reconstruct {' '.join(options)} failed: {run['stderr'].strip().splitlines()[-1:]}")
                runs.append(run)
            seconds = [run["seconds"] for run in runs]
            median = statistics.median(seconds)
            peak = max(run["peak_rss_mb"] or 0 for run in runs)
            target = TARGETS[f"{preset}_seconds"]
            rows.append({"preset": preset, "precision": precision, "seconds": seconds, "median_seconds": median,
                         "peak_rss_mb": peak, "target_seconds": target,
                         "within_budget": median <= target and peak <= TARGETS["peak_memory_gb"] * 1024})
            print(f"{preset:<8}{precision:<10}{median:7.1f} s (runs {seconds}), peak {peak:.0f} MB "
                  f"(target <= {target:g} s, <= {TARGETS['peak_memory_gb']:g} GB)", flush=True)
    path = write_results(args.output, {"model": str(folder), "scan": f"{SOURCE} T1 cut to {SHAPE} at 1 mm, middle axial slice",
                                       "targets": TARGETS, "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
