"""The report's figures (docs/images/results_*.png), drawn from the cached runs with matplotlib (`make_report.py`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from report_data import COLOURS, METHOD_ORDER, main_table, methods_present, select, stat


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
