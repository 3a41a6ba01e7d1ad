"""`xdiffusion demo`: the shipped sample brain, rebuilt from one axial slice through its tumour with the shipped model.

The sample comes from the validation source (never trained on), so the demo shows generalisation, not memory. The
input is the axial slice where the tumour is largest, and its outline on that slice (the sample's own labels there)
is given as a radiologist would draw it: every model turns it into 3D tumour labels (`reconstruct.tapered_input_labels`),
scored against the sample's full labels. The shipped-model regression keeps the middle axial slice
(`score_on_sample`), where the reference was recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .evaluate import WHOLE_TUMOUR, evaluate_volumes
from .figures import comparison_figure
from .geometry import plane_axis
from .io import Volume, atomic_output, read_volume
from .label_baselines import input_labels, largest_cross_section
from .pipeline import ProgressCallback, XDiffusionPipeline
from .provenance import sidecar_path, write_reconstruction
from .reconstruct import reconstruct, select_slices

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_IMAGE = SAMPLE_DIR / "sample_t1.nii.gz"
SAMPLE_SEGMENTATION = SAMPLE_DIR / "sample_t1_seg.nii.gz"
DEMO_PLANE = "axial"


def score_on_sample(pipeline: XDiffusionPipeline, **sampling) -> dict:
    """`evaluate_volumes` of the model's reconstruction of the sample from its middle axial slice (the shipped-model
    regression test and its reference recording use exactly this)."""
    reference = read_volume(SAMPLE_IMAGE)
    result = reconstruct(select_slices(reference, DEMO_PLANE), "xdiffusion", pipeline, "t1", **sampling)
    return evaluate_volumes(reference, result.image)


def run_demo(output_dir: Path, pipeline: XDiffusionPipeline, sampling: dict, progress: Optional[ProgressCallback] = None,
             model_dir: Optional[Path] = None, warn: Optional[Callable[[str], None]] = None) -> dict[str, Path]:
    """Reconstruct the sample from the slice through its tumour, with the tumour's outline there; score the volume
    and the tumour labels against the truth (and the extrude and atlas baselines), and write everything: the volumes
    with their provenance sidecars (``model_dir`` recorded there), the metrics, the figure. Each fallback the
    reconstruction took goes to ``warn``."""
    started = time.monotonic()
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = read_volume(SAMPLE_IMAGE)
    reference_segmentation = read_volume(SAMPLE_SEGMENTATION)
    axis = plane_axis(reference_segmentation.geometry, DEMO_PLANE)
    inputs = select_slices(reference, DEMO_PLANE, [largest_cross_section(reference_segmentation.array, axis)])
    outline = list(input_labels(reference_segmentation, inputs.axis, inputs.indices))  # as drawn on the input slice
    result = reconstruct(inputs, "xdiffusion", pipeline, "t1", progress, input_labels=outline, **sampling)
    for message in result.warnings if warn is not None else ():
        warn(message)
    baselines = {method: reconstruct(inputs, method).image for method in ("extrude", "atlas")}
    paths = {"volume": output_dir / "reconstruction.nii.gz", "segmentation": output_dir / "reconstruction_seg.nii.gz",
             "uncertainty": output_dir / "uncertainty.nii.gz"}
    write_reconstruction(result, inputs, paths["volume"], paths["segmentation"], paths["uncertainty"], SAMPLE_IMAGE, model_dir,
                         SAMPLE_SEGMENTATION, outline)
    paths["provenance"] = sidecar_path(paths["volume"])  # one beside each volume
    scores = evaluate_volumes(reference, result.image, None, reference_segmentation, result.segmentation)
    metrics = {
        "input": {"plane": DEMO_PLANE, "slice_index": inputs.indices[0], "sample": SAMPLE_IMAGE.name,
                  "labels": f"the sample's labels on the input slice, as drawn there ({SAMPLE_SEGMENTATION.name})"},
        "sampling": {**sampling, "precision": result.sampling["precision"]},
        "xdiffusion": scores,
        "tumour_labels_from": result.labels_from,
        **{method: evaluate_volumes(reference, image) for method, image in baselines.items()},
        "seconds": round(time.monotonic() - started, 1),
        "note": "generated volumes are synthetic: research tool, not for diagnosis",
    }
    paths["metrics"] = output_dir / "metrics.json"
    with atomic_output(paths["metrics"]) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    paths["figure"] = comparison_figure(
        reference, result.image, output_dir / "demo_figure.png", DEMO_PLANE, inputs.indices[0],
        reference_segmentation, result.segmentation, focus=_centroid(reference_segmentation),
        title=f"XDiffusion demo: sample brain from 1 axial slice through the tumour (PSNR {scores['psnr']:.1f} dB, "
              f"atlas {metrics['atlas']['psnr']:.1f}, extrude {metrics['extrude']['psnr']:.1f}) - generated, not for diagnosis\n"
              f"tumour labels: its outline on that slice tapered into 3D, Dice WT {scores['dice_wt']:.2f} against the "
              f"sample's labels",
    )
    return paths


def _centroid(labels: Volume) -> tuple[int, int, int]:
    """The whole tumour's centre voxel, so that the figure's other planes cut through it."""
    return tuple(int(round(c)) for c in np.argwhere(np.isin(np.asarray(labels.array), WHOLE_TUMOUR)).mean(axis=0))
