"""The campaign's learning curve from its committed log: a figure and a table in docs/model.md.

    python scripts/learning_curve.py campaign/detail/snapshot/metrics.csv [--label-log campaign/detail/label_metrics.csv]

Reads the training log (`step,name,value` rows, as `Trainer._log` writes them) and plots validation PSNR, SSIM and
sharpness against the optimiser step (with the extrude prior's PSNR and SSIM on the same samples for reference), and
the label net's validation Dice when its log is given. Writes images/<name>_learning_curve.png beside the page and replaces the
table between that campaign's `learning-curve:<name>` markers in docs/model.md (appended where they are missing), so
each campaign keeps its own curve. Every number comes from the log; nothing is typed in.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xdiffusion.atomic_files import atomic_output  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CURVES = (("val/psnr", "val/psnr_extrude", "PSNR (dB)"), ("val/ssim", "val/ssim_extrude", "SSIM"),
          ("val/sharpness", None, "sharpness (1 = as detailed as the truth)"))
# an atlas-conditioned run also logs the registered atlas's own scores and the model's with the atlas withheld
ATLAS_CURVES = {"val/psnr": (("val/psnr_atlas", "registered atlas", ":"), ("val/psnr_atlas_withheld", "model, atlas withheld", "o-")),
                "val/ssim": (("val/ssim_atlas", "registered atlas", ":"), ("val/ssim_atlas_withheld", "model, atlas withheld", "o-"))}
ATLAS_COLUMNS = (("val/psnr_atlas", "atlas PSNR"), ("val/psnr_atlas_withheld", "PSNR, atlas withheld"),
                 ("val/ssim_atlas", "atlas SSIM"), ("val/ssim_atlas_withheld", "SSIM, atlas withheld"))


def read_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value)], the last value logged at a step winning (a resumed run may log a step twice)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            series[row["name"]][int(row["step"])] = float(row["value"])
    return {name: sorted(points.items()) for name, points in series.items()}


def read_label_log(path: Path) -> list[tuple[int, float]]:
    with path.open(newline="") as handle:
        return [(int(row["step"]), float(row["dice_wt"])) for row in csv.DictReader(handle)
                if row.get("dice_wt") not in (None, "", "None")]


def plot(series: dict, labels: list[tuple[int, float]], output: Path, title: str) -> None:
    panels = len(CURVES) + (1 if labels else 0)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    for axis, (name, reference, ylabel) in zip(axes, CURVES):
        if series.get(name):
            steps, values = zip(*series[name])
            axis.plot(steps, values, "o-", label="model (EMA)")
        if reference and series.get(reference):
            steps, values = zip(*series[reference])
            axis.plot(steps, values, "--", color="grey", label="extrude prior")
        for extra, label, style in ATLAS_CURVES.get(name, ()):
            if series.get(extra):
                steps, values = zip(*series[extra])
                axis.plot(steps, values, style, label=label)
        axis.set_xlabel("optimiser step")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8)
    if labels:
        steps, values = zip(*labels)
        axes[-1].plot(steps, values, "o-", color="tab:red")
        axes[-1].set_xlabel("label net step")
        axes[-1].set_ylabel("label net validation Dice WT")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as temporary:  # a stopped run leaves the old picture, never half of one
        figure.savefig(temporary, dpi=110)


def table(series: dict, labels: list[tuple[int, float]]) -> str:
    names = ["val/psnr", "val/psnr_extrude", "val/ssim", "val/ssim_extrude", "val/sharpness"]
    headers = ["PSNR (dB)", "extrude PSNR", "SSIM", "extrude SSIM", "sharpness"]
    for name, header in ATLAS_COLUMNS:  # only for a run that logs them
        if series.get(name):
            names.append(name)
            headers.append(header)
    steps = sorted({step for name in names for step, _ in series.get(name, [])})
    lookup = {name: dict(series.get(name, [])) for name in names}
    loss = series.get("train/loss", [])
    lines = ["| step | " + " | ".join(headers) + " | training loss (last logged) |", "|---:|" + "---:|" * (len(headers) + 1)]
    for step in steps:
        last_loss = [value for at, value in loss if at <= step]
        cells = [f"{lookup[n][step]:.3f}" if step in lookup[n] else "" for n in names]
        cells.append(f"{last_loss[-1]:.4f}" if last_loss else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if not steps:
        lines.append("| (no validation logged yet) |" + " |" * (len(headers) + 1))
    if labels:
        lines += ["", "| label net step | validation Dice WT |", "|---:|---:|"]
        lines += [f"| {step} | {value:.3f} |" for step, value in labels]
    return "\n".join(lines)


def shown(path: Path) -> str:
    """``path`` as a reader of the docs would type it: relative to the repository where it lies inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- learning-curve:{name}:start -->", f"<!-- learning-curve:{name}:end -->"


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with campaign ``name``'s block between its markers replaced, or appended where it has none."""
    start, end = markers(name)
    if start in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--label-log", type=Path)
    parser.add_argument("--name", default="detail")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "model.md")
    args = parser.parse_args()
    if not args.log.is_file():
        print(f"error: no training log at {args.log}", file=sys.stderr)
        return 2
    series = read_log(args.log)
    labels = read_label_log(args.label_log) if args.label_log and args.label_log.is_file() else []
    image = args.doc.parent / "images" / f"{args.name}_learning_curve.png"  # beside the page that shows it
    plot(series, labels, image, f"{args.name} model: validation against step (from {shown(args.log)})")
    text = args.doc.read_text(encoding="utf-8")
    start, end = markers(args.name)
    command = " ".join(["python scripts/learning_curve.py", shown(args.log)]
                       + (["--label-log", shown(args.label_log)] if labels else [])
                       + (["--name", args.name] if args.name != "detail" else []))
    block = (f"{start}\n![learning curve](images/{image.name})\n\nGenerated by `{command}` from the committed log.\n\n"
             f"{table(series, labels)}\n{end}")
    with atomic_output(args.doc) as temporary:
        temporary.write_text(replace_block(text, args.name, block), encoding="utf-8")
    print(f"wrote {image} and the table in {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
