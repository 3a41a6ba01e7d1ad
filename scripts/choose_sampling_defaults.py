"""Choose the shipped model's default sampling settings on TRAINING-source volumes (never the validation source,
which the evaluation reports): PSNR/SSIM from one axial slice, and seconds, for a small grid of settings.

The volumes are spatially augmented variants of the training subjects (the training set's own augmentation), not
the raw MNI-space templates: the atlas prior's template is itself MNI-space, and would otherwise look perfect.

    python scripts/choose_sampling_defaults.py --model runs/cpu_default/model --budget-s 45
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import write_results  # noqa: E402
from xdiffusion.data.fetch import default_cache_dir  # noqa: E402
from xdiffusion.data.loaders import load_training_subjects  # noqa: E402
from xdiffusion.data.training_set import TrainingSetConfig, subject_variant  # noqa: E402
from xdiffusion.evaluate import evaluate_volumes  # noqa: E402
from xdiffusion.pipeline import XDiffusionPipeline  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402


def selection_volumes(count: int, seed: int):
    """``count`` augmented T1 variants of the training subjects (seeded, so every candidate sees the same ones)."""
    subjects = [s for s in load_training_subjects(default_cache_dir(), "train") if "t1" in s.modalities]
    rng = np.random.default_rng(seed)
    config = TrainingSetConfig(tumour_share=0.0)
    return [subject_variant(subjects[i % len(subjects)], ["t1"], config, rng)[0] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=45.0)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--views", type=int, nargs="+", default=[4])
    parser.add_argument("--steps", type=int, nargs="+", default=[12])
    parser.add_argument("--candidates", nargs="+", default=["extrude:1.0", "extrude:0.6", "atlas:0.7", "atlas:0.5", "atlas:0.3"],
                        help="PRIOR:STRENGTH pairs (strength 1 ignores the prior)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    volumes = selection_volumes(args.volumes, seed=7)
    inputs = [select_slices(volume, "axial") for volume in volumes]
    pipeline = XDiffusionPipeline.from_pretrained(args.model)

    def scored(method: str, **sampling) -> dict:
        started = time.perf_counter()
        metrics = [evaluate_volumes(volume, reconstruct(given, method, pipeline if method == "xdiffusion" else None, "t1", **sampling).image)
                   for volume, given in zip(volumes, inputs)]
        row = {"method": method, **sampling, "psnr": float(np.mean([m["psnr"] for m in metrics])), "ssim": float(np.mean([m["ssim"] for m in metrics])),
               "seconds": round((time.perf_counter() - started) / len(volumes), 1)}
        print(row, flush=True)
        return row

    rows = [scored("extrude"), scored("atlas")]
    for views, steps, candidate, guidance in itertools.product(args.views, args.steps, args.candidates, args.guidance):
        prior, strength = candidate.split(":")
        rows.append(scored("xdiffusion", views=views, steps=steps, strength=float(strength), prior=prior, guidance=guidance))
    tried = [r for r in rows if r["method"] == "xdiffusion"]
    best = max([r for r in tried if r["seconds"] <= args.budget_s] or tried, key=lambda r: r["psnr"])
    path = write_results("sampling_defaults", {"volumes": f"{len(volumes)} augmented T1 variants of the training subjects (seed 7), "
                                               "one axial slice each", "rows": rows, "chosen": best})
    print(json.dumps(best), f"written to {path}")


if __name__ == "__main__":
    main()
