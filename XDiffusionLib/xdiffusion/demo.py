"""`xdiffusion demo`: the shipped sample brain, rebuilt from its middle axial slice with the shipped model.

The sample comes from the validation source (never trained on), so the demo shows generalisation, not memory. A
model whose card says it does not segment tumours (`segments_tumours: false`) gets no label file, no Dice and no label
overlay: its labels would be empty, and an empty segmentation is not a result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from .evaluate import TUMOUR_KEYS, evaluate_volumes
from .figures import comparison_figure
from .io import Volume, atomic_output, read_volume
from .model_card import segments_tumours
from .pipeline import ProgressCallback, XDiffusionPipeline
from .provenance import sidecar_path, write_reconstruction
from .reconstruct import reconstruct, select_slices

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_IMAGE = SAMPLE_DIR / "sample_t1.nii.gz"
SAMPLE_SEGMENTATION = SAMPLE_DIR / "sample_t1_seg.nii.gz"
DEMO_PLANE = "axial"
TUMOUR_METRICS = TUMOUR_KEYS  # left out for a model that does not segment
NO_SEGMENTATION = "none: the model card says segments_tumours: false (its labels would be empty)"


def score_on_sample(pipeline: XDiffusionPipeline, **sampling) -> dict:
    """`evaluate_volumes` of the model's reconstruction of the sample from the demo's slice (the shipped-model
    regression test and its reference recording use exactly this)."""
    reference = read_volume(SAMPLE_IMAGE)
    result = reconstruct(select_slices(reference, DEMO_PLANE), "xdiffusion", pipeline, "t1", **sampling)
    return evaluate_volumes(reference, result.image)


def run_demo(output_dir: Path, pipeline: XDiffusionPipeline, sampling: dict, progress: Optional[ProgressCallback] = None,
             model_dir: Optional[Path] = None, warn: Optional[Callable[[str], None]] = None) -> dict[str, Path]:
    """Reconstruct the sample, score it against its truth (and the extrude and atlas baselines), and write everything:
    the volumes with their provenance sidecars (``model_dir`` recorded there), the metrics, the figure. Each fallback
    the reconstruction took goes to ``warn``."""
    started = time.monotonic()
    segments = segments_tumours(pipeline.model_card) is not False  # a card older than the field: labels as before
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = read_volume(SAMPLE_IMAGE)
    reference_segmentation = read_volume(SAMPLE_SEGMENTATION)
    inputs = select_slices(reference, DEMO_PLANE)
    result = reconstruct(inputs, "xdiffusion", pipeline, "t1", progress, **sampling)
    for message in result.warnings if warn is not None else ():
        warn(message)
    baselines = {method: reconstruct(inputs, method).image for method in ("extrude", "atlas")}
    paths = {"volume": output_dir / "reconstruction.nii.gz", "segmentation": output_dir / "reconstruction_seg.nii.gz",
             "uncertainty": output_dir / "uncertainty.nii.gz"}
    if not segments:
        unwritten = paths.pop("segmentation")
        for stale in (unwritten, sidecar_path(unwritten)):  # an earlier run's labels must not pass for this run's
            stale.unlink(missing_ok=True)
    write_reconstruction(result, inputs, paths["volume"], paths.get("segmentation"), paths["uncertainty"], SAMPLE_IMAGE, model_dir)
    paths["provenance"] = sidecar_path(paths["volume"])  # one beside each volume
    metrics = {
        "input": {"plane": DEMO_PLANE, "slice_index": inputs.indices[0], "sample": SAMPLE_IMAGE.name},
        "sampling": sampling,
        "xdiffusion": _scores(reference, result.image, reference_segmentation, result.segmentation if segments else None),
        **{method: evaluate_volumes(reference, image) for method, image in baselines.items()},
        "seconds": round(time.monotonic() - started, 1),
        "note": "generated volumes are synthetic: research tool, not for diagnosis",
    }
    if not segments:
        metrics["segmentation"] = NO_SEGMENTATION
    paths["metrics"] = output_dir / "metrics.json"
    with atomic_output(paths["metrics"]) as temporary:
        temporary.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    paths["figure"] = comparison_figure(
        reference, result.image, output_dir / "demo_figure.png", DEMO_PLANE, inputs.indices[0],
        reference_segmentation, result.segmentation if segments else None,
        title=f"XDiffusion demo: sample brain from 1 axial slice (PSNR {metrics['xdiffusion']['psnr']:.1f} dB, "
              f"atlas {metrics['atlas']['psnr']:.1f}, extrude {metrics['extrude']['psnr']:.1f}) - generated, not for diagnosis"
              + ("" if segments else "\ntumour shown on the reference only: this model does not segment tumours"),
    )
    return paths


def _scores(reference: Volume, image: Volume, reference_segmentation: Volume, segmentation: Optional[Volume]) -> dict:
    """The reconstruction's metrics; tumour agreement only for a model that segments (no Dice of empty labels)."""
    if segmentation is None:
        scores = evaluate_volumes(reference, image)
        return {key: value for key, value in scores.items() if key not in TUMOUR_METRICS}
    return evaluate_volumes(reference, image, None, reference_segmentation, segmentation)
