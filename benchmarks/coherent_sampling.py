"""Coherent 3D sampling against today's averaging of independent views, on the shipped model, and the seconds the
`reconstruct --preset` numbers are chosen from (issue 13, items 3 and 5).

Volumes: the demo sample (held-out SRI24 with its synthetic tumour, its middle axial slice: what `demo.score_on_sample`
reconstructs) and ``--volumes`` augmented T1 variants of the training subjects (`scripts/choose_sampling_defaults.py`
`selection_volumes`, seed 7), one middle axial slice each. Every row is one sampling setting run on every volume,
seed 0, DPM-Solver++; the rows (``ROWS``) cover the default sampling (4 views, 12 steps) from the atlas prior at
strength 0.3 and from pure noise (prior none), each with the views averaged (today) and coherent (fused at every
step), three coherent samples averaged (a posterior mean), and the fast and best preset candidates.

Per row and volume: whole-volume PSNR and SSIM, brain PSNR (``psnr_mask``), ``sharpness`` (1 = as sharp as the
truth; the input slice and its neighbours left out), the uncertainty map's AUROC against |error| above its median
(inside ``reference > 0`` without the input slice and its neighbours), U-Net evaluations, and the wall and CPU
seconds of the whole `reconstruct` call (the atlas registration included). Wall seconds depend on the machine's load,
recorded with the results; CPU seconds (all of this process's threads) much less, so the presets are chosen from
them; the U-Net evaluations and the fusions (one decode and one encode of every slice per solver step) not at all.

    python benchmarks/coherent_sampling.py [--model DIR] [--volumes 3] [--rows NAME ...] [--repeat R] [--output NAME]

Writes benchmarks/results/coherent_sampling.json (rewritten after every row, so a stopped run keeps what it measured;
rows measured now replace the rows of the same name there, the others are kept when the volumes are the same).
The seconds the presets are chosen from come from a separate short pass on a quiet machine, the demo sample alone,
each row repeated and its median kept:

    python benchmarks/coherent_sampling.py --volumes 0 --repeat 3 --output preset_seconds --rows ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from choose_sampling_defaults import selection_volumes  # noqa: E402
from common import RESULTS, model_dir, write_results  # noqa: E402
from xdiffusion.demo import DEMO_PLANE, SAMPLE_IMAGE  # noqa: E402
from xdiffusion.evaluate import evaluate_volumes, uncertainty_ranking  # noqa: E402
from xdiffusion.io import read_volume  # noqa: E402
from xdiffusion.pipeline import XDiffusionPipeline  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402

ATLAS = {"prior": "atlas", "strength": 0.3}
NOISE = {"prior": "none", "strength": 1.0}
ROWS = {  # name -> sampling (views 4, steps 12, one averaged sample unless said)
    "averaged, atlas 0.3 (today's default)": {**ATLAS},
    "coherent, atlas 0.3": {**ATLAS, "coherent": True},
    "averaged, pure noise": {**NOISE},
    "coherent, pure noise": {**NOISE, "coherent": True},
    "3 coherent samples, atlas 0.3": {**ATLAS, "coherent": True, "samples": 3},
    "1 view, atlas 0.3": {**ATLAS, "views": 1},
    "1 view, 6 steps, atlas 0.3": {**ATLAS, "views": 1, "steps": 6},
    "1 view, 3 steps, atlas 0.3": {**ATLAS, "views": 1, "steps": 3},
    "8 views averaged, atlas 0.3": {**ATLAS, "views": 8},
}
METRICS = ("psnr", "ssim", "psnr_mask", "sharpness", "uncertainty_auroc", "seconds", "cpu_seconds", "unet_evaluations")


def scored(pipeline: XDiffusionPipeline, reference, inputs, sampling: dict, repeat: int = 1) -> dict:
    timings = []
    for _ in range(repeat):  # the same seed every time: the same volume, only the seconds vary
        started, cpu_started = time.perf_counter(), time.process_time()
        result = reconstruct(inputs, "xdiffusion", pipeline, "t1", **{"views": 4, "steps": 12, **sampling})
        timings.append((time.perf_counter() - started, time.process_time() - cpu_started))
    seconds, cpu_seconds = (float(np.median(values)) for values in zip(*timings))
    metrics = evaluate_volumes(reference, result.image, input_axis=inputs.axis, input_indices=inputs.indices)
    unseen = reference.array > 0
    for index in inputs.indices:
        np.moveaxis(unseen, inputs.axis, 0)[max(0, index - 1):index + 2] = False
    ranking = uncertainty_ranking(reference, result.image, result.uncertainty, unseen)
    return {**{key: metrics.get(key) for key in ("psnr", "ssim", "psnr_mask", "sharpness")},
            "uncertainty_auroc": ranking["uncertainty_auroc"], "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "unet_evaluations": result.unet_evaluations}


def mean_row(name: str, sampling: dict, per_volume: list[dict], repeat: int) -> dict:
    means = {}
    for key in METRICS:
        values = [v[key] for v in per_volume if v[key] is not None]
        means[key] = round(float(np.mean(values)), 4) if values else None
    return {"name": name, "sampling": {"views": 4, "steps": 12, **sampling}, **means, "repeat": repeat,
            "load_average": [round(value, 2) for value in os.getloadavg()], "volumes": per_volume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: benchmarks/common.py model_dir)")
    parser.add_argument("--volumes", type=int, default=3, help="augmented training-subject variants besides the demo sample")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="NAME")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row and volume; the median seconds are kept")
    parser.add_argument("--output", default="coherent_sampling", help="results name under benchmarks/results/")
    args = parser.parse_args()
    folder = model_dir(args.model)
    pipeline = XDiffusionPipeline.from_pretrained(folder)
    sample = read_volume(SAMPLE_IMAGE)
    volumes = [("demo sample (held out)", sample, select_slices(sample, DEMO_PLANE))]
    volumes += [(f"training variant {i}", v, select_slices(v, "axial")) for i, v in enumerate(selection_volumes(args.volumes, seed=7))]
    labels = [label for label, _, _ in volumes]
    earlier = RESULTS / f"{args.output}.json"
    rows = json.loads(earlier.read_text())["rows"] if earlier.is_file() and json.loads(earlier.read_text()).get("volumes") == labels else []
    rows = [row for row in rows if row["name"] not in args.rows]
    for name in args.rows:
        per_volume = []
        for label, reference, inputs in volumes:
            per_volume.append({"volume": label, **scored(pipeline, reference, inputs, ROWS[name], args.repeat)})
            print(name, per_volume[-1], flush=True)
        rows.append(mean_row(name, ROWS[name], per_volume, args.repeat))
        rows.sort(key=lambda row: list(ROWS).index(row["name"]) if row["name"] in ROWS else len(ROWS))
        path = write_results(args.output, {
            "model": str(folder), "volumes": labels,
            "what": "seed 0, DPM-Solver++, one middle axial slice per volume; means over the volumes, each volume under "
                    "'volumes'; seconds: the median of each row's 'repeat' runs, under the load average at the row's end "
                    "('load_average'; null where not recorded)",
            "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
