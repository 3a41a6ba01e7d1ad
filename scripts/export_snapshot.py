"""Turn a campaign snapshot into a model folder that `xdiffusion reconstruct --model` and the benchmarks load.

    python scripts/export_snapshot.py campaign/detail/snapshot -o runs/detail/snapshot_model \
        [--label-net campaign/detail/label_net]

The snapshot is verified (every shard's SHA-256) before anything is written; the folder appears whole or not at all.
Its card names the snapshot (step, SHA-256 of its index) and offers no tumour labels: a snapshot is measured by its
validation log, not on held-out data. Shipping one is `scripts/package_default_model.py`'s job, after the gates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XDiffusionLib"))

from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.model.campaign import export_model, read_snapshot  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", help="a campaign snapshot folder (train.snapshot_dir)")
    parser.add_argument("-o", "--output", required=True, help="the model folder to write (replaced if it exists)")
    parser.add_argument("--label-net", default=None, help="a tumour label net folder to ship inside the model")
    args = parser.parse_args(argv)
    try:
        folder = export_model(read_snapshot(args.snapshot), args.output, args.label_net)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"model folder written: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
