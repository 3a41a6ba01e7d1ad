"""Draws the extension's icon (XDiffusion.png, 128x128) and renders the module panel's .ui into a mock-up.

Run: python docs/figures/make_slicer_figures.py [--panel]. The panel needs PySide6 (pip install PySide6-Essentials)
and renders offscreen; Slicer's own widget classes are shown as their nearest plain Qt widgets.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
ICON_PATHS = (ROOT / "XDiffusion.png", ROOT / "XDiffusion" / "Resources" / "Icons" / "XDiffusion.png")
PANEL_PATH = ROOT / "docs" / "images" / "slicer_panel.png"
# Slicer classes -> the plain Qt class that looks most like them (for the mock-up only)
QT_STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox",
                "ctkPathLineEdit": "QLineEdit", "qMRMLTableView": "QTableWidget"}


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


def render_panel(ui_path: Path, output: Path, width: int = 420) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QGroupBox, QTableWidgetItem, QWidget

    text = ui_path.read_text()
    for slicer_class, qt_class in QT_STAND_INS.items():
        text = text.replace(f'class="{slicer_class}"', f'class="{qt_class}"')
    text = re.sub(r"<customwidgets>.*</customwidgets>", "", text, flags=re.S)
    text = re.sub(r"<connections>.*</connections>", "", text, flags=re.S)
    app = QApplication.instance() or QApplication([])
    data = QByteArray(text.encode())  # Qt keeps pointers to these: they must outlive the load
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    panel = loader.load(buffer)
    examples = {"inputVolumeSelector": "BraTS-sample T1", "outputVolumeSelector": "Create new volume",
                "outputSegmentationSelector": "Create new segmentation", "outputUncertaintySelector": "Create new volume",
                "groundTruthSelector": "BraTS-sample T1", "groundTruthSegmentationSelector": "BraTS-sample T1 labels"}
    shown_values = {"deviceLabel": "GPU: NVIDIA RTX A4000", "applyButton": "Cancel",
                    "statusLabel": "step 5/12: about 38 s left (27 s so far)"}
    for child in panel.findChildren(QWidget):
        name = child.objectName()
        if isinstance(child, QGroupBox):  # a collapsible button's `text` is a group box's title
            child.setTitle(child.property("text"))
        elif name == "followSliceViewCheckBox":
            child.setChecked(True)
        elif name in ("modelFolderPathLineEdit", "showLogButton"):
            child.setVisible(name != "showLogButton")
            child.setEnabled(False)
        elif name in examples:
            child.addItem(examples[name])
        elif name in shown_values:
            child.setText(shown_values[name])
            child.setEnabled(True)
        elif name == "progressBar":
            child.setValue(42)
        elif name == "sliceIndexSpinBox":
            child.setValue(77)
        elif name == "qualityComboBox":
            child.setCurrentIndex(1)
        elif name == "metricsTableView":
            rows = [("psnr", "27.31", "dB"), ("ssim", "0.8712", ""), ("dice_wt", "0.7433", ""), ("tumour_volume_ml_err", "3.214", "ml")]
            child.setColumnCount(3)
            child.setRowCount(len(rows))
            child.setHorizontalHeaderLabels(["Metric", "Value", "Unit"])
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    child.setItem(r, c, QTableWidgetItem(cell))
    panel.resize(width, panel.sizeHint().height())
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")
    app.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--panel", action="store_true", help="also render the panel mock-up (needs PySide6)")
    args = parser.parse_args()
    icon = draw_icon()
    for path in ICON_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path)
    if args.panel:
        render_panel(ROOT / "XDiffusion" / "Resources" / "UI" / "XDiffusion.ui", PANEL_PATH)


if __name__ == "__main__":
    main()
