"""Install a snapshot returned by a GPU run as the campaign's latest, after verifying it.

    python scripts/gpu_campaign/unpack.py /work/.device/<files_at>/snapshot campaign/cpu_default/snapshot

Checks every shard's SHA-256 and size (at most 16 MiB), that the weights load strictly into the networks its
xdiffusion_config.json describes and match the current snapshot's model config, and that its step is beyond the
current one (`--force` to go back); then swaps it in atomically. Commit it like any campaign snapshot; the next
`resume: latest` run continues from it because it is newer than that run's local checkpoints.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "XDiffusionLib"))

from xdiffusion.errors import InputError  # noqa: E402
from xdiffusion.model import ConditionEncoder, XDiffusionConfig, build_autoencoder, build_unet  # noqa: E402
from xdiffusion.model.campaign import MODEL_CONFIG, Snapshot, read_snapshot  # noqa: E402
from xdiffusion.model.training import _replace_dir  # noqa: E402

SHARD_LIMIT = 16 * 2**20


def verify(folder: Path) -> Snapshot:
    """The returned snapshot, refused with one line unless complete, within the shard limit and loadable."""
    snapshot = read_snapshot(folder)
    oversized = [name for name, entry in snapshot.index["files"].items() if entry["bytes"] > SHARD_LIMIT]
    if oversized:
        raise InputError(f"{folder}: shards over 16 MiB: {', '.join(oversized)}")
    config = XDiffusionConfig.from_json(folder / MODEL_CONFIG)
    parts = {"unet": build_unet(config), "condition_encoder": ConditionEncoder.for_model(config)}
    if config.latent:
        parts["autoencoder"] = build_autoencoder(config)
    for name, module in parts.items():
        try:
            module.load_state_dict(snapshot.component(name), strict=True)
        except RuntimeError as error:
            raise InputError(f"{folder}: the {name} weights do not fit its {MODEL_CONFIG}: {str(error)[:200]}") from None
    return snapshot


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("returned", help="the snapshot folder the GPU run wrote (under its $OUT)")
    parser.add_argument("into", help="the campaign's snapshot folder (train.snapshot_dir)")
    parser.add_argument("--force", action="store_true", help="install even if it is not newer than the current one")
    args = parser.parse_args(argv)
    returned, into = Path(args.returned), Path(args.into).absolute()
    try:
        snapshot = verify(returned)
        if (into / MODEL_CONFIG).is_file():
            current = read_snapshot(into)
            if XDiffusionConfig.from_json(into / MODEL_CONFIG) != XDiffusionConfig.from_json(returned / MODEL_CONFIG):
                raise InputError(f"{returned} holds another model config than {into}")
            if snapshot.step <= current.step and not args.force:
                raise InputError(f"{returned} is at step {snapshot.step}, not beyond {into}'s {current.step} (--force)")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{into.name}.", dir=into.parent))
    shutil.copytree(returned, staging / "snapshot", ignore=shutil.ignore_patterns(".*"))
    _replace_dir(staging / "snapshot", into)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"installed the snapshot at step {snapshot.step} in {into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
