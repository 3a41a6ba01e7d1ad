"""`xdiffusion train CONFIG`: the config's `data:` section becomes training cubes, samples and a held-out validator.

The split is explicit: the fetched manifest's validation source (or a user folder's held-out subjects) only ever
reaches `build_validation_cubes`, never the training cubes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .data.fetch import default_cache_dir
from .data.loaders import Subject, iter_brats_folder, iter_volume_folder, load_training_subjects, subject_from_brats
from .data.samples import IntensityScale, SampleGenerator, SampleOptions, TrainingCube, tumour_channels
from .data.training_set import (TrainingSetConfig, build_training_cubes, build_validation_cubes, default_template,
                                with_atlas_draws, work_side_for)
from .errors import InputError
from .evaluate import psnr, sharpness
from .model import XDiffusionConfig, XDiffusionModel
from .model.training import resolve_config, train
from .pipeline import XDiffusionPipeline


@dataclass
class DataConfig:
    """The `data:` section. `source`: `fetched` (the manifest's PyPI volumes; `fetched:SET` names a subject set of
    `data.manifest.SUBJECT_SETS`, `fetched` is `fetched:templates`), `brats:PATH` or `folder:PATH`."""

    source: str = "fetched"
    cache_dir: str = ""
    cube_cache: str = ""
    folder_modality: str = "t1"
    validation_subjects: int = 1
    variants_per_subject: int = 48
    synthetic_share: float = 0.35
    tumour_share: float = 0.5
    skull_strip_share: float = 0.4
    seed: int = 0
    validation_samples: int = 24
    validation_steps: int = 10
    atlas_draws: int = 3  # per training cube, for atlas-conditioned models (`data.atlas_draws`): seconds each to build


def split_subjects(data: DataConfig) -> tuple[list[Subject], list[Subject]]:
    """(training, validation) subjects; for user folders the last `validation_subjects` by name are held out."""
    kind, _, path = data.source.partition(":")
    if kind == "fetched":  # `fetched` is the `templates` subject set; `fetched:individuals` adds real people
        cache = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
        set_name = path or "templates"
        return load_training_subjects(cache, "train", set_name), load_training_subjects(cache, "validation", set_name)
    if kind == "brats" and path:
        subjects = [subject_from_brats(case) for case in iter_brats_folder(path)]
    elif kind == "folder" and path:
        subjects = [Subject(id=file.name, modalities={data.folder_modality: volume}) for file, volume in iter_volume_folder(path)]
    else:
        raise InputError(f"data.source must be fetched, fetched:SET, brats:PATH or folder:PATH, not {data.source!r}")
    subjects.sort(key=lambda subject: subject.id)
    held = data.validation_subjects
    if len(subjects) <= held:
        raise InputError(f"{path} holds {len(subjects)} subjects; need more than data.validation_subjects={held}")
    return subjects[:-held] if held else subjects, subjects[-held:] if held else []


def _image_metrics(generated: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of a slice in [0, 1] units (model range [-1, 1] mapped and clipped)."""
    a, b = (np.clip((x + 1.0) / 2.0, 0.0, 1.0) for x in (generated, target))
    return psnr(b, a), float(structural_similarity(b, a, data_range=1.0))


