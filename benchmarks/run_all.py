"""The whole benchmark suite with one command (`make benchmarks`), then docs/performance.md from its JSON.

    python benchmarks/run_all.py [--model DIR] [--quick] [--only NAME ...]

Each benchmark is its own process (clean memory figures, no state shared between them); they run one after another,
never side by side, since they measure the same cores. --quick shrinks every benchmark to a smoke test (numbers then
mean nothing). The model: --model, else runs/cpu_default/model if trained here, else the packaged default.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITE = {
    "flops": (["flops.py"], ["--batches", "1,2"]),
    "end_to_end": (["end_to_end.py"], []),
    "speed_quality": (["speed_quality.py"], ["--curve", "dpmsolver++:1,2", "--curve-views", "1",
                                             "--naive-steps", "2", "--naive-slices", "1", "--steps", "2", "--views", "1"]),
    "scaling": (["scaling.py"], ["--cubes", "16,32", "--views", "1,2", "--inputs", "1,2"]),
    "training_throughput": (["training_throughput.py"], ["--samples", "10", "--batches", "1", "--steps", "1", "--batch", "4"]),
    "cohort": (["cohort_benchmark.py"], ["--volumes", "2", "--views", "1", "--steps", "1"]),
}
TAKES_MODEL = {"end_to_end", "speed_quality", "cohort"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=list(SUITE), default=None)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    failed = []
    for name, (script, quick) in SUITE.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / script[0])]
        if args.model and name in TAKES_MODEL:
            command += ["--model", args.model]
        if args.quick:
            command += quick
        print(f"=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=HERE)
        print(f"=== {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if not args.no_report:
        subprocess.check_call([sys.executable, str(HERE / "make_performance_report.py")], cwd=HERE)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
