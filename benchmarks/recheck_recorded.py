"""Re-run recorded held-out runs with today's code and compare: a refactor that promises unchanged behaviour proves it.

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/recheck_recorded.py [--methods xdiffusion] [--k 1]
        [--kinds brain head] [--band-db 0.2] [--band-ssim 0.005]

Takes the run records of `held_out_individuals.py` (benchmarks/results/individuals/runs/) for the chosen methods, K
and case kinds, made with the same model on the same volume, executes each again exactly as recorded (same inputs,
sampling and seed) without touching the records, and prints recorded and new whole PSNR, brain PSNR and SSIM. Writes
benchmarks/results/recheck_recorded.json; exits 1 when any difference leaves the band (issue 18: +-0.2 dB PSNR,
+-0.005 SSIM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from held_out_individuals import RESULTS_DIR, Run, cases_from_scans, execute, fingerprint, held_out_scans  # noqa: E402
from evaluation_suite import model_identity  # noqa: E402
from common import write_results  # noqa: E402

COMPARED = ("psnr", "psnr_mask", "ssim")


def recorded_runs(methods: list[str], k: int, kinds: list[str]) -> list[dict]:
    records = [json.loads(path.read_text()) for path in sorted((RESULTS_DIR / "runs").glob("*.json"))]
    return [r for r in records if r["run"]["method"] in methods and r["run"]["k"] == k and r["run"]["kind"] in kinds
            and "metrics" in r]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["xdiffusion"])
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--kinds", nargs="+", default=["brain", "head"])
    parser.add_argument("--band-db", type=float, default=0.2)
    parser.add_argument("--band-ssim", type=float, default=0.005)
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR")
    args = parser.parse_args(argv)

    import torch

    from xdiffusion.data.fetch import default_cache_dir
    from xdiffusion.model_location import resolve_model_dir
    from xdiffusion.pipeline import XDiffusionPipeline

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    folder = resolve_model_dir(None)
    pipeline = XDiffusionPipeline.from_pretrained(folder)
    owner = model_identity(pipeline, folder)
    cases = cases_from_scans(held_out_scans(Path(args.cache) if args.cache else default_cache_dir()), shifted=False)
    prints = {name: fingerprint(case) for name, case in cases.items()}
    rows, outside = [], 0
    for record in recorded_runs(args.methods, args.k, args.kinds):
        spec = record["run"]
        if spec["case"] not in cases or prints[spec["case"]] != record["case_fingerprint"] or \
                (spec["method"] in ("xdiffusion", "pure") and record["model"] != owner):
            continue  # another volume or another model: nothing to compare with
        run = Run(spec["case"], spec["plane"], spec["k"], spec["method"], tuple(sorted(spec["sampling"].items())), spec["seed"])
        began = time.perf_counter()
        now, _ = execute(run, cases[run.case], pipeline, {})
        differences = {key: now["metrics"][key] - record["metrics"][key] for key in COMPARED}
        within = abs(differences["psnr"]) <= args.band_db and abs(differences["psnr_mask"]) <= args.band_db and \
            abs(differences["ssim"]) <= args.band_ssim
        outside += not within
        rows.append({"run": spec["id"], "recorded": {k: record["metrics"][k] for k in COMPARED},
                     "now": {k: now["metrics"][k] for k in COMPARED}, "difference": differences, "within_band": within,
                     "seconds": round(time.perf_counter() - began, 1)})
        print(f"{spec['id']}: PSNR {record['metrics']['psnr']:.3f} -> {now['metrics']['psnr']:.3f}, brain "
              f"{record['metrics']['psnr_mask']:.3f} -> {now['metrics']['psnr_mask']:.3f}, SSIM {record['metrics']['ssim']:.4f} -> "
              f"{now['metrics']['ssim']:.4f}{'' if within else '  OUTSIDE THE BAND'}", flush=True)
    write_results("recheck_recorded", {"methods": args.methods, "k": args.k, "kinds": args.kinds, "band_db": args.band_db,
                                            "band_ssim": args.band_ssim, "model": owner, "runs": rows, "outside_band": outside})
    print(f"{len(rows)} runs rechecked, {outside} outside the band")
    return 1 if outside or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
