"""The tumour-profiles harness: its cases are held-out lesions of at least 5 ml, the input is the slice of largest
cross-section, and the methods see that slice's labels and nothing else of the truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from test_tumour import SPACING, brain_phantom
from xdiffusion.io import Geometry, Volume, read_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tumour_profiles as harness  # noqa: E402
from held_out_individuals import Scan  # noqa: E402


def _scan(brain_radius: float = 28.0) -> Scan:
    image, mask, _ = brain_phantom()
    if brain_radius < 28.0:
        grid = np.indices(mask.shape) - mask.shape[0] / 2
        mask = np.sqrt(np.sum(grid**2, axis=0)) < brain_radius
        image = np.where(mask, image, 0.0).astype(np.float32)
    return Scan("phantom", Volume(image, Geometry(image.shape, SPACING, (0.0, 0.0, 0.0), np.eye(3))), mask, False)


def test_largest_cross_section_is_found_on_every_axis() -> None:
    labels = np.zeros((12, 14, 16), dtype=np.uint8)
    labels[3:9, 5, 2:10] = 2  # largest on axis 1: index 5
    labels[4, 2:12, 6:8] = 1  # largest on axis 0: index 4
    labels[2:6, 4:6, 12] = 3
    assert harness.largest_cross_section(labels, 0) == 4
    assert harness.largest_cross_section(labels, 1) == 5
    counts = [(labels[:, :, k] > 0).sum() for k in range(16)]
    assert harness.largest_cross_section(labels, 2) == int(np.argmax(counts))


def test_cases_hold_lesions_of_at_least_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = harness.lesion_cases([_scan()], seeds=3, min_ml=5.0)
    assert len(cases) == 3 and len({c.seed for c in cases}) == 3
    assert all(c.volume_ml >= 5.0 for c in cases)
    # a brain too small for any lesion of 50 ml gives no case rather than a smaller lesion
    monkeypatch.setattr(harness, "SEED_TRIES", 3)
    assert harness.lesion_cases([_scan(brain_radius=10.0)], seeds=2, min_ml=50.0) == []


def test_methods_see_only_the_input_slice_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = harness.lesion_cases([_scan()], seeds=1)[0]
    seen = []

    def spy(geometry, axis, indices, slices):
        seen.append((axis, list(indices), np.array(slices)))
        return np.zeros(geometry.shape, dtype=np.uint8)

    monkeypatch.setattr(harness, "BASELINES", {"spy": spy})
    monkeypatch.setattr(harness, "SHAPE_PRIORS", {"prior spy": spy})
    rows = harness.evaluate_case(case, tmp_path, harness.PLANES, model=None, log=lambda line: None)
    assert [r["method"] for r in rows] == ["spy", "prior spy"] * 3 and len(seen) == 6
    truth = case.truth.array
    for (axis, indices, slices), row in zip(seen, rows):
        assert indices == [row["input_index"]] == [harness.largest_cross_section(truth, axis)]
        assert np.array_equal(slices[0], np.take(truth, indices[0], axis=axis))
        written = read_volume(tmp_path / case.name / f"input-labels-{row['plane']}.nii.gz").array
        assert np.array_equal(np.take(written, indices[0], axis=axis), slices[0])
        assert not np.delete(written, indices[0], axis=axis).any()  # nothing of the truth beyond the input slice
        assert row["metrics"]["dice_wt"] == 0.0 and row["metrics"]["tumour_volume_err_percent"] == pytest.approx(-100.0)


def test_scores_and_table_without_a_model(tmp_path: Path) -> None:
    case = harness.lesion_cases([_scan()], seeds=1)[0]
    rows = harness.evaluate_case(case, tmp_path, ("axial",), model=None, log=lambda line: None)
    assert [r["method"] for r in rows] == ["copy", "ellipsoid", "taper"]
    for row in rows:
        assert 0.0 < row["metrics"]["dice_wt"] <= 1.0 and row["metrics"]["hd95_wt_mm"] >= 0.0
    ready, why = harness.model_status(None)
    assert not ready and "not run" in why
    text = harness.markdown(rows, {"min_ml": 5.0, "command": "x", "git_commit": "abc", "when": "now",
                                   "machine": {"cpu": "cpu", "cores": 2}, "model_status": why})
    assert text.count("| copy |") == 1 + 1 + 1 and "not run" in text  # the axial mean, the all mean, the case row
    assert text.count("\n- taper: ") == 1 and "\n- copy: " not in text  # the done-when line is for methods, not baselines


def test_done_when_counts_every_case_plane() -> None:
    """Met only with the mean Dice, a win over both baselines and the volume error on every case-plane."""
    def row(case, method, dice, error):
        return {"case": case, "plane": "axial", "method": method, "metrics": {"dice_wt": dice, "tumour_volume_err_percent": error}}

    rows = [row("a", "copy", 0.70, 40.0), row("a", "ellipsoid", 0.78, 10.0), row("a", "taper", 0.80, 12.0),
            row("b", "copy", 0.72, 40.0), row("b", "ellipsoid", 0.79, 10.0), row("b", "taper", 0.81, -20.0)]
    assert harness.done_when_line(rows, "taper").startswith("- taper: met; mean Dice WT 0.805")
    rows[-1]["metrics"]["tumour_volume_err_percent"] = -30.0
    assert "not met" in harness.done_when_line(rows, "taper") and "on 1 of 2" in harness.done_when_line(rows, "taper")
    rows[-1]["metrics"].update(dice_wt=0.785, tumour_volume_err_percent=0.0)  # below the ellipsoid on case b
    assert "beats both baselines on 1 of 2" in harness.done_when_line(rows, "taper")


def test_label_net_rows_keep_the_input_slice_labels(tmp_path: Path) -> None:
    """The label-net methods score a real label volume whose input slice carries exactly the given labels."""
    import torch

    from xdiffusion.model.label_net import TumourLabelNet

    torch.manual_seed(0)
    case = harness.lesion_cases([_scan()], seeds=1)[0]
    rows = harness.evaluate_case(case, tmp_path, ("axial",), model=None, log=lambda line: None,
                                 label_net=TumourLabelNet(features=(4, 4, 8, 8, 16, 4)))
    net_rows = [r for r in rows if r["method"] in harness.LABEL_NET_METHODS]
    assert [r["method"] for r in net_rows] == list(harness.LABEL_NET_METHODS)
    assert 0.0 <= net_rows[2]["metrics"]["input_slice_dice_wt"] <= 1.0
    with_labels = net_rows[0]["metrics"]
    assert with_labels["dice_wt"] > 0.0  # the given slice alone overlaps the truth


def test_without_labels_the_done_when_is_the_mean_dice_with_the_input_slice_found() -> None:
    rows = [{"method": "label net taper", "metrics": {"dice_wt": dice, "input_slice_dice_wt": found}}
            for dice, found in ((0.5, 0.8), (0.8, 0.9))]
    assert harness.without_labels_line(rows, "label net taper") == (
        "- label net taper: met; mean Dice WT 0.650 over 2 case-planes; input slice Dice WT 0.850")
    rows[0]["metrics"]["dice_wt"] = 0.3
    assert "not met; mean Dice WT 0.550" in harness.without_labels_line(rows, "label net taper")
    assert harness.without_labels_line(rows, "xdiffusion") == "- xdiffusion: no scored case"


@pytest.mark.parametrize("options, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--label-net", "."], "no config.json there"),
    ([], "error: "),  # an empty cache: the held-out subjects are missing
])
def test_bad_options_and_a_missing_cache_are_one_line_and_exit_two(options, message, tmp_path: Path, capsys) -> None:
    doc = tmp_path / "results.md"
    assert harness.main([*options, "--cache", str(tmp_path), "--work", str(tmp_path / "work"), "--doc", str(doc)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0]
    assert not doc.exists() and not (tmp_path / "work").exists()
