"""What the input slices' own tumour labels say in 3D, with no model: the floor a tumour-segmenting model must beat.

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/tumour_label_baselines.py [--grid standard]

On the evaluation suite's tumour cases (held-out SRI24 at 2 mm with synthetic tumours crossing every middle slice),
the same planes and input slices as the suite, each label baseline of `xdiffusion.label_baselines` (the input
slices' labels copied to their neighbours; an ellipsoid per region fitted to them) is scored with the suite's
tumour metrics (`xdiffusion.evaluate.tumour_metrics`: Dice WT/TC/ET, MONAI's 95 % Hausdorff distance, volume error,
centroid distance). No reconstruction is made, so it takes seconds. Writes benchmarks/results/tumour_label_baselines.json,
which `make_report.py` shows beside the model's tumour agreement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xdiffusion.evaluate import tumour_metrics  # noqa: E402
from xdiffusion.geometry import plane_axis  # noqa: E402
from xdiffusion.label_baselines import copy_to_neighbours, ellipsoid_from_slices, input_labels  # noqa: E402

BASELINES = {"copy": copy_to_neighbours, "ellipsoid": ellipsoid_from_slices}


def score_cases(cases: dict, planes: Iterable[str], ks: Iterable[int]) -> list[dict]:
    """One row per tumour case, plane, K and label baseline."""
    from evaluation_suite import input_indices

    rows = []
    for name, case in cases.items():
        if case.tumour_seed is None or case.domain != "in-domain":
            continue
        truth = np.asarray(case.labels.array)
        for plane in planes:
            axis = plane_axis(case.image.geometry, plane)
            for k in ks:
                indices = input_indices(case.image.geometry.shape[axis], k)
                given = input_labels(case.labels, axis, indices)
                for method, baseline in BASELINES.items():
                    guess = baseline(case.image.geometry, axis, indices, given)
                    metrics = tumour_metrics(np.where(truth == 4, 3, truth), guess, case.image.geometry)
                    rows.append({"case": name, "tumour_seed": case.tumour_seed, "plane": plane, "k": k, "method": method,
                                 "input_indices": indices, "metrics": metrics,
                                 "tumour_volume_ml": float((truth > 0).sum() * np.prod(case.image.geometry.spacing) / 1000.0)})
    return rows


def main(argv: Optional[Iterable[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="standard", help="the evaluation suite's grid whose tumour cases to use")
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR")
    args = parser.parse_args(argv)
    import evaluation_suite as suite
    from common import write_results
    from xdiffusion.data.fetch import default_cache_dir

    started = time.perf_counter()
    grid = suite.GRIDS[args.grid]
    cases = suite.sri24_cases(Path(args.cache) if args.cache else default_cache_dir(), grid)
    rows = score_cases(cases, grid.planes, grid.ks)
    path = write_results("tumour_label_baselines", {
        "grid": grid.name, "cases": sorted({r["case"] for r in rows}), "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "what": "label baselines from the input slices' tumour labels (xdiffusion.label_baselines) on the evaluation "
                "suite's tumour cases, same planes and input slices"})
    print(f"{len(rows)} rows written to {path}")


if __name__ == "__main__":
    main()
