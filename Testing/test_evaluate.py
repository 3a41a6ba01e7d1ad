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
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from conftest import oriented_volume, smooth_head
from xdiffusion.cli import main
from xdiffusion.errors import InputError
from xdiffusion.evaluate import (
    METRIC_KEYS,
    PSNR_CAP_DB,
    brain_mask,
    dice,
    evaluate_volumes,
    hausdorff_95,
    per_slice_psnr,
    scale_to_reference,
    sharpness,
    sharpness_region,
    sobel_magnitude,
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
    assert metrics["dice_wt"] == 1.0 and metrics["hd95_wt_mm"] == 0.0
    assert metrics["dice_tc"] is None and metrics["dice_et"] is None  # absent from both: nothing to score, not a free 1
    assert metrics["hd95_tc_mm"] is None and metrics["hd95_et_mm"] is None
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
    assert metrics["hd95_et_mm"] == 0.0

    oedema_only = np.where(ref_seg == 3, 2, ref_seg).astype(np.uint8)
    missed = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(oedema_only))
    assert missed["dice_et"] == 0.0 and missed["dice_wt"] == 1.0
    assert missed["hd95_et_mm"] is None  # no enhancing tumour predicted: no surface to measure from


def test_empty_segmentations_and_dice_edge_cases():
    reference = ranged_reference()
    nothing = reference.with_array(np.zeros(SHAPE, dtype=np.uint8))
    metrics = evaluate_volumes(reference, reference, None, nothing, nothing)
    assert metrics["dice_wt"] is None and metrics["hd95_wt_mm"] is None  # a healthy brain called healthy: no score
    assert metrics["tumour_volume_ml_err"] == 0.0 and metrics["centroid_mm"] is None
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True
    assert dice(a, ~a) == 0.0 and dice(a, a) == 1.0 and dice(a[:0], a[:0]) is None
    assert dice(a, np.zeros_like(a)) == 0.0  # a tumour missed entirely scores 0, not None
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


# --- sharpness ------------------------------------------------------------------------------------------------------

def test_sobel_magnitude_is_in_voxel_units():
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (8, 9, 10)), indexing="ij")
    assert np.allclose(sobel_magnitude(x)[1:-1, 1:-1, 1:-1], 1.0)  # a ramp rising 1 per voxel along one axis
    assert np.allclose(sobel_magnitude(3.0 * x + 4.0 * z)[1:-1, 1:-1, 1:-1], 5.0)  # |(3, 0, 4)|
    assert np.allclose(sobel_magnitude(np.full((6, 6, 6), 7.0)), 0.0)


def test_sharpness_region_erodes_three_voxels_also_at_the_grid_edge_and_drops_input_slabs():
    brain = np.zeros((30, 30, 30), dtype=bool)
    brain[5:25, 5:25, 5:25] = True
    assert sharpness_region(brain).sum() == 14**3  # voxels 8..21: more than 3 voxels from the outside
    assert sharpness_region(brain, 2, [15]).sum() == 14 * 14 * 11  # slices 14, 15, 16 left out
    assert sharpness_region(brain, 2, [8, 21]).sum() == 14 * 14 * 10  # at the region's ends, one neighbour each falls outside it
    whole = np.ones((12, 12, 12), dtype=bool)
    assert sharpness_region(whole).sum() == 6**3  # a brain cut by the grid is eroded at the grid's edge too (3..8 kept)


def test_sharpness_known_answers():
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 1.5)
    reference = 100.0 + 50.0 * texture / texture.std()
    reference = np.minimum(reference, np.percentile(reference, 98))  # the top 2 % share one value: the 99.5th percentile is the maximum
    brain = np.ones(reference.shape, dtype=bool)
    assert sharpness(reference, reference, brain) == pytest.approx(1.0)
    # half the contrast, same units (the reference's percentile divides both): exactly half the gradient
    assert sharpness(reference, 0.5 * reference, brain) == pytest.approx(0.5)
    blurred = ndimage.gaussian_filter(reference, 2.0)
    noisy = reference + rng.normal(0.0, 40.0, reference.shape)
    assert sharpness(reference, blurred, brain) < 0.6 and sharpness(reference, noisy, brain) > 1.05  # noise raises it: a band, not a maximum
    assert sharpness(reference, reference, np.zeros_like(brain)) is None


def test_sharpness_leaves_the_copied_input_slice_and_its_neighbours_out():
    """Half the contrast everywhere but the input slice, a copy of the truth: with the input slice and its
    neighbours (whose Sobel sees the copy) left out, exactly 0.5; counted in, the copy pulls it up."""
    rng = np.random.default_rng(1)
    reference = 100.0 + ndimage.gaussian_filter(rng.normal(size=(24, 26, 22)), 1.0) * 400.0
    reference = np.minimum(reference, np.percentile(reference, 98))
    prediction = 0.5 * reference
    prediction[:, 13, :] = reference[:, 13, :]
    brain = np.ones(reference.shape, dtype=bool)
    assert sharpness(reference, prediction, brain, 1, [13]) == pytest.approx(0.5)
    assert sharpness(reference, prediction, brain) > 0.52


def test_evaluate_volumes_measures_sharpness_inside_the_mask_without_the_input_slices():
    reference = oriented_volume(smooth_head((30, 32, 28)), np.eye(3))
    blurred = reference.with_array(ndimage.gaussian_filter(reference.array, 1.5))
    blurred.array[:, :, 14] = reference.array[:, :, 14]
    mask = reference.with_array((reference.array > 0).astype(np.uint8))
    with_inputs = evaluate_volumes(reference, blurred, mask, input_axis=2, input_indices=[14])["sharpness"]
    expected = sharpness(reference.array, blurred.array, reference.array > 0, 2, [14])
    assert with_inputs == pytest.approx(expected) and with_inputs < 1.0
    assert evaluate_volumes(reference, blurred, mask)["sharpness"] != pytest.approx(with_inputs)
    with pytest.raises(InputError, match="axis"):
        evaluate_volumes(reference, blurred, mask, input_axis=3, input_indices=[1])


