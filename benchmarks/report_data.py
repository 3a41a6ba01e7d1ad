"""The evaluation suite's cached runs as the report reads them: the methods, their labels and colours, the runs
selected by group and condition, and each metric's mean ± standard deviation over them (`make_report.py`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

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
