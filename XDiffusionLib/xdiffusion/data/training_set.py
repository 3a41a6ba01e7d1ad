"""The training and validation cubes: few real subjects multiplied honestly, cached on disk.

Each variant of a subject is one of: a real image (full head or skull-stripped), or a label-driven synthesis with a
random contrast (modality ``any``); every variant is elastically and affinely warped, and a share of them get a
synthetic BraTS-style tumour (or keep the subject's real tumour labels when it has them). The validation source is
only ever turned into validation cubes, never warped or trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..io import Volume
from .loaders import Subject
from .atlas_draws import cube_draws, draws_path
from .samples import SampleOptions, TrainingCube, atlas_draw_choices, make_training_cube
from .synthesis import augment_subject, downsample, synthesise_from_labels
from .tumour import TUMOUR_CONTRAST, paint_tumour

ANY_MODALITY = "any"  # label-synthesised contrasts: teaches contrast-agnostic reconstruction
Progress = Callable[[str], None]

RECIPE_VERSION = 2  # in the cube cache's key: bump when what a variant draws changes (`subject_variant`, the augmentation,
# the lesion or synthesis recipe), or a cache built by the old recipe would be reused as if it were the new one


@dataclass(frozen=True)
class TrainingSetConfig:
    """How many variants to make of each subject, and of which kinds; part of the cache key."""

    cube_size: int = 64
    variants_per_subject: int = 48
    synthetic_share: float = 0.35
    tumour_share: float = 0.5
    skull_strip_share: float = 0.4
    work_side: int = 96
    seed: int = 0


def work_side_for(cube_size: int) -> int:
    """The grid subjects are warped on before they become cubes: finer than the cube, so the cube keeps its detail
    (96 for the shipped 64^3 model, as it was trained)."""
    return max(96, cube_size + cube_size // 4)


def _tumour_modality(modality: str, rng: np.random.Generator) -> str:
    return modality if modality in TUMOUR_CONTRAST else str(rng.choice(sorted(TUMOUR_CONTRAST)))


def subject_variant(subject: Subject, modalities: Sequence[str], config: TrainingSetConfig, rng: np.random.Generator) -> tuple[Volume, str, Optional[Volume]]:
    """One random variant of a subject: (image on a work grid, its modality, tumour labels or None)."""
    real = [m for m in modalities if m in subject.modalities]
    can_synthesise = subject.labels is not None and ANY_MODALITY in modalities
    if not real and not can_synthesise:
        raise InputError(f"subject {subject.id} has none of the model's modalities {list(modalities)} and no label map")
    if can_synthesise and (not real or rng.random() < config.synthetic_share):
        labels = downsample(subject.labels, config.work_side, labels=True)
        image = labels.with_array(synthesise_from_labels(labels, rng))
        modality = ANY_MODALITY
        mask_array = labels.array > 0
    else:
        modality = str(rng.choice(real))
        image = downsample(subject.modalities[modality], config.work_side)
        mask = downsample(subject.brain_mask, config.work_side, labels=True) if subject.brain_mask is not None else None
        mask_array = mask.array > 0 if mask is not None else image.array > np.percentile(image.array, 60)
        if mask is not None and rng.random() < config.skull_strip_share:
            image = image.with_array(image.array * mask_array)
    label_maps = {"brain": mask_array.astype(np.uint8)}
    if subject.tumour_seg is not None:
        label_maps["tumour"] = downsample(subject.tumour_seg, config.work_side, labels=True).array.astype(np.uint8)
    warped, warped_labels = augment_subject({"image": image.array}, label_maps, rng, image.geometry.spacing)
    array = np.maximum(warped["image"], 0.0)
    tumour = warped_labels.get("tumour")
    if tumour is None and rng.random() < config.tumour_share and warped_labels["brain"].sum() > 1000:
        array, tumour = paint_tumour(array, warped_labels["brain"] > 0, _tumour_modality(modality, rng), rng, image.geometry.spacing)
    return image.with_array(array.astype(np.float32)), modality, (image.with_array(tumour) if tumour is not None else None)


def _cache_key(subject: Subject, modalities: Sequence[str], config: TrainingSetConfig) -> str:
    text = json.dumps({"subject": subject.id, "modalities": list(modalities), "recipe": RECIPE_VERSION, **asdict(config)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_cube(path: Path, cube: TrainingCube) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part.npz")
    np.savez_compressed(temporary, image=cube.image, tumour=cube.tumour, modality=np.array(cube.modality),
                        voxel_mm=np.array(cube.voxel_mm))
    os.replace(temporary, path)


def _load_cube(path: Path) -> TrainingCube:
    with np.load(path, allow_pickle=False) as data:
        voxel_mm = float(data["voxel_mm"]) if "voxel_mm" in data.files else 0.0
        return TrainingCube(data["image"], data["tumour"], str(data["modality"]), voxel_mm)


def build_training_cubes(
    subjects: Sequence[Subject],
    modalities: Sequence[str],
    config: TrainingSetConfig,
    cache_dir: Optional[Path] = None,
    progress: Optional[Progress] = None,
    atlas_draws: int = 0,
    options: Optional[SampleOptions] = None,
) -> list[TrainingCube]:
    """All variants of all subjects as cubes; cached per subject and config, so a rerun (or a resume) is instant.

    ``atlas_draws`` > 0 gives each cube that many `atlas_draws.AtlasDraw`s (input slices chosen as ``options``
    chooses them, the atlas registered to them), cached beside it: what an atlas-conditioned model trains on."""
    cubes, draw_seeds, draw_caches = [], [], []
    for number, subject in enumerate(subjects):
        folder = Path(cache_dir) / f"{subject.id}-{_cache_key(subject, modalities, config)}" if cache_dir else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        for variant in range(config.variants_per_subject):
            path = folder / f"variant-{variant:04d}.npz" if folder is not None else None
            if path is not None and path.exists():
                cube = _load_cube(path)
            else:
                rng = np.random.default_rng([config.seed, number, variant])
                image, modality, tumour = subject_variant(subject, modalities, config, rng)
                cube = make_training_cube(image, modality, config.cube_size, tumour)
                if path is not None:
                    _save_cube(path, cube)
            cubes.append(cube)
            draw_seeds.append([config.seed, number, variant, 1])
            draw_caches.append(draws_path(path, atlas_draws, options) if path is not None and atlas_draws else None)
        if progress is not None:
            progress(f"training cubes: {subject.id} ready ({config.variants_per_subject} variants)")
    if not atlas_draws:
        return cubes
    return _with_draws(cubes, draw_seeds, draw_caches, options, atlas_draws, progress)


def _with_draws(cubes: Sequence[TrainingCube], seeds: Sequence[list[int]], caches: Sequence[Optional[Path]],
                options: SampleOptions, count: int, progress: Optional[Progress]) -> list[TrainingCube]:
    """Every cube with its atlas draws. Registration takes seconds a draw, so the draws missing from the cache are
    built first in one process per core (the training has not started: the cores are free), then all read back."""
    missing = [(cube, seed, cache) for cube, seed, cache in zip(cubes, seeds, caches) if cache is not None and not cache.is_file()]
    workers = min(len(missing), os.cpu_count() or 1)
    if progress is not None and missing:
        progress(f"atlas draws: registering {len(missing) * count} for {len(missing)} cubes in {workers} process(es)")
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_build_draws, missing, [options] * len(missing), [count] * len(missing)))
    template = default_template()
    drawn = [with_atlas_draws(cube, np.random.default_rng(seed), options, count, template, cache)
             for cube, seed, cache in zip(cubes, seeds, caches)]
    if progress is not None:
        progress(f"atlas draws: {count} for each of {len(drawn)} cubes ready")
    return drawn


def _build_draws(job: tuple[TrainingCube, list[int], Path], options: SampleOptions, count: int) -> None:
    cube, seed, cache = job
    with_atlas_draws(cube, np.random.default_rng(seed), options, count, default_template(), cache)


def default_template() -> Volume:
    """The template atlas draws register: the default of `reconstruct --prior atlas`."""
    from ..atlas_templates import TEMPLATES, load_template

    return load_template(TEMPLATES["brain"])


def with_atlas_draws(cube: TrainingCube, rng: np.random.Generator, options: SampleOptions, count: int,
                     template: Volume, cache: Optional[Path] = None) -> TrainingCube:
    """``cube`` with ``count`` atlas draws: input slices chosen as ``options`` chooses them, the atlas registered to them."""
    choices = atlas_draw_choices(rng, cube, options, count)
    return replace(cube, atlas_draws=cube_draws(cube.image, cube.voxel_mm or 240.0 / cube.side, choices, template, cache))


def build_validation_cubes(subjects: Sequence[Subject], modalities: Sequence[str], cube_size: int, tumour_seeds: Sequence[int] = (0, 1)) -> list[TrainingCube]:
    """Held-out cubes, unwarped: each validation image as it is, and with synthetic tumours from fixed seeds."""
    cubes = []
    for subject in subjects:
        for modality in [m for m in modalities if m in subject.modalities]:
            image = subject.modalities[modality]
            cubes.append(make_training_cube(image, modality, cube_size))
            mask = subject.brain_mask.array > 0 if subject.brain_mask is not None else image.array > 0
            for seed in tumour_seeds:
                painted, labels = paint_tumour(image.array.astype(np.float32), mask, _tumour_modality(modality, np.random.default_rng(seed)), np.random.default_rng(seed), image.geometry.spacing)
                cubes.append(make_training_cube(image.with_array(painted), modality, cube_size, image.with_array(labels)))
    if not cubes:
        raise InputError("no validation cubes: the validation subjects have none of the model's modalities")
    return cubes
