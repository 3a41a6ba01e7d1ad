"""Run a training campaign: `xdiffusion train` in a child process, its snapshot committed to git every N minutes.

    python scripts/campaign.py configs/cpu_default.yaml --snapshot-dir campaign/cpu_default/snapshot --max-minutes 165

The child trains with `train.resume=latest` (its local checkpoint, else the snapshot, else from scratch), writes a
snapshot every `--snapshot-minutes` and stops cleanly after `--max-minutes`. Every `--commit-minutes` (default 100,
so a stop loses at most that) and once the child ends, the snapshot folder (float16 weights, config, metrics.csv) is
committed with a pathspec-limited `git commit`, which never takes anything else that is staged or changed.
A SIGTERM to this process stops the child too (it would otherwise train on, orphaned) and commits what it left.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

LOCK_RETRIES = 30  # an index.lock held by another git command (someone else committing) is waited out
POLL_SECONDS = 10.0


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    for _ in range(LOCK_RETRIES):
        if not (repo / ".git" / "index.lock").exists():
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
            if "index.lock" not in done.stderr:
                return done
        time.sleep(2)
    raise RuntimeError(f"git {args[0]}: .git/index.lock stayed in place for {2 * LOCK_RETRIES} s")


def commit_message(snapshot: Path, label: str) -> str:
    """What the snapshot holds, in one line: its step and its last validation numbers, if any."""
    index = json.loads((snapshot / "snapshot.json").read_text(encoding="utf-8"))
    scores = ", ".join(f"{name.removeprefix('val/')} {value:.3g}" for name, value in sorted(index["validation"].items()))
    return f"campaign {label}: EMA weights (float16) and log at step {index['step']}" + \
        (f"; validation {scores}" if scores else "; not validated yet")


def commit_snapshot(repo: Path, snapshot: Path, label: str) -> Optional[str]:
    """Commit the snapshot folder alone; returns the message, or None when there was nothing new to commit."""
    if not (snapshot / "snapshot.json").is_file():
        return None
    path = str(snapshot.resolve().relative_to(repo.resolve()))
    _git(repo, "add", "--all", "--", path)
    if _git(repo, "diff", "--cached", "--quiet", "--", path).returncode == 0:
        return None
    message = commit_message(snapshot, label)
    done = _git(repo, "commit", "--quiet", "-m", message, "--", path)
    if done.returncode:
        raise RuntimeError(f"git commit failed: {done.stderr.strip()[:300]}")
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for `xdiffusion train`")
    parser.add_argument("--snapshot-dir", required=True, help="inside the git repository: what gets committed")
    parser.add_argument("--commit-minutes", type=float, default=100.0)
    parser.add_argument("--snapshot-minutes", type=float, default=30.0)
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop training cleanly after this (0: never)")
    parser.add_argument("--label", default="", help="names the campaign in commit messages (default: the config's)")
    args = parser.parse_args(argv)
    snapshot = Path(args.snapshot_dir).absolute()
    repo = Path(subprocess.run(["git", "-C", str(snapshot.parent if snapshot.parent.exists() else Path.cwd()),
                                "rev-parse", "--show-toplevel"], check=True, capture_output=True, text=True).stdout.strip())
    label = args.label or Path(args.config).stem
    command = [sys.executable, "-m", "xdiffusion.cli", "train", args.config, *args.overrides, "train.resume=latest",
               f"train.snapshot_dir={snapshot}", f"train.snapshot_every_minutes={args.snapshot_minutes}",
               f"train.max_minutes={args.max_minutes}"]
    child = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        last_commit = time.monotonic()
        while child.poll() is None:
            time.sleep(POLL_SECONDS)
            if time.monotonic() - last_commit >= 60 * args.commit_minutes:
                print(commit_snapshot(repo, snapshot, label) or "campaign: no new snapshot to commit", flush=True)
                last_commit = time.monotonic()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(commit_snapshot(repo, snapshot, label) or "campaign: no new snapshot to commit", flush=True)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
