"""Continue a training campaign on a GPU machine from a pack (scripts/gpu_campaign/pack.py), in a time budget.

Run through the pack's run.sh, which installs its wheels offline first. Needs torch, numpy and the pack: no network,
no SimpleITK, no fetched data (the training cubes come quantised in the pack). The run resumes from the pack's
snapshot (weights into model and EMA, a fresh optimiser warming up again), trains until `--minutes` have passed since
the trainer was built, and writes the new snapshot into OUT/snapshot, every file at most 16 MiB, for
scripts/gpu_campaign/unpack.py to verify and install. Works on CPU too (the tests run it there on a tiny config).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from xdiffusion.data.samples import SampleGenerator, SampleOptions, TrainingCube
from xdiffusion.errors import InputError
from xdiffusion.model import XDiffusionConfig
from xdiffusion.model.campaign import snapshot_step
from xdiffusion.model.training import Trainer, resolve_config

PACK_INDEX = "pack.json"
CUBES = "cubes.npz"


def load_cubes(path: Path) -> list[TrainingCube]:
    """The packed cubes back as float32 images (uint8 codes times each cube's scale) with their labels."""
    with np.load(path, allow_pickle=False) as data:
        codes, scales, tumours, modalities = data["image"], data["scale"], data["tumour"], data["modality"]
        return [TrainingCube(code.astype(np.float32) * np.float32(scale), tumour, str(modality))
                for code, scale, tumour, modality in zip(codes, scales, tumours, modalities)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="the pack folder")
    parser.add_argument("--out", required=True, help="where the new snapshot goes (OUT/snapshot)")
    parser.add_argument("--snapshot", default="", help="the snapshot to start from (default: the pack's own); a "
                        "committed campaign snapshot travels with the repository, so a pack need not carry a copy")
    parser.add_argument("--minutes", type=float, default=7.0,
                        help="wall-clock training budget; 7 leaves setup and the write within 9 minutes")
    parser.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)),
                        help="sample-making processes (samples are made on the CPU)")
    parser.add_argument("overrides", nargs="*", help="train.key=value overrides, e.g. train.batch_size=96")
    args = parser.parse_args(argv)
    pack, out = Path(args.pack), Path(args.out)
    index = json.loads((pack / PACK_INDEX).read_text(encoding="utf-8"))
    snapshot = out / "snapshot"
    if not snapshot.exists():
        shutil.copytree(Path(args.snapshot) if args.snapshot else pack / "snapshot", snapshot,
                        ignore=shutil.ignore_patterns(".*"))
    start_step = snapshot_step(snapshot)
    if start_step is None:
        raise InputError("no campaign snapshot to start from: build the pack from a campaign that has one")
    work = Path(tempfile.mkdtemp(prefix="xdiffusion-gpu-run-"))
    resolved = resolve_config(index["config"], [
        f"train.output_dir={work}", f"train.snapshot_dir={snapshot}", "train.resume=latest",
        f"train.max_minutes={args.minutes}", f"train.steps={start_step + 10**7}",  # the budget ends the run
        f"train.num_workers={args.workers}", f"train.checkpoint_every={10**7}", f"train.validate_every={10**7}",
        f"train.snapshot_every_minutes={max(args.minutes, 1.0)}", *args.overrides])
    model = XDiffusionConfig.from_dict(resolved["model"])
    train = resolved["train"]
    samples = SampleGenerator(load_cubes(pack / CUBES), model.modalities, seed=index["sample_seed"],
                              length=max(1000, 1000 * train["batch_size"] * train["grad_accum"]),
                              options=SampleOptions.from_config(model))
    began = time.monotonic()
    trainer = Trainer(resolved, samples)
    trainer.run()
    files = sorted(p for p in snapshot.iterdir() if p.is_file())
    largest = max(p.stat().st_size for p in files) / 2**20
    print(f"trained steps {start_step} -> {trainer.step} on {trainer.accelerator.device} in "
          f"{(time.monotonic() - began) / 60:.1f} min; snapshot {snapshot}: {len(files)} files, largest {largest:.1f} MiB")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
