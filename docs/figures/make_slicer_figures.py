"""Draws the extension's icon, and the Slicer guide's figure from a real run of the module's own code.

    python docs/figures/make_slicer_figures.py                 # XDiffusion.png (128x128), twice
    python docs/figures/make_slicer_figures.py --walkthrough   # docs/images/slicer_walkthrough.png only

The walkthrough figure is not a screenshot of Slicer (slicer-core has Slicer's MRML scene, storage nodes and
segmentations, but no views). It runs the jobs the panel runs (XDiffusion/XDiffusionModuleLib: Reconstruct, then
Compare) on the shipped sample with the shipped model, through the real `xdiffusion` CLI in child processes, and
draws the nodes they make with matplotlib. Every number in it comes from that run; the figure says so on its face.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
ICON_PATHS = (ROOT / "XDiffusion.png", ROOT / "XDiffusion" / "Resources" / "Icons" / "XDiffusion.png")
WALKTHROUGH_PATH = ROOT / "docs" / "images" / "slicer_walkthrough.png"


def draw_icon(size: int = 128, scale: int = 4) -> Image.Image:
    """Three grey MRI slices, an arrow, and a blue cube: a few slices in, a volume out. Drawn large, then reduced."""
    s = size * scale
    image = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    u = s / 128.0

    def parallelogram(x, y, w, h, skew, fill, outline):
        points = [(x * u, (y + skew) * u), ((x + w) * u, y * u), ((x + w) * u, (y + h) * u), (x * u, (y + h + skew) * u)]
        draw.polygon(points, fill=fill, outline=outline, width=int(2 * u))

    for i, shade in enumerate((150, 185, 220)):  # the slice stack, back to front
        parallelogram(8 + i * 13, 30 - i * 3, 22, 62, 10, (shade, shade, shade, 255), (60, 60, 60, 255))
        cx, cy = (19 + i * 13) * u, (66 - i * 3) * u
        draw.ellipse((cx - 6 * u, cy - 14 * u, cx + 6 * u, cy + 14 * u), fill=(shade - 70, shade - 70, shade - 70, 255))
    draw.polygon([(62 * u, 56 * u), (74 * u, 64 * u), (62 * u, 72 * u)], fill=(230, 120, 20, 255))
    draw.rectangle((52 * u, 61 * u, 63 * u, 67 * u), fill=(230, 120, 20, 255))
    front = [(78, 52), (110, 52), (110, 100), (78, 100)]
    top = [(78, 52), (92, 38), (124, 38), (110, 52)]
    side = [(110, 52), (124, 38), (124, 86), (110, 100)]
    for face, colour in ((front, (40, 110, 200, 255)), (top, (110, 170, 235, 255)), (side, (25, 75, 150, 255))):
        draw.polygon([(x * u, y * u) for x, y in face], fill=colour, outline=(15, 40, 90, 255), width=int(2 * u))
    draw.ellipse((88 * u, 68 * u, 100 * u, 80 * u), fill=(220, 40, 40, 255))  # the tumour inside the volume
    return image.resize((size, size), Image.LANCZOS)


# --- the walkthrough figure -------------------------------------------------------------------------------------

SCREEN = {  # plane -> (RAS axis shown vertically, top is +; RAS axis shown horizontally, left is +), as Slicer shows it
    "axial": (1, 0),  # anterior up, patient right on the left
    "coronal": (2, 0),  # superior up, patient right on the left
    "sagittal": (2, 1),  # superior up, anterior on the left
}


def plane_image(node, plane: str, index: int):
    """Slice ``index`` of ``node`` in ``plane``, oriented as Slicer's slice view shows it, and its extent in mm
    (for an axis-aligned grid, as the sample's)."""
    import slicer

    from XDiffusionModuleLib import grid

    matrix = grid.ijk_to_ras(node)
    ijk = np.transpose(slicer.util.arrayFromVolume(node))  # i, j, k
    axis = grid.plane_axis(node, plane)
    image = np.take(ijk, index, axis=axis)
    others = [a for a in range(3) if a != axis]
    vertical_ras, horizontal_ras = SCREEN[plane]
    dominant = [int(np.argmax(np.abs(matrix[:3, a]))) for a in others]
    if dominant.index(vertical_ras) == 1:  # rows must be the vertical axis
        image = image.T
        others = others[::-1]
    vertical, horizontal = others
    if matrix[vertical_ras, vertical] > 0:  # the + direction goes up
        image = image[::-1, :]
    if matrix[horizontal_ras, horizontal] > 0:  # the + direction goes left
        image = image[:, ::-1]
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return image, (0, image.shape[1] * spacing[horizontal], 0, image.shape[0] * spacing[vertical])


def run_walkthrough(quality: str = "fast", device: str = "auto") -> dict:
    """The panel's Reconstruct and Compare on the shipped sample, in slicer-core's scene, through the real CLI."""
    import slicer

    sys.path.insert(0, str(ROOT / "XDiffusion"))
    from XDiffusionModuleLib import bundle, cli, grid, metrics, scene
    from XDiffusionModuleLib.childprocess import python_command
    from XDiffusionModuleLib.jobs import DONE
    from XDiffusionModuleLib.runs import CompareRequest, ComparisonRun, ReconstructionRun, RunRequest, model_key

    mrml = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(mrml)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(mrml)
    t1_file, labels_file = bundle.sample_data_files(ROOT / "XDiffusion")
    t1 = volumes.AddArchetypeVolume(str(t1_file), "XDiffusionSampleT1")
    labels = volumes.AddArchetypeVolume(str(labels_file), "XDiffusionSampleT1Labels", 1)
    index = grid.slice_count(t1, "axial") // 2
    request = RunRequest(t1.GetID(), "axial", (index,), None, quality=quality, device=device)
    cards: dict = {}
    started = time.monotonic()
    run = ReconstructionRun(mrml, request, cli.cli_command(python_command()), cards).start()
    if run.wait() != DONE:
        raise RuntimeError(run.error)
    seconds = time.monotonic() - started
    outputs = run.outputs
    compare = CompareRequest(t1.GetID(), outputs["image"].GetID(), labels.GetID(),
                             outputs["segmentation"].GetID() if "segmentation" in outputs else None,
                             outputs["uncertainty"].GetID() if "uncertainty" in outputs else None, run.segments_tumours)
    comparison = ComparisonRun(mrml, compare, cli.cli_command(python_command())).start()
    if comparison.wait() != DONE:
        raise RuntimeError(comparison.error)
    return {"t1": t1, "index": index, "run": run, "seconds": seconds, "card": cards[model_key(None)],
            "rows": metrics.rows(comparison.metrics, comparison.why_missing), "scene": mrml, "colors": colors,
            "generated": outputs["image"].GetAttribute(scene.GENERATED_ATTRIBUTE)}


def draw_walkthrough(result: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1, run, index = result["t1"], result["run"], result["index"]
    image, spread = run.outputs["image"], run.outputs.get("uncertainty")
    from XDiffusionModuleLib import grid

    coronal = grid.slice_count(t1, "coronal") // 2
    window = np.percentile(plane_image(t1, "axial", index)[0], [1, 99.5])
    figure = plt.figure(figsize=(13, 8.2))
    figure.suptitle("NOT A SCREENSHOT OF SLICER. The nodes the XDiffusion module's code made from the shipped sample "
                    "(slicer-core scene,\nreal `xdiffusion` runs in child processes), drawn with matplotlib. Every value "
                    "below comes from that run.", fontsize=11, color="#b35c00", fontweight="bold")
    panels = [
        (t1, "axial", index, f"1. Input: axial slice {index} of\nXDiffusionSampleT1 (the only slice used)", None),
        (image, "coronal", coronal, f"2. Reconstruct 3D: coronal slice {coronal} of\n'{image.GetName()}'".replace(
            " XDiffusion ", " XDiffusion\n"), None),
        (image, "sagittal", grid.slice_count(t1, "sagittal") // 2, "3. The same reconstruction, sagittal", None),
        (image, "coronal", coronal, "4. Show uncertainty overlay (spread\nacross views; its upper half shown)", spread),
        (t1, "coronal", coronal, "5. Compare, left view (Red):\nground truth, coronal", None),
        (image, "coronal", coronal, "5. Compare, right view (Yellow):\nreconstruction, coronal, linked", None),
    ]
    for number, (node, plane, slice_index, title, overlay) in enumerate(panels):
        axes = figure.add_subplot(2, 4, number + 1 if number < 4 else number + 1)
        pixels, extent = plane_image(node, plane, slice_index)
        axes.imshow(pixels, cmap="gray", vmin=window[0], vmax=window[1], extent=extent)
        if overlay is not None:
            heat, _ = plane_image(overlay, plane, slice_index)
            axes.imshow(np.ma.masked_less_equal(heat, np.percentile(heat, 50)), cmap="inferno", alpha=0.6, extent=extent)
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    table_axes = figure.add_subplot(2, 4, (7, 8))
    table_axes.set_axis_off()
    rows = [list(row) for row in result["rows"]]
    table = table_axes.table(cellText=rows, colLabels=["Metric", "Value", "Unit"], loc="center", colWidths=[0.42, 0.48, 0.10])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.25)
    table_axes.set_title("5. Compare: the results table (xdiffusion evaluate --json)", fontsize=9)
    card = result["card"]
    warnings = "; ".join(run.warnings) if run.warnings else "none"
    facts = (f"Model {card.get('id')} (segments tumours: {card.get('segments_tumours')}), quality {run.request.quality}, "
             f"input axial slice {index}; run took {result['seconds']:.0f} s on "
             f"{platform.processor() or platform.machine()} ({run.request.device}). Warnings: {warnings}. "
             f"Output marked generated: {result['generated']}.")
    figure.text(0.01, 0.01, facts, fontsize=8, wrap=True)
    figure.tight_layout(rect=(0, 0.04, 1, 0.9))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walkthrough", action="store_true", help="run the module on the sample and draw its figure instead")
    parser.add_argument("--device", default="auto", choices=("auto", "gpu", "cpu"))
    args = parser.parse_args()
    if args.walkthrough:
        draw_walkthrough(run_walkthrough(device=args.device), WALKTHROUGH_PATH)
        print(f"wrote {WALKTHROUGH_PATH}")
        return
    icon = draw_icon()
    for path in ICON_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path)


if __name__ == "__main__":
    main()
