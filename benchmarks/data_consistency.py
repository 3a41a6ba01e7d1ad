"""What data consistency buys: per-slice PSNR against distance from the input slice, with it on and off.

    python benchmarks/data_consistency.py [--model DIR]

The shipped sample (held-out SRI24, 2 mm) from its middle axial slice, the model's default sampling and the same
from pure noise (strength 1), each with ``data_consistency`` on (the known slice held at every step in the views
parallel to it) and off (the input slice only pasted into the result). Writes results/data_consistency.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from common import model_dir, write_results
from xdiffusion.cli import DEFAULT_SAMPLING
from xdiffusion.demo import SAMPLE_IMAGE
from xdiffusion.evaluate import evaluate_volumes, per_slice_psnr
from xdiffusion.io import read_volume
from xdiffusion.pipeline import XDiffusionPipeline
from xdiffusion.reconstruct import reconstruct, select_slices

DISTANCES = (1, 2, 3, 4, 6, 8, 12)  # slices from the input (2 mm each)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    pipeline = XDiffusionPipeline.from_pretrained(model_dir(args.model))
    defaults = {**DEFAULT_SAMPLING, **pipeline.model_card.get("default_sampling", {})}
    reference = read_volume(SAMPLE_IMAGE)
    inputs = select_slices(reference, "axial")
    index, axis = inputs.indices[0], inputs.axis
    rows = []
    for name, sampling in (("default", defaults), ("pure noise", {**defaults, "strength": 1.0})):
        for consistency in (True, False):
            image = reconstruct(inputs, "xdiffusion", pipeline, "t1", data_consistency=consistency, **sampling).image
            profile = per_slice_psnr(reference, image, axis)
            near = {str(d): float(np.nanmean([profile[i] for i in (index - d, index + d) if 0 <= i < len(profile)])) for d in DISTANCES}
            rows.append({"sampling": name, "settings": sampling, "data_consistency": consistency,
                         "psnr": evaluate_volumes(reference, image)["psnr"], "slice_psnr_at_distance": near})
            print(json.dumps(rows[-1]), flush=True)
    path = write_results("data_consistency", {"volume": f"{SAMPLE_IMAGE.name}, axial slice {index}", "distances_slices": DISTANCES, "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