# --- 95 % Hausdorff distance ---------------------------------------------------------------------------------------

def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _hd95_by_hand(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """The definition, written out (only to check that MONAI is called right): surface voxels, distances in mm to
    the other surface, the larger of the two directed 95th percentiles."""
    directed = []
    for one, other in ((a, b), (b, a)):
        distances = ndimage.distance_transform_edt(~_surface(other), sampling=spacing)
        directed.append(np.percentile(distances[_surface(one)], 95))
    return float(max(directed))


def test_hausdorff_95_in_millimetres():
    one, other = np.zeros((8, 8, 8), dtype=bool), np.zeros((8, 8, 8), dtype=bool)
    one[2, 2, 2] = other[3, 4, 2] = True
    assert hausdorff_95(one, other, (2.0, 1.0, 3.0)) == pytest.approx(np.sqrt(2.0**2 + 2.0**2))  # spacing per array axis
    box, moved = np.zeros((30, 30, 30), dtype=bool), np.zeros((30, 30, 30), dtype=bool)
    box[5:20, 6:18, 8:16] = True
    moved[8:22, 6:19, 7:16] = True
    spacing = (1.0, 1.5, 2.5)
    assert hausdorff_95(box, moved, spacing) == pytest.approx(_hd95_by_hand(box, moved, spacing))
    assert hausdorff_95(box, box, spacing) == 0.0
    assert hausdorff_95(box, np.zeros_like(box), spacing) is None and hausdorff_95(np.zeros_like(box), np.zeros_like(box), spacing) is None


def test_tumour_metrics_report_hd95_per_region():
    reference = ranged_reference(direction=SAL)
    ref_seg = labels_box((2, 3, 1), (6, 6, 4))
    pred_seg = labels_box((4, 3, 1), (6, 6, 4))  # two voxels further along axis 0 (0.8 mm each)
    metrics = evaluate_volumes(reference, reference, None, reference.with_array(ref_seg), reference.with_array(pred_seg))
    assert metrics["hd95_wt_mm"] == pytest.approx(_hd95_by_hand(ref_seg > 0, pred_seg > 0, SPACING))
    assert metrics["hd95_wt_mm"] == pytest.approx(2 * SPACING[0])
    assert metrics["hd95_tc_mm"] is None  # label 2 is oedema only: no tumour core in either


# --- input slices from the sidecar or the command line ------------------------------------------------------------

@pytest.fixture
def blurred_files(tmp_path):
    """A reference, a blurred prediction with its input slice 14 on array axis 2 copied in, and a mask."""
    reference = oriented_volume(smooth_head((30, 32, 28)), np.eye(3))
    prediction = ndimage.gaussian_filter(reference.array, 1.5)
    prediction[:, :, 14] = reference.array[:, :, 14]
    paths = {"ref": tmp_path / "ref.nii.gz", "pred": tmp_path / "recon.nii.gz"}
    write_volume(reference, paths["ref"])
    write_volume(reference.with_array(prediction), paths["pred"])
    return paths, sharpness(reference.array, prediction, _otsu_brain(reference), 2, [14])


def _otsu_brain(reference: Volume) -> np.ndarray:
    from skimage.filters import threshold_otsu

    (scaled,) = scale_to_reference(reference.array)
    return brain_mask(scaled, float(threshold_otsu(scaled)))


def _sharpness_from_cli(capsys, *args) -> float:
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["sharpness"]


def test_evaluate_reads_the_input_slices_from_the_prediction_sidecar(blurred_files, capsys):
    from xdiffusion.provenance import sidecar_path

    paths, expected = blurred_files
    base = ["--reference", str(paths["ref"]), "--prediction", str(paths["pred"])]
    unexcluded = _sharpness_from_cli(capsys, *base)
    sidecar_path(paths["pred"]).write_text(json.dumps({"Input": {"plane": "axial", "axis": 2, "slice_indices": [14]}}))
    assert _sharpness_from_cli(capsys, *base) == pytest.approx(expected, rel=1e-5)
    assert unexcluded != pytest.approx(expected, rel=1e-3)
    # explicit options win over the sidecar (axial is array axis 2 on this grid)
    assert _sharpness_from_cli(capsys, *base, "--input-plane", "axial", "--input-index", "14") == pytest.approx(expected, rel=1e-5)
    assert _sharpness_from_cli(capsys, *base, "--input-plane", "axial", "--input-index", "3") != pytest.approx(expected, rel=1e-5)


def test_evaluate_refuses_a_sidecar_of_another_grid_and_half_given_input_options(blurred_files, capsys):
    from xdiffusion.provenance import sidecar_path

    paths, _ = blurred_files
    base = ["evaluate", "--reference", str(paths["ref"]), "--prediction", str(paths["pred"])]
    assert main([*base, "--input-index", "14"]) == 2
    assert "--input-plane" in capsys.readouterr().err
    sidecar_path(paths["pred"]).write_text(json.dumps({"Input": {"axis": 2, "slice_indices": [40]}}))
    assert main(base) == 2
    assert "do not fit" in capsys.readouterr().err
    sidecar_path(paths["pred"]).write_text("{not json")
    assert main(base) == 2
    assert "not readable JSON" in capsys.readouterr().err
