"""The blurred-atlas baseline, and the choice of its blur on training subjects only.

The atlas guess (`xdiffusion.atlas`) carries a template's sharp anatomy to places where the subject's anatomy is
not: every misplaced edge costs PSNR twice. Blurring it trades detail for a smaller error, and so is the baseline a
model must beat to show that its detail is right, not just present. The blur is an isotropic Gaussian of
``sigma_mm`` (per axis sigma_mm / spacing voxels); the input slices are pasted back afterwards, exactly as every
method's output carries them.

The sigma is chosen here, once, on augmented variants of the TRAINING subjects of the ``individuals`` subject set
(T1 images of the templates and the individuals; the nibabel crop, which holds no whole brain, left out), the same
kind of volumes the sampling defaults were chosen on (`scripts/choose_sampling_defaults.py`): never on a held-out
subject. The criterion is the mean whole-volume PSNR over the variants and the three planes, one middle slice each.

    python benchmarks/atlas_blur.py            # writes benchmarks/results/individuals/atlas_blur.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xdiffusion.evaluate import evaluate_volumes  # noqa: E402
from xdiffusion.io import Volume, atomic_output  # noqa: E402
from xdiffusion.reconstruct import InputSlices, _paste_inputs, reconstruct, select_slices  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "individuals"
CHOICE_FILE = RESULTS_DIR / "atlas_blur.json"
CANDIDATES_MM = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0)
PLANES = ("axial", "coronal", "sagittal")
NOT_WHOLE_BRAINS = ("nibabel_anatomical",)  # a small central crop: no whole brain to register a template to


def blur(image: Volume, inputs: InputSlices, sigma_mm: float) -> Volume:
    """``image`` blurred by an isotropic Gaussian of ``sigma_mm``, the input slices pasted back bit-exact."""
    if sigma_mm < 0:
        raise ValueError(f"blur sigma {sigma_mm} mm: must not be negative")
    array = np.asarray(image.array, dtype=np.float32)
    if sigma_mm > 0:
        array = ndimage.gaussian_filter(array, sigma_mm / np.asarray(image.geometry.spacing, dtype=np.float64), mode="nearest")
    return image.with_array(_paste_inputs(array, inputs))


def training_variants(count_per_subject: int = 2, seed: int = 11, work_side: int = 128) -> list[tuple[str, Volume, np.ndarray]]:
    """(name, T1 image, brain mask) of augmented variants of the ``individuals`` set's training subjects: each a new
    warp and skull choice (`data.validation_split.validation_variant`, real T1 only), seeded per subject and variant."""
    from dataclasses import replace

    from xdiffusion.data.fetch import default_cache_dir
    from xdiffusion.data.loaders import load_training_subjects
    from xdiffusion.data.validation_split import validation_variant

    subjects = [replace(s, modalities={"t1": s.modalities["t1"]}) for s in load_training_subjects(default_cache_dir(), "train", "individuals")
                if "t1" in s.modalities and s.id not in NOT_WHOLE_BRAINS]
    found = []
    for number, subject in enumerate(subjects):
        for variant in range(count_per_subject):
            rng = np.random.default_rng([seed, number, variant])
            _, image, mask, grid = validation_variant(subject, rng, work_side, synthetic_share=0.0)
            found.append((f"{subject.id}~{variant}", grid.with_array(image), np.asarray(mask) > 0))
    return found


def choose_sigma(volumes: Sequence[tuple[str, Volume, np.ndarray]], candidates: Sequence[float] = CANDIDATES_MM,
                 planes: Sequence[str] = PLANES, log=print) -> dict:
    """Score every candidate sigma on every volume and plane (one middle slice); the best mean whole PSNR wins
    (ties: the smaller sigma)."""
    rows = {float(sigma): [] for sigma in candidates}
    started = time.perf_counter()
    for name, image, mask in volumes:
        for plane in planes:
            inputs = select_slices(image, plane)
            guess = reconstruct(inputs, "atlas").image
            for sigma in rows:
                metrics = evaluate_volumes(image, blur(guess, inputs, sigma), image.with_array(mask.astype(np.uint8)),
                                           input_axis=inputs.axis, input_indices=inputs.indices)
                rows[sigma].append({"volume": name, "plane": plane, **{k: metrics[k] for k in ("psnr", "psnr_mask", "ssim", "sharpness")}})
            log(f"{name} {plane}: " + ", ".join(f"{s:g} mm {rows[s][-1]['psnr']:.2f} dB" for s in rows))
    summary = [{"sigma_mm": sigma, "n": len(scores), **{key: float(np.mean([r[key] for r in scores if r[key] is not None]))
                                                        for key in ("psnr", "psnr_mask", "ssim", "sharpness")}}
               for sigma, scores in rows.items()]
    best = max(summary, key=lambda row: (round(row["psnr"], 6), -row["sigma_mm"]))
    return {"chosen_sigma_mm": best["sigma_mm"], "criterion": "mean whole-volume PSNR", "candidates": summary,
            "per_volume": {str(s): r for s, r in rows.items()}, "seconds": round(time.perf_counter() - started, 1)}


def load_choice(path: Path = CHOICE_FILE) -> Optional[float]:
    """The recorded sigma (mm), or None when it was never chosen."""
    return float(json.loads(path.read_text())["chosen_sigma_mm"]) if path.exists() else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=2, help="variants per training subject")
    parser.add_argument("--work-side", type=int, default=128, help="longest side of the variants' grid (voxels)")
    parser.add_argument("--out", type=Path, default=CHOICE_FILE)
    args = parser.parse_args(argv)
    volumes = training_variants(args.variants, work_side=args.work_side)
    choice = choose_sigma(volumes)
    choice["volumes"] = (f"{len(volumes)} augmented T1 variants of the individuals set's training subjects "
                         f"({', '.join(sorted({n.split('~')[0] for n, _, _ in volumes}))}; seed 11, work side {args.work_side}), "
                         "one middle slice per plane; no held-out subject")
    from common import machine

    choice["machine"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out) as temporary:
        temporary.write_text(json.dumps(choice, indent=1, allow_nan=False) + "\n")
    print(f"chosen sigma {choice['chosen_sigma_mm']:g} mm; written to {args.out}")


if __name__ == "__main__":
    main()
