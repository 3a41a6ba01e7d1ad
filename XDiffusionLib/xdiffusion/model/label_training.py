"""Training the tumour label network (`label_net.TumourLabelNet`) on slices of lesion volumes.

A lesion volume is a training subject warped (shape variety) with a synthetic tumour painted in (`data.tumour`,
the training recipe; the evaluation's lesions come from a recipe this module never sees). Each sample is one pair of
slices along a random axis: an input slice through the tumour and a target slice at a signed distance from it.

The reconstructed slice the network reads at inference may or may not show the tumour (a model drawing it, or an
early one that does not), so the target image it sees in training is the healthy slice blended towards the painted one
by a random weight and blurred: it learns to use the image where it shows the tumour and the input labels' shape where
it does not. A share of samples are segmentations of the input slice itself (no labels given), and a share of the
given input labels are eroded or dilated, as labels found by the network or drawn by hand are.

Samples are whole slices (not crops: the network's instance normalisation then sees what it sees at inference), of
volumes brought to several work grids (1-1.5 mm: pixel sizes vary, millimetres stay the unit of the distance and of
the ellipsoid guess), and a share of the targets lie anywhere along the axis, as every output slice is labelled.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from ..data.loaders import Subject
from ..data.synthesis import augment_subject, downsample
from ..data.tumour import paint_tumour
from ..errors import InputError
from ..evaluate import dice
from ..label_baselines import ellipsoid_sections
from ..model_space import IntensityScale
from .label_net import TumourLabelNet, label_net_inputs

SEGMENT_SHARE = 0.25  # samples that segment the input slice (no labels given)
PERTURB_SHARE = 0.3  # given labels eroded or dilated by 1-2 pixels
LARGEST_SHARE = 0.5  # input slices at the tumour's largest cross-section (the evaluation's and a user's choice)
ANYWHERE_SHARE = 0.2  # targets anywhere along the axis; the rest within the tumour's extent + MARGIN_MM
MARGIN_MM = 12.0
SIDE = 224  # slices are padded with background to SIDE x SIDE to batch them (the largest work grid)
WORK_SIDES = (160, 192, 224)
LAST_WEIGHTS = "label_net_last"


@dataclass(frozen=True)
class LesionVolume:
    """One warped subject with a painted tumour, float16 to keep dozens in memory."""

    healthy: np.ndarray
    painted: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def build_lesion_volumes(subjects: Sequence[Subject], variants: int, work_sides: Sequence[int] = WORK_SIDES, seed: int = 0,
                         skull_strip_share: float = 0.4, progress: Optional[Callable[[str], None]] = None) -> list[LesionVolume]:
    """``variants`` lesion volumes per subject with a real image and a brain mask, deterministic in ``seed``, each on
    a work grid of one of ``work_sides`` voxels."""
    volumes = []
    for number, subject in enumerate(subjects):
        if subject.brain_mask is None or not subject.modalities:
            continue
        for variant in range(variants):
            rng = np.random.default_rng([seed, number, variant, 14])
            modality = str(rng.choice(sorted(subject.modalities)))
            work_side = int(rng.choice(work_sides))
            image = downsample(subject.modalities[modality], work_side)
            mask = downsample(subject.brain_mask, work_side, labels=True).array > 0
            array = image.array.astype(np.float32) * (mask if rng.random() < skull_strip_share else 1.0)
            warped, warped_labels = augment_subject({"image": array}, {"brain": mask.astype(np.uint8)}, rng, image.geometry.spacing)
            healthy = np.maximum(warped["image"], 0.0)
            brain = warped_labels["brain"] > 0
            if brain.sum() < 1000:
                continue
            painted, labels = paint_tumour(healthy, brain, modality if modality in ("t1", "t2") else "t1", rng, image.geometry.spacing)
            if labels.any():
                volumes.append(LesionVolume(healthy.astype(np.float16), painted.astype(np.float16), labels.astype(np.uint8),
                                            tuple(float(s) for s in image.geometry.spacing)))
        if progress is not None:
            progress(f"lesion volumes: {subject.id} ready")
    if not volumes:
        raise InputError("no lesion volumes: the training subjects need an image and a brain mask")
    return volumes


def _perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each label region eroded or dilated by 1-2 pixels (nesting order kept: oedema, then core, then enhancing)."""
    iterations = int(rng.integers(1, 3))
    grow = rng.random() < 0.5
    out = np.zeros_like(labels)
    for value in (2, 3, 1):
        region = labels == value
        region = ndimage.binary_dilation(region, iterations=iterations) if grow else ndimage.binary_erosion(region, iterations=iterations)
        out[region] = value
    return out


