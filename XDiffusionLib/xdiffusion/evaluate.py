"""Compare a reconstruction with its ground truth: image fidelity, brain volume and, given labels, tumour agreement.

Intensity rule: both volumes are mapped to [0, 1] by the *reference's* [0.5, 99.5] percentile range (over all its
voxels) and clipped, so the prediction is judged in the reference's units and one bright outlier cannot set the
scale. PSNR uses a data range of 1 and is capped at ``PSNR_CAP_DB`` (identical volumes give a finite, JSON-safe
number instead of infinity). Every metric that cannot be computed is ``None`` (JSON ``null``), never NaN.

Sharpness has its own rule (``sharpness``): both volumes divided by the reference's 99.5th percentile inside the
brain, and the input slices (exact copies in every method's output) left out, so it can only be measured fairly when
the input slices are known: ``evaluate_volumes(input_axis=, input_indices=)``, or for files the prediction's
provenance sidecar (``recon.json`` beside ``recon.nii.gz``) or ``--input-plane``/``--input-index``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .errors import InputError
from .geometry import plane_axis
from .io import Volume, read_volume
from .sharpness import sharpness, sharpness_region, sobel_magnitude  # noqa: F401 (part of the evaluation API)

PSNR_CAP_DB = 100.0  # what an MSE of 0 (or below 1e-10) reports
PERCENTILES = (0.5, 99.5)
GRID_ATOL = 1e-4  # mm and direction cosines: NIfTI keeps geometry as float32 (about 1e-7 relative)
SSIM_WINDOW = 7  # scikit-image's default window; every axis must be at least this long
WHOLE_TUMOUR, TUMOUR_CORE, ENHANCING = (1, 2, 3), (1, 3), (3,)
BRATS_LABELS = (0, 1, 2, 3, 4)  # 4 is the enhancing label of BraTS releases before 2023; read as 3
METRIC_KEYS = (
    "psnr",
    "psnr_slice_mean",
    "ssim",
    "psnr_mask",
    "ssim_mask",
    "sharpness",
    "brain_volume_rel_err",
    "dice_wt",
    "dice_tc",
    "dice_et",
    "hd95_wt_mm",
    "hd95_tc_mm",
    "hd95_et_mm",
    "tumour_volume_ml_err",
    "centroid_mm",
)
TUMOUR_KEYS = ("dice_wt", "dice_tc", "dice_et", "hd95_wt_mm", "hd95_tc_mm", "hd95_et_mm", "tumour_volume_ml_err", "centroid_mm")
UNITS = {"psnr": "dB", "psnr_slice_mean": "dB", "psnr_mask": "dB", "tumour_volume_ml_err": "ml", "centroid_mm": "mm",
         "hd95_wt_mm": "mm", "hd95_tc_mm": "mm", "hd95_et_mm": "mm"}


def check_same_grid(reference: Volume, other: Volume, name: str) -> None:
    """Refuse ``other`` unless it lies voxel for voxel on the reference's grid: metrics compare voxels by index."""
    ref, geo = reference.geometry, other.geometry
    if ref.shape != geo.shape:
        raise InputError(f"{name}: shape {list(geo.shape)} does not match the reference's {list(ref.shape)}")
    if not geo.same_as(ref, atol=GRID_ATOL):
        differing = [
            part for part in ("spacing", "origin", "direction")
            if not np.allclose(getattr(geo, part), getattr(ref, part), atol=GRID_ATOL)
        ]
        raise InputError(f"{name}: {' and '.join(differing)} differ from the reference's; resample it onto the reference grid")


def _check_finite(volume: Volume, name: str) -> None:
    if not np.isfinite(volume.array).all():
        raise InputError(f"{name}: holds NaN or infinite voxels")


