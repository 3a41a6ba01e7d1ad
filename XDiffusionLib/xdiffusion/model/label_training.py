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
from ..data.tumour import ENHANCING, NECROTIC, OEDEMA, paint_tumour
from ..errors import InputError
from ..evaluate import dice
from ..label_baselines import ellipsoid_sections
from ..model_space import IntensityScale
from ..side_training import append_row, best_logged, cosine_schedule, optimiser_step, resume_from
from .label_net import GIVEN_CHANNEL, GUESS_CHANNELS, TumourLabelNet, label_net_inputs

SEGMENT_SHARE = 0.25  # samples that segment the input slice (no labels given)
PERTURB_SHARE = 0.3  # given labels eroded or dilated by 1-2 pixels
LARGEST_SHARE = 0.5  # input slices at the tumour's largest cross-section (the evaluation's and a user's choice)
ANYWHERE_SHARE = 0.2  # targets anywhere along the axis; the rest within the tumour's extent + MARGIN_MM
MARGIN_MM = 12.0
SIDE = 224  # slices are padded with background to SIDE x SIDE to batch them (the largest work grid)
WORK_SIDES = (160, 192, 224)
LAST_WEIGHTS = "label_net_last"

CLEAN_SHARE = 0.25  # pairs left as painted: the recipe's look stays one of the looks seen
LESION_LOOK_SHARE = 0.8  # of the other pairs, those whose tumour regions get new intensities
SCAN_LOOK_SHARE = 0.6  # of the other pairs, those whose whole slice gets a new contrast
REGION_CONTRAST = 2.8  # a region's intensity is up to this factor darker or brighter than the tissue around it
NECROSIS_WITH_OEDEMA = 0.7  # necrosis darkens or brightens as oedema does (both hold water), else the other way (FLAIR)
INFILTRATING_SHARE = 0.5  # a region scales the tissue it lies in (keeps that texture), else replaces it (its own)
REGION_TEXTURE = (0.0, 0.25)  # relative amplitude of a replacing region's texture: uniform to mottled
TEXTURE_SIGMA_PX = (0.5, 3.0)  # grain of that texture: fine to blotchy
EDGE_SIGMA_PX = (0.3, 2.5)  # blur of a region's outer border: sharp to diffuse (oedema fades into tissue)
SURROUND_PX = 4  # the tissue a region's contrast is relative to: the whole tumour's slice section grown by this
GAMMA = (0.6, 1.7)  # the slice's tone curve: grey-white contrast widened or narrowed
INVERT_SHARE = 0.1  # T1-like to T2-like: dark fluid turns bright and bright fluid dark
INVERT_FLOOR = 0.1  # of the bright level: above it (holes filled) is the head that an inversion turns over
BIAS_LOG_AMPLITUDE = (0.0, 0.35)  # a smooth multiplicative field (coil sensitivity), up to about 1.4x across the slice
NOISE = (0.0, 0.04)  # Rician noise, sigma as a share of the slice's bright level (low- to high-noise protocols)
BRIGHT_PERCENTILE = 99.5  # the slice's bright level, as `IntensityScale` takes it
BACKGROUND_FLOOR = 1e-3  # of the bright level: below it a pixel is background, which a new contrast leaves alone


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


