"""Dataset loaders: BraTS case folders, plain folders of volumes, and the fetched manifest sources.

Fetched sources come by subject set and split (``manifest.SUBJECT_SETS``): ``train``, ``validation`` (a set's
validation sources, or for ``individuals`` augmented variants of its training subjects), ``held_out`` and
``out_of_domain``. Individual scans carry the brain mask and tissue classes derived at fetch time.

Everything comes back as ``io.Volume`` objects (ITK index order, exact geometry). Modality names are the library's
canonical ``t1``, ``t1c``, ``t2``, ``flair`` whichever BraTS naming the files use, and every volume of one case or
subject must share one grid: we never resample silently, because a half-voxel shift between an image and its labels
would teach the model wrong anatomy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..io import Volume, read_volume
from .fetch import cached_paths, default_cache_dir
from .manifest import (DEFAULT_SUBJECT_SET, Source, held_out_sources, load_manifest, out_of_domain_sources,
                       subject_set, training_sources, validation_sources)

MODALITIES = ("t1", "t1c", "t2", "flair")
OTHER_IMAGE_ROLES = ("mr",)  # an image of unknown weighting (the out-of-domain abdominal MR)
LABEL_ROLES = ("labels", "tissue_labels", "organ_labels")  # first present wins
SPLITS = ("train", "validation", "held_out", "out_of_domain")
# BraTS 2023+ suffixes (t1n, t1c, t2w, t2f) and BraTS 2020/2021 suffixes (t1, t1ce, t2, flair)
BRATS_SUFFIXES = {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair",
                  "t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair", "seg": "seg"}
BRATS_LABELS = (0, 1, 2, 3, 4)  # 4 is the pre-2023 code of enhancing tumour, mapped to 3
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
GRID_TOLERANCE_MM = 1e-3
_SUFFIX_PATTERN = re.compile(r"[-_]([a-z0-9]+)\.(nii\.gz|nii|nrrd|mha)$", re.IGNORECASE)


@dataclass
class BratsCase:
    """One BraTS case: co-registered modalities on one grid and, when given, the tumour labels (0-3)."""

    id: str
    modalities: dict[str, Volume]
    seg: Volume | None = None


@dataclass
class Subject:
    """One training or validation brain.

    ``labels`` is an anatomical label map (for label-driven synthesis), ``tumour_seg`` BraTS labels 1-3. A subject
    may have no images at all (a label atlas used only for synthesis).
    """

    id: str
    modalities: dict[str, Volume] = field(default_factory=dict)
    labels: Volume | None = None
    brain_mask: Volume | None = None
    tumour_seg: Volume | None = None


def _check_same_grid(volumes: dict[str, Volume], where: str) -> None:
    items = list(volumes.items())
    if not items:
        return
    name, reference = items[0]
    for other_name, other in items[1:]:
        if not reference.geometry.same_as(other.geometry, atol=GRID_TOLERANCE_MM):
            raise InputError(f"{where}: {other_name} (shape {other.geometry.shape}, spacing "
                             f"{np.round(other.geometry.spacing, 3).tolist()}) is not on the grid of {name} (shape "
                             f"{reference.geometry.shape}, spacing {np.round(reference.geometry.spacing, 3).tolist()})")


def _brats_seg(volume: Volume, path: Path) -> Volume:
    array = volume.array
    if not np.array_equal(array, np.round(array)):
        raise InputError(f"{path}: segmentation holds non-integer values")
    values = np.unique(array).astype(np.int64)
    unexpected = sorted(set(values.tolist()) - set(BRATS_LABELS))
    if unexpected:
        raise InputError(f"{path}: segmentation has labels {unexpected}; BraTS labels are 0, 1, 2, 3 (or 4)")
    labels = array.astype(np.uint8)
    labels[labels == 4] = 3
    return volume.with_array(labels)


def load_brats_case(folder: str | Path) -> BratsCase:
    """Read a BraTS case folder in either naming (``-t1n/-t1c/-t2w/-t2f/-seg`` or ``_t1/_t1ce/_t2/_flair/_seg``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; a BraTS case is a folder of per-modality files")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _SUFFIX_PATTERN.search(path.name)
        if not match or match.group(1).lower() not in BRATS_SUFFIXES:
            continue
        key = BRATS_SUFFIXES[match.group(1).lower()]
        if key in found:
            raise InputError(f"{folder}: both {found[key].name} and {path.name} look like the {key} volume")
        found[key] = path
    modalities = {key: read_volume(path) for key, path in found.items() if key != "seg"}
    if not modalities:
        raise InputError(f"{folder}: no BraTS modality files (names ending in -t1n/-t1c/-t2w/-t2f or "
                         f"_t1/_t1ce/_t2/_flair)")
    modalities = {key: volume.with_array(volume.array.astype(np.float32))
                  for key, volume in sorted(modalities.items(), key=lambda item: MODALITIES.index(item[0]))}
    seg = _brats_seg(read_volume(found["seg"]), found["seg"]) if "seg" in found else None
    _check_same_grid({**modalities, **({"seg": seg} if seg is not None else {})}, str(folder))
    return BratsCase(folder.name, modalities, seg)


def iter_brats_folder(root: str | Path) -> Iterator[BratsCase]:
    """Every case folder under ``root`` (sorted by name); sub-folders without volume files are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    folders = [path for path in sorted(root.iterdir())
               if path.is_dir() and any(_SUFFIX_PATTERN.search(child.name) for child in path.iterdir())]
    if not folders:
        raise InputError(f"{root}: holds no BraTS case folders")
    for folder in folders:
        yield load_brats_case(folder)


def iter_volume_folder(root: str | Path) -> Iterator[tuple[Path, Volume]]:
    """Every 3D volume file directly in ``root`` (one modality, no labels), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    files = [path for path in sorted(root.iterdir())
             if path.is_file() and path.name.lower().endswith(FOLDER_SUFFIXES) and not path.name.startswith(".")]
    if not files:
        raise InputError(f"{root}: holds no volume files ({', '.join(FOLDER_SUFFIXES)})")
    for path in files:
        volume = read_volume(path)
        yield path, volume.with_array(volume.array.astype(np.float32))


def subject_from_brats(case: BratsCase) -> Subject:
    """A BraTS case as a subject; BraTS images are skull-stripped, so the brain is where any modality is non-zero."""
    reference = next(iter(case.modalities.values()))
    inside = np.zeros(reference.geometry.shape, dtype=bool)
    for volume in case.modalities.values():
        inside |= volume.array != 0
    return Subject(case.id, dict(case.modalities), None, reference.with_array(inside.astype(np.uint8)), case.seg)


def _integer_map(volume: Volume) -> Volume:
    return volume.with_array(np.rint(volume.array).astype(np.int32))


def _subject_from_source(source: Source, paths: dict[str, Path]) -> Subject:
    missing = [str(path) for role, path in paths.items() if not path.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: data source '{source.id}' is not fetched; run `xdiffusion fetch-data`")
    roles = set(paths)
    images: dict[str, Volume] = {}
    stripped = False
    for modality in MODALITIES + OTHER_IMAGE_ROLES:
        # prefer the full-head image; fall back to the skull-stripped one (SRI24 ships only that)
        role = modality if modality in roles else f"{modality}_brain" if f"{modality}_brain" in roles else None
        if role is not None:
            stripped |= role.endswith("_brain")
            volume = read_volume(paths[role])  # any stored type (uint8, big-endian int16, ...) becomes float32
            images[modality] = volume.with_array(volume.array.astype(np.float32))
    label_role = next((role for role in LABEL_ROLES if role in roles), None)
    labels = _integer_map(read_volume(paths[label_role])) if label_role else None
    if "brain_mask" in roles:
        mask_volume = read_volume(paths["brain_mask"])
        brain_mask = mask_volume.with_array((mask_volume.array > 0.5).astype(np.uint8))
    elif stripped:
        first = next(iter(images.values()))
        brain_mask = first.with_array((first.array > 0).astype(np.uint8))
    elif labels is not None and source.split != "out_of_domain":
        brain_mask = labels.with_array((labels.array > 0).astype(np.uint8))
    else:
        brain_mask = None  # e.g. organ labels of a body scan: not a brain
    on_grid = {**images, **({"labels": labels} if labels else {}), **({"brain_mask": brain_mask} if brain_mask else {})}
    _check_same_grid(on_grid, f"data source '{source.id}'")
    return Subject(source.id, images, labels, brain_mask, None)


def split_sources(split: str, set_name: str = DEFAULT_SUBJECT_SET) -> list[Source]:
    """The manifest sources of one split of a subject set (``validation`` may be empty: see ``load_training_subjects``)."""
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    subject_set(set_name)
    if split == "train":
        return training_sources(set_name=set_name)
    if split == "validation":
        return validation_sources(set_name=set_name)
    return held_out_sources(set_name=set_name) if split == "held_out" else out_of_domain_sources(set_name=set_name)


def load_training_subjects(cache_dir: str | Path | None = None, split: str = "train",
                           set_name: str = DEFAULT_SUBJECT_SET) -> list[Subject]:
    """The fetched sources of one split of a subject set, as subjects.

    ``set_name="templates"`` (the default, `data.source: fetched`) is what the shipped model trained and validated
    on. A set without validation sources (``individuals``) validates on augmented variants of its training subjects
    (``validation_split``), never on a held-out subject.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources = split_sources(split, set_name)
    if split == "validation" and not subject_set(set_name).validation:
        from .validation_split import augmented_validation_subjects  # synthesis pulls in torch: only when needed

        return augmented_validation_subjects(load_training_subjects(cache, "train", set_name))
    return [_subject_from_source(source, cached_paths(cache, source)) for source in sources]


def load_source_subject(source_id: str, cache_dir: str | Path | None = None) -> Subject:
    """One fetched source as a subject, whatever its split (for inspection and reports, not for training)."""
    manifest = load_manifest()
    if source_id not in manifest.sources:
        raise InputError(f"unknown data source '{source_id}'; known: {', '.join(manifest.sources)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = manifest.sources[source_id]
    return _subject_from_source(source, cached_paths(cache, source))
