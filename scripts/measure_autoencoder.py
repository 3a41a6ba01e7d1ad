"""Measure a saved model's autoencoder on held-out data and (with --write) record it in the model card's `autoencoder`.

The held-out data is never trained on: `sample` is the volume shipped with the package (the held-out SRI24 T1 with
its synthetic tumour and labels); `fetched` is the validation source of `xdiffusion fetch-data` (SRI24, as is and with
two synthetic tumours, every modality the model knows). Every 4th slice along each axis of the 64^3 cubes, background
left out, as `xdiffusion.training_run.held_out_targets` cuts them for training runs. Only the card changes: no weight
hash does.

    python scripts/measure_autoencoder.py --source sample --write      # the shipped default model
    python scripts/measure_autoencoder.py --model runs/cpu_default/model --source fetched
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from xdiffusion.data.samples import make_training_cube
from xdiffusion.data.training_set import build_validation_cubes
from xdiffusion.demo import SAMPLE_IMAGE, SAMPLE_SEGMENTATION
from xdiffusion.io import read_volume
from xdiffusion.model import autoencoder_metrics, load_model
from xdiffusion.model.checkpoint import update_model_card
from xdiffusion.model_location import resolve_model_dir
from xdiffusion.training_run import DataConfig, held_out_targets, split_subjects

SOURCES = {
    "sample": "the package's sample volume (held-out SRI24 T1, synthetic tumour seed 7)",
    "fetched": "the fetched validation source (SRI24: each modality as is and with synthetic tumours seeds 0 and 1)",
}


def held_out_cubes(source: str, modalities: list[str], cube_size: int, cache: str):
    if source == "sample":
        return [make_training_cube(read_volume(SAMPLE_IMAGE), "t1", cube_size, read_volume(SAMPLE_SEGMENTATION))]
    _, validation = split_subjects(DataConfig(source="fetched", cache_dir=cache))
    return build_validation_cubes(validation, modalities, cube_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--source", choices=sorted(SOURCES), default="sample")
    parser.add_argument("--cache", default="", help="fetch-data cache for --source fetched (default: ~/.cache/xdiffusion)")
    parser.add_argument("--write", action="store_true", help="record the numbers in the model card's `autoencoder`")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder = resolve_model_dir(args.model)
    model = load_model(folder)
    if model.autoencoder is None:
        raise SystemExit(f"{folder} is a pixel-space model: it has no autoencoder")
    targets = held_out_targets(held_out_cubes(args.source, model.config.modalities, model.config.cube_size, args.cache))
    measured = {
        "held_out": SOURCES[args.source],
        "held_out_slices": len(targets),
        "held_out_tumour_slices": int((targets[:, 1:] > 0).flatten(1).any(1).sum()),
        **autoencoder_metrics(model.autoencoder, targets),
        "measured_with": f"python scripts/measure_autoencoder.py --source {args.source}",
    }
    print(json.dumps(measured, indent=2))
    if args.write:
        update_model_card(folder, {"autoencoder": measured})
        print(f"recorded in {Path(folder) / 'model_card.json'}")


if __name__ == "__main__":
    main()
