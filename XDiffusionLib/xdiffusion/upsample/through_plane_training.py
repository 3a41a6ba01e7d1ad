"""Training `ThroughPlaneNet` on planes of the training subjects' fine scans, thick-sliced by slab averaging.

A training pair is one plane that contains a simulated slice axis (its rows): the fine plane is the target; its rows
averaged over slabs of 2-8 voxels (random phase) are the thick slices; the network's input is what inference computes
from them: the B-spline through the slab centres (nearest value beyond the outer centres) on the fine grid, then the
slab projection. In-plane the output grid keeps the input's voxel centres, where a 3D cubic B-spline reduces to the
1D one along the slice axis, so the 2D computation here is the same as the 3D one of `upsample` (a test checks it).
Only the training split is read (`data.source`); the held-out subjects are never seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..data.loaders import Subject
from ..errors import InputError
from ..side_training import append_row, best_logged, cosine_schedule, optimiser_step, resume_from
from .through_plane import ThroughPlaneNet, context_steps, intensity_scale, plane_inputs

SLAB_VOXELS = (2, 8)  # slab thickness in fine voxels (2-8 mm on 1 mm scans: the clinical thick-slice range)
MAX_SPACING_MM = 1.5  # scans coarser than this are not fine enough to teach detail
PATCH = 128  # rows x columns of a training crop
SKULL_STRIP_SHARE = 0.4  # planes of skull-stripped brains (clinical stacks come both ways)
GAMMA = (0.7, 1.4)  # contrast variety beyond the training scans' own T1 and T2
NOISE_SHARE, NOISE_SIGMA = 0.3, 0.02  # acquisition noise in the fine plane, in normalised units
VALIDATION_PLANES = 48
LAST_WEIGHTS = "through_plane_last"


@dataclass(frozen=True)
class FineVolume:
    """One fine training scan, divided by its `intensity_scale`, float16 to keep several in memory."""

    image: np.ndarray
    brain: np.ndarray
    name: str


def fine_volumes(subjects: Sequence[Subject]) -> list[FineVolume]:
    """Every real image of the subjects at ``MAX_SPACING_MM`` or finer, with its brain mask."""
    volumes = []
    for subject in subjects:
        for modality, volume in sorted(subject.modalities.items()):
            if subject.brain_mask is None or float(np.max(volume.geometry.spacing)) > MAX_SPACING_MM:
                continue
            array = np.maximum(volume.array.astype(np.float32), 0.0)
            volumes.append(FineVolume((array / intensity_scale(array)).astype(np.float16),
                                      subject.brain_mask.array > 0, f"{subject.id}:{modality}"))
    if not volumes:
        raise InputError(f"no training scan at {MAX_SPACING_MM:g} mm or finer with a brain mask")
    return volumes


def bspline_rows(thick: np.ndarray, voxels: int, rows: int) -> np.ndarray:
    """(n, C) slab means -> (rows, C): the cubic B-spline through the slab centres (row ``(voxels - 1) / 2 + i *
    voxels``) on the fine rows, nearest value beyond the outer centres, as `resampling.resample` does in 3D."""
    image = sitk.GetImageFromArray(thick.astype(np.float32))  # x: columns, y: slabs
    image.SetSpacing((1.0, float(voxels)))
    image.SetOrigin((0.0, (voxels - 1) / 2.0))
    reference = sitk.Image([int(thick.shape[1]), int(rows)], sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkBSpline, 0.0,
                                                sitk.sitkFloat32, True))


def thick_plane(fine: np.ndarray, voxels: int, phase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prior, target, row offsets) of a fine plane (rows = the slice axis) cut into slabs of ``voxels`` rows from row
    ``phase``: the slab-projected B-spline, the fine rows it covers, each row's offset from its slab centre."""
    count = (fine.shape[0] - phase) // voxels
    target = fine[phase:phase + count * voxels].astype(np.float32)
    thick = target.reshape(count, voxels, -1).mean(axis=1)
    prior = bspline_rows(thick, voxels, count * voxels)
    prior += np.repeat(thick - prior.reshape(count, voxels, -1).mean(axis=1), voxels, axis=0)  # the slab projection
    offsets = ((np.arange(count * voxels) % voxels) - (voxels - 1) / 2.0) / voxels
    return prior, target, offsets.astype(np.float32)


