"""Ship a trained run as the package's default model: U-Net weights stored as float16 (half the size, loaded back
as float32 on the CPU), the card completed with the sampling defaults measured on CPU, every hash recomputed.

    python scripts/package_default_model.py runs/cpu_default/model --views 4 --steps 12 --guidance 1.0 --strength 0.5 --prior atlas
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from xdiffusion.model import load_model, save_model
from xdiffusion.model_location import PACKAGED_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_model", type=Path)
    parser.add_argument("--views", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--guidance", type=float, required=True)
    parser.add_argument("--strength", type=float, default=1.0, help="below 1: sampling starts from the noised --prior (SDEdit)")
    parser.add_argument("--prior", choices=("extrude", "atlas"), default="extrude")
    parser.add_argument("--extra-card", type=Path, default=None, help="JSON merged into the model card (e.g. measured metrics)")
    parser.add_argument("--autoencoder", type=Path, default=None, help="a fine-tuned autoencoder folder (same encoder) to ship instead")
    args = parser.parse_args()
    model = load_model(args.run_model)
    card = dict(model.model_card)
    if args.autoencoder is not None:
        tuned = AutoencoderKL.from_pretrained(args.autoencoder, use_safetensors=True, local_files_only=True).eval()
        if any(not torch.equal(a, b) for a, b in zip(model.autoencoder.encoder.state_dict().values(), tuned.encoder.state_dict().values())):
            raise SystemExit(f"{args.autoencoder}: its encoder differs from the run's, so the U-Net's latents would not match")
        model.autoencoder = tuned
        finetune = args.autoencoder / "finetune.json"
        card["autoencoder_decoder_finetune"] = json.loads(finetune.read_text()) if finetune.is_file() else str(args.autoencoder)
    card.pop("sha256", None)
    card["default_sampling"] = {"views": args.views, "steps": args.steps, "guidance": args.guidance, "strength": args.strength, "prior": args.prior}
    card["default_modality"] = "t1"
    card["weights_storage"] = "U-Net in float16 (loaded as float32 on CPU); condition encoder and autoencoder in float32"
    if args.extra_card:
        card.update(json.loads(args.extra_card.read_text()))
    save_model(PACKAGED_MODEL, model.unet.to(torch.float16), model.condition_encoder, model.autoencoder,
               model.scheduler_config, model.config, card)
    reloaded = load_model(PACKAGED_MODEL)  # proves the hashes and configs of what we ship
    size = sum(p.stat().st_size for p in PACKAGED_MODEL.rglob("*") if p.is_file()) / 2**20
    print(f"packaged {args.run_model} -> {PACKAGED_MODEL} ({size:.1f} MiB, modalities {reloaded.config.modalities})")


if __name__ == "__main__":
    main()