def scale_to_reference(reference: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Map the reference and ``arrays`` by the reference's [0.5, 99.5] percentile range into [0, 1], clipped."""
    low, high = np.percentile(reference, PERCENTILES)
    if high <= low:
        raise InputError("reference: its intensities are (almost) constant, so no intensity range can be set")
    return [np.clip((np.asarray(a, dtype=np.float64) - low) / (high - low), 0.0, 1.0) for a in (reference, *arrays)]


def psnr(reference: np.ndarray, prediction: np.ndarray) -> float:
    """PSNR (dB) of arrays already scaled to data range 1 (scikit-image's), capped at ``PSNR_CAP_DB`` so a perfect
    match stays finite. The project's one PSNR: evaluation, validation and the autoencoder's metrics use it."""
    with np.errstate(divide="ignore"):
        return min(float(peak_signal_noise_ratio(reference, prediction, data_range=1.0)), PSNR_CAP_DB)


def _slice_psnr(reference: np.ndarray, prediction: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice PSNR of already scaled arrays; NaN where the scaled reference slice is constant (e.g. empty)."""
    ref, pred = np.moveaxis(reference, axis, 0), np.moveaxis(prediction, axis, 0)
    return np.array([psnr(r, p) if np.ptp(r) > 0 else np.nan for r, p in zip(ref, pred)], dtype=np.float64)


def per_slice_psnr(reference: Volume, prediction: Volume, axis: int) -> np.ndarray:
    """PSNR (dB) of every slice along array ``axis``, for profiles such as PSNR vs distance from the input slice.

    Same scaling as ``evaluate_volumes``. Slices whose scaled reference is constant (empty background) have no
    meaningful PSNR and are NaN, so indices stay aligned with the grid.
    """
    check_same_grid(reference, prediction, "prediction")
    ref, pred = scale_to_reference(reference.array, prediction.array)
    return _slice_psnr(ref, pred, axis)


def dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Dice overlap of two boolean masks; ``None`` when both are empty: a region absent from both has nothing to
    score, and a free 1.0 would reward a method for drawing nothing."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def hausdorff_95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """The symmetric 95th-percentile Hausdorff distance (mm) between two masks' surfaces, as MONAI computes it
    (``monai.metrics.compute_hausdorff_distance(percentile=95)``: the larger of the two directed 95th percentiles of
    surface-to-surface distances, with the voxel ``spacing``). ``None`` when either mask is empty (MONAI gives NaN
    or infinity there; BraTS's fixed 373 mm penalty is a ranking convention, not a distance)."""
    reference, prediction = np.asarray(reference, dtype=bool), np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"mask shapes differ: {reference.shape} vs {prediction.shape}")
    if not reference.any() or not prediction.any():
        return None
    from monai.metrics import compute_hausdorff_distance  # loads torch: only when there is a tumour to measure

    with warnings.catch_warnings():  # MONAI's own deprecation notices about its internals
        warnings.simplefilter("ignore")
        distance = compute_hausdorff_distance(prediction[None, None], reference[None, None], include_background=True,
                                              percentile=95, spacing=[float(s) for s in spacing])
    value = float(distance.reshape(-1)[0])
    return value if np.isfinite(value) else None


def brain_mask(scaled: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels above ``threshold``, kept to the largest 6-connected component with its enclosed holes filled.

    The component step drops background noise and skull fragments; hole filling takes in dark structures the brain
    encloses (ventricles). The caller passes one threshold for both volumes so the rule is the same for each.
    """
    components, count = ndimage.label(scaled > threshold)
    if count == 0:
        return np.zeros(scaled.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(components == int(np.argmax(sizes)))


def _labels(segmentation: Volume, name: str) -> np.ndarray:
    """Integer BraTS labels with 4 read as 3; anything else is refused rather than silently ignored."""
    array = segmentation.array
    labels = np.rint(array).astype(np.int64)
    if not np.array_equal(labels, array):
        raise InputError(f"{name}: holds non-integer values; a label map of BraTS labels 0-4 is needed")
    unknown = sorted(set(np.unique(labels).tolist()) - set(BRATS_LABELS))
    if unknown:
        raise InputError(f"{name}: holds labels {unknown[:5]}; only BraTS labels 0-4 are understood")
    labels[labels == 4] = 3
    return labels


def tumour_metrics(reference: np.ndarray, prediction: np.ndarray, geometry) -> dict[str, Optional[float]]:
    """Dice and 95 % Hausdorff distance per BraTS region, whole-tumour volume error (ml) and whole-tumour centroid
    distance (mm) of two BraTS label arrays (4 already read as 3) on ``geometry``."""
    ref_wt, pred_wt = np.isin(reference, WHOLE_TUMOUR), np.isin(prediction, WHOLE_TUMOUR)
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    centroid = None
    if ref_wt.any() and pred_wt.any():
        points = geometry.index_to_physical(np.stack([np.argwhere(ref_wt).mean(0), np.argwhere(pred_wt).mean(0)]))
        centroid = float(np.linalg.norm(points[1] - points[0]))
    metrics: dict[str, Optional[float]] = {}
    for name, region in (("wt", WHOLE_TUMOUR), ("tc", TUMOUR_CORE), ("et", ENHANCING)):
        truth, guess = np.isin(reference, region), np.isin(prediction, region)
        metrics[f"dice_{name}"] = dice(truth, guess)
        metrics[f"hd95_{name}_mm"] = hausdorff_95(truth, guess, geometry.spacing)
    metrics["tumour_volume_ml_err"] = (int(pred_wt.sum()) - int(ref_wt.sum())) * voxel_ml
    metrics["centroid_mm"] = centroid
    return metrics


def evaluate_volumes(
    reference: Volume,
    prediction: Volume,
    mask: Optional[Volume] = None,
    reference_segmentation: Optional[Volume] = None,
    prediction_segmentation: Optional[Volume] = None,
    input_axis: Optional[int] = None,
    input_indices: Sequence[int] = (),
) -> dict[str, Optional[float]]:
    """All metrics of ``METRIC_KEYS`` (``None`` where not computable), on the shared grid of all inputs.

    - ``psnr``, ``ssim``: whole 3D volume (SSIM: scikit-image defaults, 7-voxel window, data range 1; ``None`` if an
      axis is shorter than 7 voxels).
    - ``psnr_slice_mean``: mean of per-slice PSNR along the reference's axial axis (the plane rule of
      ``geometry.plane_axis``), as the X-Diffusion paper reports it; constant (empty) reference slices are skipped;
      ``None`` if the axial axis is ambiguous on an oblique grid or every slice is skipped.
    - ``psnr_mask``, ``ssim_mask``: inside ``mask`` (non-zero voxels), else inside ``reference > 0``; the SSIM map is
      averaged over the mask. ``None`` for an empty mask.
    - ``sharpness``: ``sharpness`` (prediction over reference, 1 = as sharp as the truth) inside ``mask``, else
      inside the reference's ``brain_mask`` (on a head with skull that takes in the scalp: give the brain mask);
      the input slices ``input_indices`` along array axis ``input_axis`` and their neighbours are left out (without
      them nothing is left out, and the copied input slices pull the ratio toward 1).
    - ``brain_volume_rel_err``: (pred - ref) / ref of the ``brain_mask`` voxel counts, both thresholded at the Otsu
      threshold of the scaled reference.
    - With both segmentations: ``dice_wt`` (labels 1-3), ``dice_tc`` (1, 3), ``dice_et`` (3; 4 counts as 3), each
      ``None`` when the region is empty in both; ``hd95_*_mm``: MONAI's 95 % Hausdorff distance per region
      (``hausdorff_95``; ``None`` when either is empty); ``tumour_volume_ml_err`` = predicted - reference
      whole-tumour volume; ``centroid_mm`` = physical distance of the whole-tumour centroids (``None`` if either is
      empty).
    """
    inputs = {"prediction": prediction, "mask": mask, "reference segmentation": reference_segmentation,
              "prediction segmentation": prediction_segmentation}
    for name, volume in inputs.items():
        if volume is not None:
            check_same_grid(reference, volume, name)
    _check_finite(reference, "reference")
    _check_finite(prediction, "prediction")
    if (reference_segmentation is None) != (prediction_segmentation is None):
        raise InputError("give both the reference and the prediction segmentation, or neither")

    ref, pred = scale_to_reference(reference.array, prediction.array)
    metrics: dict[str, Optional[float]] = dict.fromkeys(METRIC_KEYS)
    metrics["psnr"] = psnr(ref, pred)
    try:
        slices = _slice_psnr(ref, pred, plane_axis(reference.geometry, "axial"))
    except InputError:  # oblique grid with no clear axial axis: no slice direction to average along
        slices = np.array([np.nan])
    if not np.isnan(slices).all():
        metrics["psnr_slice_mean"] = float(np.nanmean(slices))

    inside = (mask.array != 0) if mask is not None else (reference.array > 0)
    if inside.any():
        metrics["psnr_mask"] = psnr(ref[inside], pred[inside])
    if min(ref.shape) >= SSIM_WINDOW:
        ssim, ssim_map = structural_similarity(ref, pred, data_range=1.0, full=True)
        metrics["ssim"] = float(ssim)
        if inside.any():
            metrics["ssim_mask"] = float(ssim_map[inside].mean())

    threshold = float(threshold_otsu(ref))
    ref_brain_mask = brain_mask(ref, threshold)
    ref_brain = int(ref_brain_mask.sum())
    if ref_brain:
        metrics["brain_volume_rel_err"] = (int(brain_mask(pred, threshold).sum()) - ref_brain) / ref_brain
    if input_axis is not None and not 0 <= int(input_axis) < 3:
        raise InputError(f"input axis {input_axis}: an array axis is 0, 1 or 2")
    metrics["sharpness"] = sharpness(reference.array, prediction.array, mask.array != 0 if mask is not None else ref_brain_mask,
                                     input_axis, input_indices)

    if reference_segmentation is not None and prediction_segmentation is not None:
        metrics.update(tumour_metrics(_labels(reference_segmentation, "reference segmentation"),
                                      _labels(prediction_segmentation, "prediction segmentation"), reference.geometry))
    return metrics


def evaluate_files(
    reference: str | os.PathLike,
    prediction: str | os.PathLike,
    mask: Optional[str | os.PathLike] = None,
    reference_segmentation: Optional[str | os.PathLike] = None,
    prediction_segmentation: Optional[str | os.PathLike] = None,
    uncertainty: Optional[str | os.PathLike] = None,
    input_plane: Optional[str] = None,
    input_indices: Optional[Sequence[int]] = None,
) -> dict[str, Optional[float]]:
    """``evaluate_volumes`` on files, with every grid, NaN and label error naming the offending file; with an
    ``uncertainty`` map, also ``uncertainty_ranking`` (inside the mask, else ``reference > 0``).

    The input slices that sharpness leaves out: ``input_plane`` and ``input_indices`` when given (both, or
    neither), else what the prediction's provenance sidecar records (``Input.axis`` and ``Input.slice_indices``),
    else none."""
    if (reference_segmentation is None) != (prediction_segmentation is None):
        raise InputError("give both --reference-segmentation and --prediction-segmentation, or neither")
    if (input_plane is None) != (not input_indices):
        raise InputError("give both --input-plane and --input-index, or neither (then the prediction's sidecar says)")
    ref = read_volume(reference)
    _check_finite(ref, str(reference))
    if input_plane is not None:
        from .geometry import check_slice_indices

        input_axis = plane_axis(ref.geometry, input_plane)
        given = check_slice_indices(ref.geometry, input_axis, list(input_indices or ()))
    else:
        input_axis, given = recorded_input_slices(prediction, ref.geometry.shape)
    paths = {"prediction": prediction, "mask": mask, "reference_segmentation": reference_segmentation,
             "prediction_segmentation": prediction_segmentation}
    volumes: dict[str, Optional[Volume]] = {role: None for role in paths}
    for role, path in paths.items():
        if path is not None:
            volumes[role] = read_volume(path)
            check_same_grid(ref, volumes[role], str(path))
            if role == "prediction":
                _check_finite(volumes[role], str(path))
            if role.endswith("segmentation"):
                _labels(volumes[role], str(path))
    metrics = evaluate_volumes(ref, **volumes, input_axis=input_axis, input_indices=given)
    if uncertainty is not None:
        spread = read_volume(uncertainty)
        check_same_grid(ref, spread, str(uncertainty))
        _check_finite(spread, str(uncertainty))
        inside = volumes["mask"].array != 0 if volumes["mask"] is not None else None
        metrics.update(uncertainty_ranking(ref, volumes["prediction"], spread, inside))
    return metrics


def recorded_input_slices(prediction: str | os.PathLike, shape: Sequence[int]) -> tuple[Optional[int], list[int]]:
    """(array axis, slice indices) of the input slices that the provenance sidecar beside ``prediction`` records
    (``recon.json`` beside ``recon.nii.gz``; see ``provenance``), or ``(None, [])`` when there is no sidecar or it
    records no input. A sidecar that does not fit the grid is refused by name: it belongs to another volume."""
    from .provenance import sidecar_path

    path = sidecar_path(prediction)
    if not path.is_file():
        return None, []
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: the prediction's sidecar is not readable JSON ({error})") from None
    given = record.get("Input") if isinstance(record, dict) else None
    if not isinstance(given, dict) or given.get("axis") is None or not given.get("slice_indices"):
        return None, []
    try:
        axis, indices = int(given["axis"]), [int(i) for i in given["slice_indices"]]
    except (TypeError, ValueError):
        raise InputError(f"{path}: Input.axis and Input.slice_indices must be integers") from None
    if not 0 <= axis < len(shape) or not all(0 <= i < shape[axis] for i in indices):
        raise InputError(f"{path}: records input slices {indices} on axis {axis}, which do not fit the reference's grid "
                         f"{list(shape)}; is it the sidecar of another volume?")
    return axis, indices


UNCERTAINTY_KEYS = ("uncertainty_spearman", "uncertainty_auroc")


def _shown_keys(metrics: dict[str, Optional[float]]) -> tuple[str, ...]:
    return METRIC_KEYS + tuple(key for key in UNCERTAINTY_KEYS if key in metrics)


def format_json(metrics: dict[str, Optional[float]]) -> str:
    """One JSON object; ``allow_nan=False`` guarantees it parses in strict JSON readers."""
    return json.dumps({key: metrics.get(key) for key in _shown_keys(metrics)}, allow_nan=False)


def format_table(metrics: dict[str, Optional[float]]) -> str:
    """An aligned, human-readable table; ``n/a`` marks a metric that could not be computed."""
    width = max(len(key) for key in _shown_keys(metrics))
    lines = []
    for key in _shown_keys(metrics):
        value = metrics.get(key)
        text = f"{'n/a':>10}" if value is None else f"{value:10.4f} {UNITS.get(key, '')}".rstrip()
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of ``scores`` separating ``positive`` from the rest: the Mann-Whitney U of the
    positives over the pair count (ties count a half; 0.5 = no better than chance, 1 = every positive scores above
    every negative). ``None`` when one class is empty."""
    from scipy.stats import mannwhitneyu

    scores, positive = np.ravel(scores).astype(np.float64), np.ravel(positive).astype(bool)
    count_pos, count_neg = int(positive.sum()), int((~positive).sum())
    if count_pos == 0 or count_neg == 0:
        return None
    return float(mannwhitneyu(scores[positive], scores[~positive], method="asymptotic").statistic / (count_pos * count_neg))


def uncertainty_ranking(reference: Volume, prediction: Volume, uncertainty: Volume, mask: Optional[np.ndarray] = None) -> dict[str, Optional[float]]:
    """Does the per-voxel uncertainty rank the errors? Inside ``mask`` (default ``reference > 0``), with |error| in
    the scaled units of ``evaluate_volumes``:

    - ``uncertainty_spearman``: Spearman rank correlation of uncertainty and |error|;
    - ``uncertainty_auroc``: AUROC of uncertainty for telling voxels whose |error| is above the median from the rest.

    ``None`` where undefined (constant uncertainty or too few voxels). Pass a mask without the given input slices:
    they are exact, and would reward any map that is zero there.
    """
    from scipy.stats import spearmanr

    for name, volume in (("prediction", prediction), ("uncertainty", uncertainty)):
        check_same_grid(reference, volume, name)
    inside = np.asarray(mask, dtype=bool) if mask is not None else reference.array > 0
    ref, pred = scale_to_reference(reference.array, prediction.array)
    error = np.abs(ref - pred)[inside]
    spread = np.asarray(uncertainty.array, dtype=np.float64)[inside]
    result: dict[str, Optional[float]] = {"uncertainty_spearman": None, "uncertainty_auroc": None}
    if error.size < 10 or np.ptp(spread) == 0 or np.ptp(error) == 0:
        return result
    result["uncertainty_spearman"] = float(spearmanr(spread, error).statistic)
    result["uncertainty_auroc"] = auroc(spread, error > np.median(error))
    return result