def held_out_targets(cubes: Sequence[TrainingCube], stride: int = 4, channels: int = 4) -> torch.Tensor:
    """Every ``stride``-th slice of each held-out cube along each axis, as targets [N, C, S, S] (image scaled as the
    samples scale it, then the tumour channels where the model's targets have them, ``channels`` 4, not 1),
    background-only slices left out: what the autoencoder is measured on."""
    targets = []
    for cube in cubes:
        image = IntensityScale.from_slices([cube.image]).normalise(cube.image)
        for axis in range(3):
            for index in range(stride // 2, cube.side, stride):
                slice_image = np.take(image, index, axis=axis)
                if slice_image.max() > -0.9:
                    labels = tumour_channels(np.take(cube.tumour, index, axis=axis))
                    targets.append(np.concatenate([slice_image[None], labels])[:channels])
    if not targets:
        raise InputError("the held-out cubes hold only background")
    return torch.from_numpy(np.stack(targets).astype(np.float32))


def _pooled_dice(generated: np.ndarray, target: np.ndarray) -> float | None:
    """Whole-tumour Dice over all slices at once (any tumour channel > 0); None when the truth holds no tumour."""
    truth, guess = (target[:, 1:] > 0).any(axis=1), (generated[:, 1:] > 0).any(axis=1)
    present = int(truth.sum())
    return 2.0 * int((truth & guess).sum()) / (present + int(guess.sum())) if present else None


def make_validator(cubes, modalities: Sequence[str], options: SampleOptions | int, count: int, steps: int, seed: int = 12345):
    """A fixed set of held-out samples; each validation generates them and scores PSNR/SSIM against the truth and
    against the extrude prior (the model must beat it to be worth running), the sharpness of each slice (as
    `evaluate.sharpness` defines it, in 2D over the target's foreground), and, when the truth holds tumour, the
    whole-tumour Dice of the generated tumour channels (`dice_tumour`, the model card's `segments_tumours` basis)."""
    options = options if isinstance(options, SampleOptions) else SampleOptions(int(options))
    generator = SampleGenerator(cubes, modalities, seed=seed, options=options)
    samples, index = [], 0
    while len(samples) < count:  # background-only targets would score a meaningless 100 dB for any method
        sample = generator[index]
        index += 1
        if sample["target"][0].max() > -0.9:
            samples.append(sample)
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
    conditioning = {key: value for key, value in batch.items() if key != "target"}
    targets = batch["target"].numpy()
    target = targets[:, 0]
    guess = batch["guess"][:, 0].numpy()

    def validate(model: XDiffusionModel) -> dict[str, float]:
        decoded, _ = XDiffusionPipeline.from_model(model).generate_slices(conditioning, steps, seed=seed)
        ours = [_image_metrics(g, t) for g, t in zip(decoded[:, 0].numpy(), target)]
        prior = [_image_metrics(g, t) for g, t in zip(guess, target)]
        detail = [sharpness((t + 1.0) / 2.0, (g + 1.0) / 2.0, t > -0.9) for g, t in zip(decoded[:, 0].numpy(), target)]
        detail = [d for d in detail if d is not None]
        scores = {
            "psnr": float(np.mean([m[0] for m in ours])), "ssim": float(np.mean([m[1] for m in ours])),
            **({"sharpness": float(np.mean(detail))} if detail else {}),
            "psnr_extrude": float(np.mean([m[0] for m in prior])), "ssim_extrude": float(np.mean([m[1] for m in prior])),
        }
        if "atlas_present" in batch:
            scores.update(_atlas_scores(ours, batch["atlas_guess"][:, 0].numpy(), target, batch["atlas_present"]))
        dice = _pooled_dice(decoded.numpy(), targets)
        return scores if dice is None else {**scores, "dice_tumour": dice}

    return validate


def _atlas_scores(ours: Sequence[tuple[float, float]], atlas: np.ndarray, target: np.ndarray,
                 present: torch.Tensor) -> dict[str, float]:
    """For an atlas-conditioned model: its PSNR/SSIM on the samples that saw the atlas and on those that had it
    withheld (the model alone), and the registered atlas's own PSNR/SSIM on the former, the baseline it must beat."""
    seen = present.flatten(1).amax(dim=1).numpy() > 0
    scores = {}
    for name, chosen in (("atlas_given", seen), ("atlas_withheld", ~seen)):
        if chosen.any():
            scores[f"psnr_{name}"] = float(np.mean([m[0] for m, c in zip(ours, chosen) if c]))
            scores[f"ssim_{name}"] = float(np.mean([m[1] for m, c in zip(ours, chosen) if c]))
    if seen.any():
        baseline = [_image_metrics(a, t) for a, t, c in zip(atlas, target, seen) if c]
        scores["psnr_atlas"] = float(np.mean([m[0] for m in baseline]))
        scores["ssim_atlas"] = float(np.mean([m[1] for m in baseline]))
    return scores


def data_config(resolved: dict[str, Any]) -> DataConfig:
    """The resolved config's `data:` section, typed (unknown keys refused); written back resolved."""
    known = {field.name for field in dataclasses.fields(DataConfig)}
    section = resolved.get("data") or {}
    unknown = sorted(set(section) - known)
    if unknown:
        raise InputError(f"unknown key(s) in data: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    data = DataConfig(**section)
    resolved["data"] = dataclasses.asdict(data)
    return data


def training_cubes(resolved: dict[str, Any]) -> tuple[list[TrainingCube], list[Subject]]:
    """The training cubes a resolved config trains on (from its cube cache, built when missing) and the validation
    subjects: one definition for `xdiffusion train` and the GPU pack (scripts/gpu_campaign/pack.py)."""
    data = data_config(resolved)
    model = XDiffusionConfig.from_dict(resolved["model"])
    training_subjects, validation_subjects = split_subjects(data)
    set_config = TrainingSetConfig(model.cube_size, data.variants_per_subject, data.synthetic_share, data.tumour_share,
                                   data.skull_strip_share, work_side=work_side_for(model.cube_size), seed=data.seed)
    cube_cache = Path(data.cube_cache) if data.cube_cache else Path(resolved["train"]["output_dir"]) / "cube_cache"
    draws = data.atlas_draws if model.atlas_conditioning else 0
    return build_training_cubes(training_subjects, model.modalities, set_config, cube_cache, progress=print, atlas_draws=draws,
                                options=SampleOptions.from_config(model)), validation_subjects


def train_from_config(config: Union[str, os.PathLike, Mapping[str, Any]], overrides: Sequence[str] = ()) -> Path:
    resolved = resolve_config(config, overrides)
    cubes, validation_subjects = training_cubes(resolved)
    data = DataConfig(**resolved["data"])
    model = XDiffusionConfig.from_dict(resolved["model"])
    train_section = resolved["train"]
    length = max(1000, train_section["steps"] * train_section["batch_size"] * train_section["grad_accum"])
    options = SampleOptions.from_config(model)
    samples = SampleGenerator(cubes, model.modalities, seed=data.seed, length=length, options=options)
    validate, held_out = None, None
    if validation_subjects:
        validation_cubes = build_validation_cubes(validation_subjects, model.modalities, model.cube_size)
        if model.atlas_conditioning:  # one draw each, so that validation scores the atlas in use
            template = default_template()
            validation_cubes = [with_atlas_draws(cube, np.random.default_rng([data.seed, number, 2]), options, 1, template)
                                for number, cube in enumerate(validation_cubes)]
        validate = make_validator(validation_cubes, model.modalities, options, data.validation_samples, data.validation_steps)
        held_out = held_out_targets(validation_cubes, channels=model.image_channels)
    return train(resolved, samples=samples, validate=validate, held_out=held_out)
