"""xdiffusion.evaluate and `xdiffusion evaluate`: metrics checked against values worked out by hand.

Most references here are built so that the [0.5, 99.5] percentile range is exactly [0, 1000] (over 0.5 % of the
voxels sit at each end), so an intensity offset of ``d`` is exactly ``d / 1000`` in scaled units.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from conftest import oriented_volume, smooth_head
from xdiffusion.cli import main
from xdiffusion.errors import InputError
from xdiffusion.evaluate import (
    METRIC_KEYS,
    PSNR_CAP_DB,
    dice,
    evaluate_volumes,
    per_slice_psnr,
    scale_to_reference,
)
from xdiffusion.io import Geometry, Volume, write_volume

SHAPE = (12, 14, 10)
SPACING = (0.8, 1.5, 3.0)
# array axis 0 points S, axis 1 L, axis 2 P: the axial (evaluation) axis is array axis 0, not 2
SAL = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def ranged_reference(shape=SHAPE, direction=np.eye(3), empty_slices: int = 0) -> Volume:
    """Values in [200, 800] with a column of 0s and one of 1000s, so the percentile range is exactly [0, 1000]."""
    array = np.random.default_rng(1).uniform(200.0, 800.0, shape)
    array[:, :2, :2] = 0.0
    array[:, -2:, -2:] = 1000.0
    array[:empty_slices] = 0.0
    return oriented_volume(array, direction, spacing=SPACING)


def offset(volume: Volume, amount: np.ndarray | float) -> Volume:
    """Shift every voxel by ``amount`` toward the middle of [0, 1000], so no value clips in scaled units."""
    array = volume.array
    return volume.with_array(np.where(array >= 1000.0, array - amount, array + amount))


def labels_box(corner: tuple[int, int, int], size: tuple[int, int, int], label: int = 2) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[tuple(slice(c, c + s) for c, s in zip(corner, size))] = label
    return labels


def test_identical_volumes_give_capped_psnr_perfect_ssim_and_dice():
    reference = ranged_reference()
    segmentation = reference.with_array(labels_box((3, 3, 3), (4, 5, 3)))
    metrics = evaluate_volumes(reference, reference, None, segmentation, segmentation)
    assert set(metrics) == set(METRIC_KEYS)
    for key in ("psnr", "psnr_slice_mean", "psnr_mask"):
        assert metrics[key] == PSNR_CAP_DB
    assert metrics["ssim"] == pytest.approx(1.0) and metrics["ssim_mask"] == pytest.approx(1.0)
    assert metrics["dice_wt"] == metrics["dice_tc"] == 1.0  # tc and et are both empty: agreement, not null
    assert metrics["dice_et"] == 1.0
    assert metrics["tumour_volume_ml_err"] == 0.0 and metrics["centroid_mm"] == 0.0
    assert metrics["brain_volume_rel_err"] == 0.0


def test_offset_of_a_tenth_is_twenty_db_and_matches_scikit_image():
    reference = ranged_reference()
    metrics = evaluate_volumes(reference, offset(reference, 100.0))
    assert metrics["psnr"] == pytest.approx(20.0)
    assert metrics["psnr_slice_mean"] == pytest.approx(20.0)
    assert metrics["psnr_mask"] == pytest.approx(20.0)
    assert metrics["ssim"] < 1.0
    assert metrics["dice_wt"] is None and metrics["centroid_mm"] is None  # no segmentations given

    noisy = reference.with_array(reference.array + np.random.default_rng(2).normal(0.0, 60.0, SHAPE))
    ref, pred = scale_to_reference(reference.array, noisy.array)
    assert evaluate_volumes(reference, noisy)["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=1.0))


def test_slice_psnr_uses_the_axial_axis_and_skips_empty_slices():
    reference = ranged_reference(direction=SAL, empty_slices=2)
    deltas = 10.0 ** -np.linspace(1.0, 2.0, SHAPE[0])  # slice i along axis 0 is off by deltas[i] scaled units
    prediction = offset(reference, 1000.0 * deltas[:, None, None])
    profile = per_slice_psnr(reference, prediction, axis=0)
    assert np.isnan(profile[:2]).all()
    np.testing.assert_allclose(profile[2:], -20.0 * np.log10(deltas[2:]))
    assert evaluate_volumes(reference, prediction)["psnr_slice_mean"] == pytest.approx(np.mean(profile[2:]))


def test_mask_limits_psnr_and_defaults_to_positive_reference():
    reference = ranged_reference()
    outside = reference.array == 0.0
    prediction = reference.with_array(np.where(outside, 300.0, reference.array))
    metrics = evaluate_volumes(reference, prediction)
    assert metrics["psnr"] < 30.0 and metrics["psnr_mask"] == PSNR_CAP_DB

    mask = reference.with_array(np.ones(SHAPE, dtype=np.uint8))
    assert evaluate_volumes(reference, prediction, mask)["psnr_mask"] == pytest.approx(metrics["psnr"])
    noisy = reference.array.copy()
    noisy[:4] += np.random.default_rng(3).normal(0.0, 100.0, noisy[:4].shape)
    far = np.zeros(SHAPE, dtype=np.uint8)
    far[8:] = 1  # more than the 3-voxel SSIM half-window away from the noise
    far_metrics = evaluate_volumes(reference, reference.with_array(noisy), reference.with_array(far))
    assert far_metrics["ssim"] < 0.99 and far_metrics["ssim_mask"] == pytest.approx(1.0)
    empty = reference.with_array(np.zeros(SHAPE, dtype=np.uint8))
    masked = evaluate_volumes(reference, prediction, empty)
    assert masked["psnr_mask"] is None and masked["ssim_mask"] is None


def test_shifted_tumour_gives_dice_centroid_and_volume_in_physical_units():
    reference = ranged_reference(direction=SAL)
    shift = np.array([2, 1, 3])
    ref_seg = labels_box((2, 3, 1), (6, 6, 4))
    pred_seg = labels_box(tuple(np.array((2, 3, 1)) + shift), (6, 6, 4))
    metrics = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(pred_seg))
    assert metrics["centroid_mm"] == pytest.approx(np.linalg.norm(shift * np.array(SPACING)))
    assert metrics["dice_wt"] == pytest.approx(2 * (4 * 5 * 1) / (2 * 6 * 6 * 4))
    assert metrics["tumour_volume_ml_err"] == 0.0

    bigger = labels_box((2, 3, 1), (7, 6, 4))  # one more 6x4 layer of voxels
    grown = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(bigger))
    assert grown["tumour_volume_ml_err"] == pytest.approx(6 * 4 * np.prod(SPACING) / 1000.0)


def test_label_four_counts_as_enhancing():
    reference = ranged_reference()
    ref_seg = labels_box((2, 2, 2), (6, 6, 4), label=2)
    ref_seg[4:6, 4:6, 3:5] = 3
    old_style = np.where(ref_seg == 3, 4, ref_seg).astype(np.uint8)
    metrics = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(old_style))
    assert metrics["dice_et"] == metrics["dice_tc"] == metrics["dice_wt"] == 1.0

    oedema_only = np.where(ref_seg == 3, 2, ref_seg).astype(np.uint8)
    missed = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(oedema_only))
    assert missed["dice_et"] == 0.0 and missed["dice_wt"] == 1.0


def test_empty_segmentations_and_dice_edge_cases():
    reference = ranged_reference()
    nothing = reference.with_array(np.zeros(SHAPE, dtype=np.uint8))
    metrics = evaluate_volumes(reference, reference, None, nothing, nothing)
    assert metrics["dice_wt"] == 1.0 and metrics["tumour_volume_ml_err"] == 0.0 and metrics["centroid_mm"] is None
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True
    assert dice(a, ~a) == 0.0 and dice(a, a) == 1.0 and dice(a[:0], a[:0]) == 1.0
    with pytest.raises(InputError, match="labels"):
        evaluate_volumes(reference, reference, None, reference.with_array(np.full(SHAPE, 7)), nothing)


def test_brain_volume_ignores_specks_and_enclosed_holes_but_sees_missing_tissue():
    reference = oriented_volume(smooth_head((32, 34, 30)), np.eye(3))
    array = reference.array.copy()
    array[14:18, 15:19, 13:17] = 0.0  # a dark hole inside the head
    array[0, 0, 0] = 500.0  # a bright speck in the background
    assert evaluate_volumes(reference, reference.with_array(array))["brain_volume_rel_err"] == 0.0

    cut = reference.array.copy()
    cut[:, :, 20:] = 0.0
    expected = -np.count_nonzero(reference.array[:, :, 20:]) / np.count_nonzero(reference.array)
    assert evaluate_volumes(reference, reference.with_array(cut))["brain_volume_rel_err"] == pytest.approx(expected)


def test_mismatched_grid_and_nan_are_refused_by_name():
    reference = ranged_reference()
    moved = Volume(reference.array, Geometry(SHAPE, SPACING, reference.geometry.origin + 1.0, np.eye(3)))
    with pytest.raises(InputError, match="^mask: origin differ"):
        evaluate_volumes(reference, reference, moved)
    nan = reference.array.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="^prediction: holds NaN"):
        evaluate_volumes(reference, reference.with_array(nan))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xdiffusion.cli", "evaluate", *args], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def files(tmp_path):
    """Reference, a noisy prediction, a prediction on another grid, one with a NaN, and two label maps (.mha)."""
    reference = ranged_reference()
    paths = {name: tmp_path / f"{name}.mha" for name in ("ref", "pred", "wide", "nan", "seg_ref", "seg_pred")}
    write_volume(reference, paths["ref"])
    write_volume(offset(reference, 100.0), paths["pred"])
    write_volume(Volume(reference.array, Geometry(SHAPE, (0.8, 1.5, 3.5), (0, 0, 0), np.eye(3))), paths["wide"])
    nan = reference.array.astype(np.float32)
    nan[1, 2, 3] = np.nan
    write_volume(reference.with_array(nan), paths["nan"])
    write_volume(reference.with_array(labels_box((2, 3, 1), (6, 6, 4))), paths["seg_ref"])
    write_volume(reference.with_array(labels_box((3, 3, 1), (6, 6, 4), label=4)), paths["seg_pred"])
    return paths


def test_cli_json_has_exactly_the_documented_keys(files):
    result = run_cli("--reference", str(files["ref"]), "--prediction", str(files["pred"]), "--json",
                     "--reference-segmentation", str(files["seg_ref"]), "--prediction-segmentation", str(files["seg_pred"]))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["psnr"] == pytest.approx(20.0, abs=1e-4)  # float32 files: 100 is not exact in scaled units
    assert metrics["dice_et"] == 0.0 and metrics["centroid_mm"] == pytest.approx(SPACING[0])
    assert all(value is None or math.isfinite(value) for value in metrics.values())


def test_cli_refuses_other_grid_and_nan_with_one_line(files):
    assert_one_error_line(run_cli("--reference", str(files["ref"]), "--prediction", str(files["wide"])), "wide.mha", "spacing")
    assert_one_error_line(run_cli("--reference", str(files["ref"]), "--prediction", str(files["nan"])), "nan.mha", "NaN")


def test_cli_table_and_half_given_segmentations(files, capsys):
    assert main(["evaluate", "--reference", str(files["ref"]), "--prediction", str(files["pred"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table] == list(METRIC_KEYS)
    assert table[METRIC_KEYS.index("dice_wt")].split()[1] == "n/a"
    assert table[0].endswith(" dB")
    assert len({line.index(value := line.split()[1]) + len(value) for line in table}) == 1  # values right-aligned
    assert main(["evaluate", "--reference", str(files["ref"]), "--prediction", str(files["pred"]),
                 "--reference-segmentation", str(files["seg_ref"])]) == 2
    assert capsys.readouterr().err.startswith("error: give both")