def patch_crop(array: np.ndarray, top: int, left: int) -> np.ndarray:
    """A PATCH x PATCH training crop from (``top``, ``left``), zero-padded where it runs past the plane's edge."""
    out = np.zeros((PATCH, PATCH), np.float32)
    piece = array[top:top + PATCH, left:left + PATCH]
    out[:piece.shape[0], :piece.shape[1]] = piece
    return out


def offset_crop(offsets: np.ndarray, top: int) -> np.ndarray:
    """The row offsets of a crop from row ``top``, zero on rows past the plane's end (as `patch_crop` pads the image)."""
    out = np.zeros(PATCH, np.float32)
    piece = offsets[top:top + PATCH]
    out[:len(piece)] = piece
    return out


def training_pair(volume: FineVolume, rng: np.random.Generator,
                  context_planes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One crop: network input (3 + 2K, PATCH, PATCH) and the correction it should predict (1, PATCH, PATCH). The
    K neighbouring planes on each side go through the same skull stripping, tone curve, flips and slab cut as the
    plane itself (their noise is their own), as the neighbours of a volume's planes do at inference."""
    axis, columns = rng.permutation(3)[:2]
    stacking = 3 - axis - columns
    extent = np.flatnonzero(volume.brain.any(axis=tuple(a for a in range(3) if a != stacking)))
    index = int(rng.integers(extent[0], extent[-1] + 1))
    steps = context_steps(context_planes)
    if steps and rng.random() < 0.5:
        steps = [-step for step in steps]  # the stacking axis flipped
    chosen = np.clip(index + np.asarray([0, *steps], dtype=np.int64), 0, volume.image.shape[stacking] - 1)
    fine = np.moveaxis(volume.image, (stacking, axis, columns), (0, 1, 2))[chosen].astype(np.float32)
    if rng.random() < SKULL_STRIP_SHARE:
        fine = fine * np.moveaxis(volume.brain, (stacking, axis, columns), (0, 1, 2))[chosen]
    fine = np.clip(fine, 0.0, None) ** rng.uniform(*GAMMA)
    if rng.random() < NOISE_SHARE:
        fine = np.abs(fine + rng.normal(0.0, rng.uniform(0.0, NOISE_SIGMA), fine.shape))
    fine = fine[:, ::-1] if rng.random() < 0.5 else fine
    fine = fine[:, :, ::-1] if rng.random() < 0.5 else fine
    voxels = int(rng.integers(SLAB_VOXELS[0], SLAB_VOXELS[1] + 1))
    count, rows, width = fine.shape
    side_by_side = np.ascontiguousarray(fine.transpose(1, 0, 2).reshape(rows, count * width))  # one B-spline for all
    prior, target, offsets = thick_plane(side_by_side, voxels, int(rng.integers(0, voxels)))
    prior, target = (a.reshape(a.shape[0], count, width).transpose(1, 0, 2) for a in (prior, target))
    top = int(rng.integers(0, max(1, prior.shape[1] - PATCH + 1)))
    left = int(rng.integers(0, max(1, prior.shape[2] - PATCH + 1)))
    prior_crops = np.stack([patch_crop(plane, top, left) for plane in prior])
    target_crop = patch_crop(target[0], top, left)
    offset_rows = offset_crop(offsets, top)
    neighbours = prior_crops[None, 1:] if context_planes else None
    inputs = plane_inputs(prior_crops[:1], offset_rows, float(voxels), neighbours)[0]
    return inputs, (target_crop - prior_crops[0])[None]


class PlanePairs(torch.utils.data.Dataset):
    """A seed-deterministic stream of pairs (item i is always the same pair)."""

    def __init__(self, volumes: Sequence[FineVolume], seed: int = 0, length: int = 10**9, context_planes: int = 0) -> None:
        self.volumes, self.seed, self.length, self.context_planes = list(volumes), seed, length, context_planes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        inputs, target = training_pair(self.volumes[int(rng.integers(0, len(self.volumes)))], rng, self.context_planes)
        return torch.from_numpy(inputs), torch.from_numpy(target)


@torch.inference_mode()
def psnr_gain(net: ThroughPlaneNet, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """PSNR of prior + correction over that of the prior alone, in dB, from the squared errors pooled over all pairs
    (a mean of per-crop dB would let a nearly empty crop, where the prior is already exact, swamp the rest)."""
    net.eval()
    inputs = torch.stack([p[0] for p in pairs])
    truth = torch.stack([p[1] for p in pairs])  # target - prior
    predicted = torch.cat([net(inputs[i:i + 8]) for i in range(0, len(inputs), 8)])
    before, after = truth.pow(2).sum(), (truth - predicted).pow(2).sum()
    return float(10.0 * torch.log10(before.clamp_min(1e-12) / after.clamp_min(1e-12)))


def train_through_plane(net: ThroughPlaneNet, volumes: Sequence[FineVolume], output_dir: Path, steps: int,
                        batch_size: int = 8, lr: float = 1e-3, validate_every: int = 200, max_minutes: Optional[float] = None,
                        start_step: int = 0, seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> int:
    """Squared error on the correction (its minimiser is the conditional mean; under L1 it was the median, which for
    detail of unpredictable sign is zero: 1,200 steps stayed at the B-spline's PSNR), AdamW with a cosine schedule; the best-validating weights go to
    ``output_dir/through_plane`` (diffusers layout), the last to ``through_plane_last``, every validation to
    ``output_dir/through_plane_metrics.csv``. Returns the step reached (``max_minutes`` may stop it early)."""
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = cosine_schedule(optimiser, steps, start_step)
    context = int(net.config.context_planes)
    loader = iter(torch.utils.data.DataLoader(PlanePairs(volumes, seed, context_planes=context), batch_size=batch_size,
                                              sampler=range(start_step * batch_size, 10**9)))
    validation = [PlanePairs(volumes, seed + 1, context_planes=context)[i] for i in range(VALIDATION_PLANES)]
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "through_plane_metrics.csv"
    if not log.is_file():  # where the run starts from (0 dB for fresh weights; widened weights keep their gain)
        append_row(log, {"step": start_step, "loss": "", "val_psnr_gain_db": psnr_gain(net, validation), "seconds": 0})
    best = best_logged(log, "val_psnr_gain_db", -np.inf)
    started, step, losses = time.monotonic(), start_step, []
    while step < steps:
        net.train()
        inputs, target = next(loader)
        losses.append(optimiser_step(net, torch.nn.functional.mse_loss(net(inputs), target), optimiser, schedule))
        step += 1
        out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
        if step % validate_every == 0 or step == steps or out_of_time:
            gain = psnr_gain(net, validation)
            append_row(log, {"step": step, "loss": float(np.mean(losses)), "val_psnr_gain_db": gain,
                          "seconds": round(time.monotonic() - started, 1)})
            losses = []
            if progress is not None:
                progress(f"through-plane net step {step}: validation gain over the B-spline {gain:.2f} dB")
            if gain > best:
                best = gain
                net.save_pretrained(output_dir / "through_plane")
            net.save_pretrained(output_dir / LAST_WEIGHTS)
        if out_of_time:
            break
    return step


def widened(net: ThroughPlaneNet, context_planes: int) -> ThroughPlaneNet:
    """``net`` reading ``context_planes`` neighbours each side (at least as many as it reads now): the new input
    channels start at zero weight, so the widened network computes exactly what ``net`` did, and training adds what
    the neighbours tell."""
    if context_planes < int(net.config.context_planes):
        raise InputError(f"cannot widen a network of {net.config.context_planes} context planes to {context_planes}")
    wider = ThroughPlaneNet(features=net.config.features, context_planes=context_planes)
    state = wider.state_dict()
    for name, tensor in net.state_dict().items():
        if state[name].shape == tensor.shape:
            state[name] = tensor.clone()
        else:  # the first convolution: (out, in, kh, kw), the new inputs appended last
            state[name] = torch.zeros_like(state[name])
            state[name][:, :tensor.shape[1]] = tensor
    wider.load_state_dict(state)
    return wider


def resume_point(output_dir: Path) -> tuple[Optional[ThroughPlaneNet], int]:
    """The last saved weights and their step, or (None, 0) for a fresh run."""
    return resume_from(output_dir / "through_plane_metrics.csv", output_dir / LAST_WEIGHTS, ThroughPlaneNet)
