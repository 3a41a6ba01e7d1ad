"""Build the GPU pack: everything besides torch and numpy that a GPU machine needs to continue the campaign offline.

    python scripts/gpu_campaign/pack.py configs/cpu_default.yaml train.snapshot_dir=campaign/cpu_default/snapshot

writes `gpu_pack/` (git-ignored): the wheels the training path imports that torch does not bring (pinned to this
environment's versions, for the GPU machine's Python), the xdiffusion sources, the campaign config's training cubes
quantised to uint8 (`cubes.npz`), the latest snapshot, and run.sh + train_gpu.py. It prints what each part weighs and
refuses (exit 2) a pack over 64 MiB, what a GPU call may carry. Distributions named by `--assume-present` are
left out and must be on the GPU machine (run.sh's import fails in one line otherwise).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCE = REPO / "XDiffusionLib" / "xdiffusion"
MIB = 2**20
PACK_LIMIT = 64 * MIB
# scipy's wheel alone is 35 MB, over half the limit; every GPU image with torch for science carries it (the H200 image
# does, .library/device/KINDS.md), so by default it is expected there rather than packed
DEFAULT_ASSUMED_PRESENT = ("scipy",)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
BLOCK_SIMPLEITK = """
import importlib.abc, sys
class _NoSimpleITK(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "SimpleITK":
            raise ImportError("SimpleITK is blocked: the GPU training path must not need it")
sys.meta_path.insert(0, _NoSimpleITK())
"""
TRACE = BLOCK_SIMPLEITK + """
import importlib.metadata, json, runpy
runpy.run_path(sys.argv[1], run_name="trace")  # the entry point's imports, without running it
owners = importlib.metadata.packages_distributions()
names = {d for m in list(sys.modules) for d in owners.get(m.split(".")[0], ())}
print(json.dumps({n: importlib.metadata.version(n) for n in sorted(names)}))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(root: str) -> set[str]:
    """``root`` and everything it requires (extras left out), as canonical distribution names."""
    seen, todo = set(), [root]
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in requirements if "extra ==" not in r]
    return seen


def needed_distributions(entry: Path, assumed_present: Sequence[str]) -> dict[str, str]:
    """Distributions (name: version here) the entry point imports with SimpleITK blocked, less torch and what torch
    brings, numpy, xdiffusion itself and ``assumed_present``. Fails if the entry point needs SimpleITK."""
    found = json.loads(subprocess.run([sys.executable, "-c", TRACE, str(entry)], check=True, capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": str(SOURCE.parent)}).stdout)
    provided = _requirement_closure("torch") | {"numpy", "xdiffusion"} | {_canonical(n) for n in assumed_present}
    return {name: version for name, version in found.items() if _canonical(name) not in provided}


def download_wheels(distributions: dict[str, str], folder: Path, python_version: str) -> None:
    """One wheel per distribution at the version used here, for CPython ``python_version`` on x86-64 Linux."""
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(folder),
                    *(f"{name}=={version}" for name, version in sorted(distributions.items()))], check=True)


