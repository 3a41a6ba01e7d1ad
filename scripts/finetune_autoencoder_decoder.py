"""Fine-tune a trained run's autoencoder decoder on tumour-weighted reconstruction, keeping its encoder (and so
every latent the run's U-Net learned) unchanged.

The default model's autoencoder was first trained with plain L1, which never draws the rare tumour pixels (Dice 0
on held-out tumour slices); training now weights tumour pixels from the start (`train.autoencoder_tumour_weight`),
and this script repairs a run trained before that, without retraining its U-Net:

    python scripts/finetune_autoencoder_decoder.py runs/cpu_default --steps 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL

from xdiffusion.data.samples import SampleGenerator
from xdiffusion.data.training_set import TrainingSetConfig, build_training_cubes, build_validation_cubes
from xdiffusion.model import XDiffusionConfig, autoencoder_metrics, train_autoencoder
from xdiffusion.training_run import DataConfig, split_subjects


def tumour_batch(generator: SampleGenerator, count: int) -> torch.Tensor:
    """Targets that hold some tumour: the metric this script exists to improve."""
    chosen, index = [], 0
    while len(chosen) < count:
        target = generator[index]["target"]
        index += 1
        if (target[1:] > 0).sum() > 20:
            chosen.append(target)
    return torch.stack(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tumour-weight", type=float, default=20.0)
    args = parser.parse_args()
    resolved = yaml.safe_load((args.run / "config.yaml").read_text())
    model = XDiffusionConfig.from_dict(resolved["model"])
    data = DataConfig(**resolved.get("data", {}))
    training, validation = split_subjects(data)
    cubes = build_training_cubes(training, model.modalities, TrainingSetConfig(model.cube_size, data.variants_per_subject, data.synthetic_share, data.tumour_share, data.skull_strip_share, seed=data.seed), args.run / "cube_cache")
    samples = torch.utils.data.DataLoader(SampleGenerator(cubes, model.modalities, model.max_inputs, seed=data.seed + 1, length=args.steps * args.batch_size), batch_size=args.batch_size)
    held_out = tumour_batch(SampleGenerator(build_validation_cubes(validation, model.modalities, model.cube_size), model.modalities, model.max_inputs, seed=5), 48)
    autoencoder = AutoencoderKL.from_pretrained(args.run / "autoencoder", use_safetensors=True, local_files_only=True)
    before = autoencoder_metrics(autoencoder.eval(), held_out)
    train_autoencoder(autoencoder, (batch["target"] for batch in samples), args.steps, lr=5e-4, tumour_weight=args.tumour_weight, decoder_only=True)
    after = autoencoder_metrics(autoencoder, held_out)
    folder = args.run / "autoencoder_tumour"
    autoencoder.save_pretrained(folder, safe_serialization=True)
    report = {"steps": args.steps, "tumour_weight": args.tumour_weight, "held_out_before": before, "held_out_after": after}
    (folder / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
