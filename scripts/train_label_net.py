"""Train (or resume) the tumour label net of a campaign config: `python scripts/train_label_net.py configs/detail.yaml`.

The weights are float32 (2 MB): small enough to commit as they are. Lesion volumes come from the config's training subjects only (`data.source`); validation pairs from variants of the
same subjects drawn with another seed (the held-out brains are never seen). Weights go to
`<train.output_dir>/label_net` (best validation Dice WT) and `label_net_last` (resume point), the log to
`label_metrics.csv`. `--minutes` stops it at a wall-clock budget; rerunning continues from the last weights.
`--init DIR` starts a fresh run from other weights (a `TumourLabelNet` folder) instead of random ones; a run with a
resume point continues from that and ignores it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from xdiffusion.errors import InputError
from xdiffusion.model.label_net import TumourLabelNet
from xdiffusion.model.label_training import build_lesion_volumes, resume_point, train_label_net
from xdiffusion.side_training import campaign_setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--variants", type=int, default=6, help="lesion volumes per training subject")
    parser.add_argument("--validation-variants", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None,
                        help="where the weights and log go (default: train.output_dir; the campaign commits campaign/NAME)")
    parser.add_argument("--init", type=Path, default=None,
                        help="a TumourLabelNet folder to start a fresh run from (e.g. campaign/detail/label_net)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        seed, subjects, output = campaign_setup(args.config, args.output)
        net, start = resume_point(output)
        if net is None and args.init is not None:
            if not (args.init / "config.json").is_file():
                raise InputError(f"--init {args.init}: no TumourLabelNet there (config.json missing)")
            net = TumourLabelNet.from_pretrained(args.init, use_safetensors=True)
        train_volumes = build_lesion_volumes(subjects, args.variants, seed=seed, progress=print)
        validation_volumes = build_lesion_volumes(subjects, args.validation_variants, seed=seed + 1000)
        step = train_label_net(net or TumourLabelNet(), train_volumes, validation_volumes, output, args.steps,
                               batch_size=args.batch_size, max_minutes=args.minutes, start_step=start, seed=seed, progress=print)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"label net at step {step}: {output / 'label_net'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