def write_cubes(cubes: Sequence, path: Path) -> dict[str, float]:
    """The cubes as uint8 codes of image / (its max / 255), their scales, labels and modalities, compressed. Returns
    the worst quantisation error relative to each cube's 99.5th percentile (the model's intensity unit)."""
    scales = np.array([max(float(cube.image.max()), 1e-6) / 255.0 for cube in cubes], dtype=np.float32)
    codes = np.stack([np.clip(np.rint(cube.image / scale), 0, 255).astype(np.uint8) for cube, scale in zip(cubes, scales)])
    error = max(float(np.abs(code * scale - cube.image).max() / max(np.percentile(cube.image, 99.5), 1e-6))
                for code, scale, cube in zip(codes, scales, cubes))
    np.savez_compressed(path, image=codes, scale=scales, tumour=np.stack([cube.tumour for cube in cubes]),
                        modality=np.array([cube.modality for cube in cubes]))
    return {"count": len(cubes), "side": int(codes.shape[1]), "max_error_of_p99_5": round(error, 5)}


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_pack(resolved: dict, cubes: Sequence, snapshot: Path, folder: Path, sample_seed: int,
               wheels: Optional[dict[str, str]] = None, python_version: str = "3.12", copy_snapshot: bool = True) -> dict:
    """Write the pack into ``folder`` (replacing it) and return its index; ``wheels`` None packs none (tests, or a
    machine known to hold everything); without ``copy_snapshot`` the GPU run is given the committed snapshot, which
    travels with the repository, by `--snapshot`. Raises SystemExit(2) with one line when the pack exceeds PACK_LIMIT."""
    from xdiffusion.model.campaign import read_snapshot

    step = read_snapshot(snapshot).step  # verified before it travels
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        shutil.copytree(SOURCE, staging / "src" / "xdiffusion",
                        ignore=shutil.ignore_patterns("__pycache__", "default_model", "sample_data", "atlas_data"))
        for name in ("run.sh", "train_gpu.py"):
            shutil.copy2(HERE / name, staging / name)
        (staging / "snapshot").mkdir()
        if copy_snapshot:
            shutil.copytree(snapshot, staging / "snapshot", ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
        (staging / "wheels").mkdir()
        if wheels:
            download_wheels(wheels, staging / "wheels", python_version)
        quantisation = write_cubes(cubes, staging / "cubes.npz")
        parts = {name: _size(staging / name) for name in ("src", "wheels", "cubes.npz", "snapshot")}
        index = {"config": resolved, "sample_seed": sample_seed, "snapshot_step": step, "cubes": quantisation,
                 "python_version": python_version, "wheels": wheels or {}, "bytes": parts}
        (staging / "pack.json").write_text(json.dumps(index, indent=1, default=str) + "\n")
        total = _size(staging)
        for name, size in parts.items():
            print(f"  {name:10s} {size / MIB:6.1f} MiB")
        print(f"pack {folder}: {total / MIB:.1f} MiB (limit {PACK_LIMIT / MIB:.0f} MiB), snapshot at step {step}, "
              f"{quantisation['count']} cubes of {quantisation['side']}^3")
        if total > PACK_LIMIT:
            print(f"error: the pack is {total / MIB:.1f} MiB, over the {PACK_LIMIT / MIB:.0f} MiB a GPU call carries; "
                  f"pack fewer cubes or assume more distributions present", file=sys.stderr)
            raise SystemExit(2)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index


def campaign_cubes(resolved: dict, max_cubes: int = 0) -> tuple[list, int]:
    """The training cubes the config trains on (as `xdiffusion train` builds them) and the samples' seed; with
    ``max_cubes`` an even selection across the list (every subject keeps its share), for cubes too large to all fit."""
    from xdiffusion.training_run import training_cubes

    cubes, _ = training_cubes(resolved)
    if max_cubes and len(cubes) > max_cubes:
        cubes = [cubes[i] for i in np.linspace(0, len(cubes) - 1, max_cubes).round().astype(int)]
    return cubes, int(resolved["data"]["seed"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for `xdiffusion train`")
    parser.add_argument("--out", default=str(REPO / "gpu_pack"))
    parser.add_argument("--snapshot", default="", help="snapshot folder (default: the config's train.snapshot_dir)")
    parser.add_argument("--assume-present", nargs="*", default=list(DEFAULT_ASSUMED_PRESENT), metavar="DIST")
    parser.add_argument("--leave-snapshot", action="store_true",
                        help="do not copy the snapshot: it is committed and travels with the repository")
    parser.add_argument("--max-cubes", type=int, default=0, help="pack at most this many cubes (0: all)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's python3 (its wheels' tag)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SOURCE.parent))
    from xdiffusion.model.training import resolve_config

    from xdiffusion.errors import InputError

    try:
        resolved = resolve_config(args.config, args.overrides)
        if resolved["model"].get("atlas_conditioning"):  # its draws weigh ~4 MB a cube: far past the pack's 64 MiB
            raise InputError("an atlas-conditioned config trains on atlas draws, which the GPU pack does not carry: "
                             "train it with xdiffusion train / scripts/campaign.py")
        snapshot = Path(args.snapshot or resolved["train"]["snapshot_dir"] or "no-snapshot-dir-given")
        cubes, seed = campaign_cubes(resolved, args.max_cubes)
        wheels = needed_distributions(HERE / "train_gpu.py", args.assume_present)
        print("wheels: " + ", ".join(f"{name}=={version}" for name, version in sorted(wheels.items())))
        build_pack(resolved, cubes, snapshot, Path(args.out).absolute(), seed, wheels, args.python_version,
                   copy_snapshot=not args.leave_snapshot)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
