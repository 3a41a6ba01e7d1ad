"""The comparison's metrics (from `xdiffusion evaluate --json`) and the reconstructed tumour's volumes, with readable
names and units, in one results table that every reconstruction and Compare reuses."""

from __future__ import annotations

from typing import Optional

import vtk

RESULTS_TABLE_ATTRIBUTE = "XDiffusion.Role"
RESULTS_TABLE_ROLE = "comparison results"
RESULTS_TABLE_NAME = "XDiffusion comparison"
# the CLI's key -> (what it is, unit); the order is the table's
METRICS = {
    "psnr": ("PSNR, whole volume", "dB"),
    "psnr_slice_mean": ("PSNR, mean over axial slices", "dB"),
    "ssim": ("SSIM, whole volume", ""),
    "psnr_mask": ("PSNR, foreground (reference > 0)", "dB"),
    "ssim_mask": ("SSIM, foreground (reference > 0)", ""),
    "brain_volume_rel_err": ("Brain volume error", "%"),
    "sharpness": ("Sharpness (1 = as detailed as the reference)", ""),
    "dice_wt": ("Dice, whole tumour", ""),
    "dice_tc": ("Dice, tumour core", ""),
    "dice_et": ("Dice, enhancing tumour", ""),
    "hd95_wt_mm": ("95 % Hausdorff distance, whole tumour", "mm"),
    "hd95_tc_mm": ("95 % Hausdorff distance, tumour core", "mm"),
    "hd95_et_mm": ("95 % Hausdorff distance, enhancing tumour", "mm"),
    "tumour_volume_ml_err": ("Tumour volume error", "ml"),
    "centroid_mm": ("Tumour centre distance", "mm"),
    "uncertainty_spearman": ("Uncertainty vs error, Spearman", ""),
    "uncertainty_auroc": ("Uncertainty vs error, AUROC", ""),
    "tumour_ml_whole": ("Reconstructed tumour volume, whole tumour (1-3)", "ml"),  # `tumour.volumes_ml`
    "tumour_ml_necrotic": ("Reconstructed tumour volume, necrotic core (1)", "ml"),
    "tumour_ml_oedema": ("Reconstructed tumour volume, oedema (2)", "ml"),
    "tumour_ml_enhancing": ("Reconstructed tumour volume, enhancing (3)", "ml"),
}
PERCENT = {"brain_volume_rel_err"}  # a fraction in the CLI's output, shown in percent
TUMOUR_KEYS = ("dice_wt", "dice_tc", "dice_et", "hd95_wt_mm", "hd95_tc_mm", "hd95_et_mm", "tumour_volume_ml_err", "centroid_mm")


def rows(metrics: dict, why_missing: Optional[dict] = None) -> list[tuple[str, str, str]]:
    """(name, value, unit) for each metric: known ones in a fixed order, unknown ones after them under their own
    key; a metric the CLI could not compute says why when ``why_missing`` knows, else 'not computable'."""
    why_missing = why_missing or {}
    keys = [key for key in METRICS if key in metrics] + [key for key in metrics if key not in METRICS]
    table = []
    for key in keys:
        name, unit = METRICS.get(key, (key, ""))
        value = metrics[key]
        if value is None:
            text = why_missing.get(key, "not computable")
            unit = ""
        elif key in PERCENT:
            text = f"{100.0 * float(value):+.1f}"
        else:
            text = f"{float(value):.4g}"
        table.append((name, text, unit))
    return table


def results_table(scene, create: bool = True):
    """The scene's one comparison table (found by its attribute, whatever the user renamed it to)."""
    nodes = scene.GetNodesByClass("vtkMRMLTableNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(RESULTS_TABLE_ATTRIBUTE) == RESULTS_TABLE_ROLE:
            return node
    if not create:
        return None
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", RESULTS_TABLE_NAME)
    node.SetAttribute(RESULTS_TABLE_ATTRIBUTE, RESULTS_TABLE_ROLE)
    return node


def fill_results_table(scene, metrics: dict, why_missing: Optional[dict] = None, caption: str = ""):
    """Write the metrics into the results table (replacing what the last Compare wrote) and return it."""
    node = results_table(scene)
    table = node.GetTable()
    table.Initialize()
    for title in ("Metric", "Value", "Unit"):
        column = vtk.vtkStringArray()
        column.SetName(title)
        table.AddColumn(column)
    for cells in rows(metrics, why_missing):
        row = table.InsertNextBlankRow()
        for column, cell in enumerate(cells):
            table.SetValue(row, column, vtk.vtkVariant(cell))
    if caption:
        node.SetAttribute("XDiffusion.Compared", caption)
    node.Modified()
    return node