def _pad(array: np.ndarray, value: float, side: int) -> np.ndarray:
    """The last two axes centre-padded (or cropped) to ``side``."""
    for axis in (-2, -1):
        size = array.shape[axis]
        if size > side:
            array = np.take(array, range((size - side) // 2, (size - side) // 2 + side), axis=axis)
        elif size < side:
            pads = [(0, 0)] * array.ndim
            pads[axis] = ((side - size) // 2, side - size - (side - size) // 2)
            array = np.pad(array, pads, constant_values=value)
    return array


def label_pair(volume: LesionVolume, rng: np.random.Generator, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """One training pair: network input (10, side, side) and target labels (side, side) int64."""
    axis = int(rng.integers(0, 3))
    labels = np.moveaxis(volume.labels, axis, 0)
    areas = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    through = np.flatnonzero(areas)
    source = int(np.argmax(areas)) if rng.random() < LARGEST_SHARE else int(rng.choice(through))
    healthy, painted = (np.moveaxis(v, axis, 0) for v in (volume.healthy, volume.painted))  # float16 views
    input_image = painted[source].astype(np.float32)
    scale = IntensityScale.from_slices([input_image]) if input_image.max() > 0 else IntensityScale(1.0)
    spacing = volume.spacing[axis]
    guess = None
    if rng.random() < SEGMENT_SHARE:
        target, given = source, None
    else:
        reach = int(np.ceil(MARGIN_MM / spacing))
        low, high = (0, labels.shape[0] - 1) if rng.random() < ANYWHERE_SHARE else \
            (max(0, through[0] - reach), min(labels.shape[0] - 1, through[-1] + reach))
        target = int(rng.integers(low, high + 1))
        given = _perturb(labels[source], rng) if rng.random() < PERTURB_SHARE else labels[source]
        in_plane = np.delete(np.asarray(volume.spacing, np.float64), axis)
        guess = ellipsoid_sections(given, in_plane, spacing, [(target - source) * spacing])[0]
    weight = 1.0 if given is None else float(rng.choice([0.0, rng.uniform(0, 1), 1.0]))
    shown = healthy[target].astype(np.float32) + weight * (painted[target].astype(np.float32) - healthy[target])
    if given is not None:
        shown = ndimage.gaussian_filter(shown, float(rng.uniform(0.0, 2.0)))
    inputs = label_net_inputs(scale.normalise(shown), scale.normalise(input_image), given, (target - source) * spacing,
                              guess)
    fill = [-1.0, -1.0, 0.0, 0.0, 0.0, float(inputs[5, 0, 0]), float(inputs[6, 0, 0]), 0.0, 0.0, 0.0]
    padded = np.stack([_pad(channel, value, side) for channel, value in zip(inputs, fill)])  # background, constants, no labels
    return padded.astype(np.float32), _pad(labels[target], 0, side).astype(np.int64)


class LabelPairs(torch.utils.data.Dataset):
    """A seed-deterministic stream of pairs over lesion volumes (item i is always the same pair)."""

    def __init__(self, volumes: Sequence[LesionVolume], seed: int = 0, length: int = 10**9, side: int = SIDE) -> None:
        self.volumes, self.seed, self.length, self.side = list(volumes), seed, length, side

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        inputs, target = label_pair(self.volumes[int(rng.integers(0, len(self.volumes)))], rng, self.side)
        return torch.from_numpy(inputs), torch.from_numpy(target)


def dice_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, Optional[float]]:
    """Whole-tumour, tumour-core and enhancing Dice pooled over a batch; None where the truth lacks the region."""
    regions = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}
    scores: dict[str, Optional[float]] = {}
    for name, values in regions.items():
        a, b = np.isin(prediction, values), np.isin(truth, values)
        scores[name] = dice(a, b) if b.any() else None
    return scores


def train_label_net(net: TumourLabelNet, train_volumes: Sequence[LesionVolume], validation_volumes: Sequence[LesionVolume],
                    output_dir: Path, steps: int, batch_size: int = 8, lr: float = 1e-3, validate_every: int = 250,
                    max_minutes: Optional[float] = None, start_step: int = 0, seed: int = 0, side: int = SIDE,
                    progress: Optional[Callable[[str], None]] = None) -> int:
    """Dice + cross-entropy (rare tumour pixels count), AdamW; the best-validating weights are saved to
    ``output_dir/label_net`` (diffusers layout) and every validation appended to ``output_dir/label_metrics.csv``.
    Returns the step reached (a ``max_minutes`` budget may stop it early)."""
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps), eta_min=lr * 0.05)
    for _ in range(start_step):
        schedule.step()
    loader = iter(torch.utils.data.DataLoader(LabelPairs(train_volumes, seed, length=10**9, side=side), batch_size=batch_size,
                                              sampler=range(start_step * batch_size, 10**9)))
    validation = [LabelPairs(validation_volumes, seed + 1, side=side)[i] for i in range(64)]
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "label_metrics.csv"
    best = _best_logged(log)
    started = time.monotonic()
    step = start_step
    while step < steps:
        net.train()
        inputs, target = next(loader)
        loss = loss_function(net(inputs), target[:, None])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        step += 1
        out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
        if step % validate_every == 0 or step == steps or out_of_time:
            scores = evaluate_label_net(net, validation)
            row = {"step": step, "loss": loss.item(), **{f"dice_{k}": v for k, v in scores.items()}}
            _append(log, row)
            if progress is not None:
                progress(f"label net step {step}: loss {loss.item():.3f}, Dice WT {scores['wt']}")
            if scores["wt"] is not None and scores["wt"] > best:
                best = scores["wt"]
                net.save_pretrained(output_dir / "label_net")
            net.save_pretrained(output_dir / LAST_WEIGHTS)  # what a resumed run continues from
        if out_of_time:
            break
    return step


@torch.inference_mode()
def evaluate_label_net(net: TumourLabelNet, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Optional[float]]:
    net.eval()
    inputs = torch.stack([p[0] for p in pairs])
    truth = torch.stack([p[1] for p in pairs]).numpy()
    prediction = torch.cat([net(inputs[i:i + 16]).argmax(1) for i in range(0, len(inputs), 16)]).numpy()
    return dice_scores(prediction, truth)


def resume_point(output_dir: Path) -> tuple[TumourLabelNet | None, int]:
    """The last saved weights and the step they were saved at, or (None, 0) for a fresh run."""
    log, weights = output_dir / "label_metrics.csv", output_dir / LAST_WEIGHTS
    if not (log.is_file() and (weights / "config.json").is_file()):
        return None, 0
    with log.open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    return TumourLabelNet.from_pretrained(weights, use_safetensors=True), max(steps, default=0)


def _best_logged(log: Path) -> float:
    if not log.is_file():
        return -1.0
    with log.open() as handle:
        values = [float(row["dice_wt"]) for row in csv.DictReader(handle) if row.get("dice_wt") not in (None, "", "None")]
    return max(values, default=-1.0)


def _append(log: Path, row: dict) -> None:
    new = not log.is_file()
    with log.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
