"""`xdiffusion reconstruct-cohort` on this machine: one process with every core's threads against two accelerate
processes with one thread each (`accelerate launch --multi_gpu --num_processes 2` on a machine without GPU starts two
gloo CPU processes; the cohort sets torch threads to cores / processes). The cohort is copies of the shipped sample.
Writes results/cohort.json.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

from common import model_dir, run_measured, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    from xdiffusion.demo import SAMPLE_IMAGE

    folder = model_dir(args.model)
    options = ["--model", str(folder), "--views", str(args.views), "--steps", str(args.steps)]
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        cohort = Path(scratch) / "cohort"
        cohort.mkdir()
        for number in range(args.volumes):
            shutil.copy(SAMPLE_IMAGE, cohort / f"subject{number:02d}.nii.gz")
        commands = {
            "1 process x 2 threads": [sys.executable, "-m", "xdiffusion.cli", "reconstruct-cohort", str(cohort), "-o", f"{scratch}/one", *options],
            "2 processes x 1 thread": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                       "-m", "xdiffusion.cli", "reconstruct-cohort", str(cohort), "-o", f"{scratch}/two", *options],
        }
        for (name, command), out in zip(commands.items(), ("one", "two")):
            run = run_measured(command)
            if run["returncode"] != 0:
                raise SystemExit(f"{name} failed:\n{run['stderr'][-3000:]}")
            with open(Path(scratch) / out / "cohort_summary.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            runs[name] = {"seconds": run["seconds"], "volumes": len(rows), "done": sum(r["status"] == "done" for r in rows),
                          "seconds_per_volume_in_process": round(sum(float(r["seconds"]) for r in rows) / len(rows), 2),
                          "peak_rss_mb_of_launcher_tree": run["peak_rss_mb"]}
            print(f"{name}: {run['seconds']:.1f} s for {len(rows)} volumes ({runs[name]['seconds_per_volume_in_process']} s per volume inside a process)")
        rerun = run_measured(commands["1 process x 2 threads"])
        runs["rerun (all finished, skipped)"] = {"seconds": rerun["seconds"]}
        print(f"rerun with every output present: {rerun['seconds']:.1f} s (all skipped)")
    speedup = runs["1 process x 2 threads"]["seconds"] / runs["2 processes x 1 thread"]["seconds"]
    print(f"speed-up from 1 to 2 processes: {speedup:.2f}x")
    path = write_results("cohort", {"model": str(folder), "views": args.views, "steps": args.steps, "runs": runs, "speedup_2_processes": round(speedup, 2)})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