@dataclass(frozen=True)
class LesionLook:
    """New intensities for the tumour regions of one pair (the same on its input and target slices)."""

    factors: dict[int, float]  # per region, relative to the tissue around (infiltrating: to the tissue underneath)
    infiltrating: dict[int, bool]
    reference: float  # median healthy intensity around the tumour on the input slice
    texture: float
    texture_sigma: float
    edge_sigma: float

    @classmethod
    def draw(cls, rng: np.random.Generator, healthy: np.ndarray, labels: np.ndarray) -> "LesionLook":
        """Oedema darker or brighter at random, necrosis mostly the same way, enhancement its own way; each by a
        log-uniform factor up to ``REGION_CONTRAST`` (near-iso included)."""
        oedema_sign = rng.choice([-1.0, 1.0])
        signs = {OEDEMA: oedema_sign, NECROTIC: oedema_sign * (1.0 if rng.random() < NECROSIS_WITH_OEDEMA else -1.0),
                 ENHANCING: rng.choice([-1.0, 1.0])}
        factors = {region: float(np.exp(sign * rng.uniform(0.0, np.log(REGION_CONTRAST)))) for region, sign in signs.items()}
        around = ndimage.binary_dilation(labels > 0, iterations=SURROUND_PX)
        values = healthy[around & (healthy > 0)]
        return cls(factors, {region: bool(rng.random() < INFILTRATING_SHARE) for region in signs},
                   float(np.median(values)) if values.size else 0.0, float(rng.uniform(*REGION_TEXTURE)),
                   float(rng.uniform(*TEXTURE_SIGMA_PX)), float(rng.uniform(*EDGE_SIGMA_PX)))

    def apply(self, painted: np.ndarray, healthy: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The painted slice with each region (outer first, so inner ones overwrite the blurred edges) redrawn; the
        tissue outside, mass effect included, stays."""
        out = np.asarray(painted, np.float32).copy()
        for region in (OEDEMA, ENHANCING, NECROTIC):
            inside = labels == region
            if not inside.any():
                continue
            weight = np.clip(ndimage.gaussian_filter(inside.astype(np.float32), self.edge_sigma), 0.0, 1.0)
            weight[inside] = 1.0
            weight[~inside & (out <= BACKGROUND_FLOOR * self.reference)] = 0.0  # a stripped background stays empty
            if self.infiltrating[region]:
                target = np.asarray(healthy, np.float32) * self.factors[region]
            else:
                grain = ndimage.gaussian_filter(rng.standard_normal(out.shape).astype(np.float32), self.texture_sigma)
                grain /= max(float(grain.std()), 1e-6)
                target = self.reference * self.factors[region] * np.maximum(1.0 + self.texture * grain, 0.0)
            out += weight * (target - out)
        return np.maximum(out, 0.0)


@dataclass(frozen=True)
class ScanLook:
    """A new contrast for the whole of one pair's slices (one acquisition): tone curve, inversion, bias field, noise."""

    bright: float
    gamma: float
    invert: bool
    bias: np.ndarray  # multiplicative field on the slice grid
    noise: float  # Rician sigma in intensity units

    @classmethod
    def draw(cls, rng: np.random.Generator, image: np.ndarray) -> "ScanLook":
        positive = image[image > 0]
        bright = float(np.percentile(positive, BRIGHT_PERCENTILE)) if positive.size else 1.0
        rows, columns = np.meshgrid(np.linspace(-1, 1, image.shape[0]), np.linspace(-1, 1, image.shape[1]), indexing="ij")
        terms = np.stack([rows, columns, rows * columns, rows**2, columns**2])  # a field smooth over the slice
        field = np.tensordot(rng.standard_normal(len(terms)), terms, axes=1)
        field /= max(float(np.abs(field).max()), 1e-6)
        return cls(bright, float(np.exp(rng.uniform(*np.log(GAMMA)))), bool(rng.random() < INVERT_SHARE),
                   np.exp(rng.uniform(*BIAS_LOG_AMPLITUDE) * field).astype(np.float32), float(rng.uniform(*NOISE)) * bright)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Background (outside the head, a stripped skull, a warp's interpolation residue) stays as it is; the rest
        stays positive."""
        foreground = image > BACKGROUND_FLOOR * self.bright
        relative = np.clip(np.asarray(image, np.float32) / self.bright, 0.0, 1.0) ** self.gamma
        if self.invert:  # within the head (air stays dark), the darkest tissue one step above the background
            head = ndimage.binary_fill_holes(relative > INVERT_FLOOR)
            relative = np.where(head, 1.05 - relative, relative)
        out = relative * self.bright * self.bias
        if self.noise > 0:
            real = out + self.noise * rng.standard_normal(out.shape).astype(np.float32)
            out = np.sqrt(real**2 + (self.noise * rng.standard_normal(out.shape).astype(np.float32)) ** 2)
        return np.where(foreground, out, image).astype(np.float32)


def label_pair(volume: LesionVolume, rng: np.random.Generator, side: int = SIDE,
               augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One training pair: network input (10, side, side) and target labels (side, side) int64. The look is drawn
    from its own generator, so ``augment`` False gives the same pair as painted."""
    look = np.random.default_rng(rng.integers(0, 2**63))
    axis = int(rng.integers(0, 3))
    labels = np.moveaxis(volume.labels, axis, 0)
    areas = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    through = np.flatnonzero(areas)
    source = int(np.argmax(areas)) if rng.random() < LARGEST_SHARE else int(rng.choice(through))
    healthy, painted = (np.moveaxis(v, axis, 0) for v in (volume.healthy, volume.painted))  # float16 views
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
    input_image, target_painted = painted[source].astype(np.float32), painted[target].astype(np.float32)
    scan = None
    if augment and look.random() >= CLEAN_SHARE:
        if look.random() < LESION_LOOK_SHARE:
            lesion = LesionLook.draw(look, healthy[source].astype(np.float32), labels[source])
            input_image = lesion.apply(input_image, healthy[source], labels[source], look)
            target_painted = input_image if target == source else lesion.apply(target_painted, healthy[target], labels[target], look)
        if look.random() < SCAN_LOOK_SHARE:
            scan = ScanLook.draw(look, input_image)
    shown = healthy[target].astype(np.float32) + weight * (target_painted - healthy[target])
    if scan is not None:
        input_image, shown = scan.apply(input_image, look), scan.apply(shown, look)
    scale = IntensityScale.from_slices([input_image]) if input_image.max() > 0 else IntensityScale(1.0)
    if given is not None:
        shown = ndimage.gaussian_filter(shown, float(rng.uniform(0.0, 2.0)))
    inputs = label_net_inputs(scale.normalise(shown), scale.normalise(input_image), given, (target - source) * spacing,
                              guess)
    fill = [-1.0, -1.0, 0.0, 0.0, 0.0, float(inputs[5, 0, 0]), float(inputs[6, 0, 0]), 0.0, 0.0, 0.0]
    padded = np.stack([_pad(channel, value, side) for channel, value in zip(inputs, fill)])  # background, constants, no labels
    return padded.astype(np.float32), _pad(labels[target], 0, side).astype(np.int64)


class LabelPairs(torch.utils.data.Dataset):
    """A seed-deterministic stream of pairs over lesion volumes (item i is always the same pair)."""

    def __init__(self, volumes: Sequence[LesionVolume], seed: int = 0, length: int = 10**9, side: int = SIDE,
                 augment: bool = True) -> None:
        self.volumes, self.seed, self.length, self.side, self.augment = list(volumes), seed, length, side, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        inputs, target = label_pair(self.volumes[int(rng.integers(0, len(self.volumes)))], rng, self.side, self.augment)
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
    ``output_dir/label_net`` (diffusers layout) and every validation appended to ``output_dir/label_metrics.csv``
    (the net's Dice on all pairs, its whole-tumour Dice on the pairs with labels given and the ellipsoid guess's
    there: whether it beats its prior). Validation pairs are restyled as training pairs are. Returns the step reached (a ``max_minutes`` budget may stop it early)."""
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = cosine_schedule(optimiser, steps, start_step)
    loader = iter(torch.utils.data.DataLoader(LabelPairs(train_volumes, seed, length=10**9, side=side), batch_size=batch_size,
                                              sampler=range(start_step * batch_size, 10**9)))
    validation = [LabelPairs(validation_volumes, seed + 1, side=side)[i] for i in range(64)]
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "label_metrics.csv"
    best = best_logged(log, "dice_wt", -1.0)
    started = time.monotonic()
    step = start_step
    while step < steps:
        net.train()
        inputs, target = next(loader)
        loss = optimiser_step(net, loss_function(net(inputs), target[:, None]), optimiser, schedule)
        step += 1
        out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
        if step % validate_every == 0 or step == steps or out_of_time:
            scores = evaluate_label_net(net, validation)
            row = {"step": step, "loss": loss, "dice_wt": scores["wt"], "dice_tc": scores["tc"], "dice_et": scores["et"],
                   "dice_wt_given": scores["wt_given"], "guess_dice_wt": scores["guess_wt"]}
            append_row(log, row)
            if progress is not None:
                progress(f"label net step {step}: loss {loss:.3f}, Dice WT {scores['wt']}, with labels given "
                         f"{scores['wt_given']} (ellipsoid guess {scores['guess_wt']})")
            if scores["wt"] is not None and scores["wt"] > best:
                best = scores["wt"]
                net.save_pretrained(output_dir / "label_net")
            net.save_pretrained(output_dir / LAST_WEIGHTS)  # what a resumed run continues from
        if out_of_time:
            break
    return step


@torch.inference_mode()
def evaluate_label_net(net: TumourLabelNet, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Optional[float]]:
    """`dice_scores` of the net on all ``pairs``, plus ``wt_given`` (the net) and ``guess_wt`` (the ellipsoid guess in
    the input's guess channels) on the pairs with labels given."""
    net.eval()
    inputs = torch.stack([p[0] for p in pairs])
    truth = torch.stack([p[1] for p in pairs]).numpy()
    prediction = torch.cat([net(inputs[i:i + 16]).argmax(1) for i in range(0, len(inputs), 16)]).numpy()
    given = inputs[:, GIVEN_CHANNEL, 0, 0].numpy() > 0.5
    guess = np.einsum("nchw,c->nhw", inputs[:, GUESS_CHANNELS].numpy(), np.array([1.0, 2.0, 3.0], np.float32)).round().astype(np.int64)
    return {**dice_scores(prediction, truth), "wt_given": dice_scores(prediction[given], truth[given])["wt"],
            "guess_wt": dice_scores(guess[given], truth[given])["wt"]}


def resume_point(output_dir: Path) -> tuple[TumourLabelNet | None, int]:
    """The last saved weights and the step they were saved at, or (None, 0) for a fresh run."""
    return resume_from(output_dir / "label_metrics.csv", output_dir / LAST_WEIGHTS, TumourLabelNet)
