"""Train (or resume) the thick-slice network of `upsample --method learned`: `python scripts/train_through_plane.py
configs/detail.yaml --minutes 60 --output campaign/detail`.

Planes come from the config's training subjects only (`data.source`; the held-out brains are never seen), validation
planes from the same scans with another seed (a monitor of the fit, not of generalisation: that is the held-out
benchmark's, `benchmarks/upsample_benchmark.py`). Weights go to `OUTPUT/through_plane` (best validation gain over
the B-spline) and `through_plane_last` (the resume point), the log to `through_plane_metrics.csv`; rerunning the same
command continues from the last weights. `scripts/package_through_plane.py` copies the chosen weights into the
package (float16). `--init DIR --context-planes K` starts a fresh run from trained weights widened to read K
neighbouring planes on each side (they start at zero weight: the run begins at DIR's own gain).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from xdiffusion.errors import InputError, ModelError
from xdiffusion.side_training import campaign_setup
from xdiffusion.upsample.through_plane import ThroughPlaneNet, load_through_plane_net
from xdiffusion.upsample.through_plane_training import fine_volumes, resume_point, train_through_plane, widened


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="where the weights and log go (default: train.output_dir)")
    parser.add_argument("--init", type=Path, default=None,
                        help="a ThroughPlaneNet folder to start a fresh run from (a run with a resume point ignores it)")
    parser.add_argument("--context-planes", type=int, default=0,
                        help="neighbouring planes read on each side (with --init: the weights are widened to it)")
    args = parser.parse_args()
    if args.context_planes < 0:
        parser.error("--context-planes must be 0 or more")
    torch.set_num_threads(args.threads)
    try:
        seed, subjects, output = campaign_setup(args.config, args.output)
        net, start = resume_point(output)
        if net is None and args.init is not None:
            net = widened(load_through_plane_net(args.init), args.context_planes)
        elif net is None:
            net = ThroughPlaneNet(context_planes=args.context_planes)
        volumes = fine_volumes(subjects)
        print(f"training scans: {', '.join(v.name for v in volumes)}")
        step = train_through_plane(net, volumes, output, args.steps, batch_size=args.batch_size,
                                   lr=args.lr, max_minutes=args.minutes, start_step=start, seed=seed, progress=print)
    except (InputError, ModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"through-plane net at step {step}: {output / 'through_plane'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
