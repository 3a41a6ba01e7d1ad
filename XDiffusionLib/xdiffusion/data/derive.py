"""Files a source derives at fetch time: the manifest's ``derived`` recipes, made once and cached with provenance.

Each derived file ``SOURCE/derived/NAME`` has a sidecar ``NAME.json`` that records the method, its parameters, the
SHA-256 of every input (the subject's files, earlier derived files, the template's files) and of the result. A
derived file is kept while its recipe key (method, parameters, input checksums, ``DERIVATION_VERSION``) is
unchanged and its own checksum still matches; otherwise it is made again. Masks are made single-threaded with a
fixed seed (see ``brain_mask``), so a rebuild gives the same mask.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, InputError
from ..io import Volume, atomic_output, read_volume, write_volume
from .brain_mask import mask_volume_ml, template_mask_on_subject, tissue_classes, whole_field_mask
from .fetch import cached_paths, sha256_file
from .manifest import DerivedFile, Manifest, Source
from .siemens_mosaic import mean_of_mosaics

DERIVATION_VERSION = 1  # bump when a method's code changes its output: every derived file is then made again
Progress = Callable[[str], object]


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None and progress(message) is False:
        raise Cancelled()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _input_checksums(cache: Path, manifest: Manifest, source: Source, recipe: DerivedFile) -> dict[str, str]:
    """Role -> SHA-256 of each input; derived inputs by their sidecar, template files by the manifest."""
    paths = cached_paths(cache, source)
    checksums: dict[str, str] = {}
    for role in recipe.inputs:
        fetched = source.file(role)
        if fetched is not None:
            checksums[role] = fetched.sha256
            continue
        record = _read_sidecar(paths[role])
        if record is None:
            raise InputError(f"{source.id}/{role} has not been derived; cannot make {recipe.role}")
        checksums[role] = record["sha256"]
    template_id = recipe.parameters.get("template")
    if template_id is not None:
        template = manifest.sources[template_id]
        for key in ("template_image", "template_mask"):
            item = template.file(recipe.parameters[key])
            if item is None:
                raise InputError(f"template {template_id} has no '{recipe.parameters[key]}' file for {source.id}")
            checksums[f"{template_id}/{item.role}"] = item.sha256
    return checksums


def _read_sidecar(path: Path) -> dict | None:
    try:
        record = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "sha256" in record and "recipe_key" in record else None


def recipe_key(recipe: DerivedFile, checksums: dict[str, str]) -> str:
    text = json.dumps({"method": recipe.method, "parameters": recipe.parameters, "inputs": checksums,
                       "version": DERIVATION_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def is_current(path: Path, key: str) -> bool:
    record = _read_sidecar(path)
    return record is not None and record["recipe_key"] == key and path.is_file() and sha256_file(path) == record["sha256"]


def _make(cache: Path, manifest: Manifest, source: Source, recipe: DerivedFile) -> Volume:
    paths = cached_paths(cache, source)
    inputs = [paths[role] for role in recipe.inputs]
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: missing; cannot make {source.id}/{recipe.role}")
    parameters = recipe.parameters
    if recipe.method == "siemens_mosaic_mean":
        return mean_of_mosaics(inputs, parameters.get("slice_count"))
    subject = read_volume(inputs[0])
    if recipe.method == "whole_field_of_view":
        return whole_field_mask(subject)
    if recipe.method == "tissue_classes":
        return tissue_classes(subject, read_volume(inputs[1]), int(parameters.get("classes", 3)))
    if recipe.method == "template_mask":
        template = manifest.sources[parameters["template"]]
        template_paths = cached_paths(cache, template)
        image = read_volume(template_paths[parameters["template_image"]])
        template_mask = read_volume(template_paths[parameters["template_mask"]])
        mask = template_mask_on_subject(subject.with_array(subject.array.astype(np.float32)), image, template_mask,
                                        int(parameters.get("seed", 0)))
        low, high = parameters.get("volume_ml_range", (0.0, float("inf")))
        volume_ml = mask_volume_ml(mask)
        if not low <= volume_ml <= high:
            raise InputError(f"{source.id}: the registered brain mask holds {volume_ml:.0f} ml, outside the plausible "
                             f"{low}-{high} ml; the template registration failed")
        return mask
    raise InputError(f"unknown derivation method '{recipe.method}'")


def _store(path: Path, volume: Volume, recipe: DerivedFile, key: str, checksums: dict[str, str]) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(volume, path, description=f"XDiffusion derived: {recipe.method}")
    record = {
        "source": recipe.source, "role": recipe.role, "method": recipe.method, "parameters": recipe.parameters,
        "description": recipe.description, "inputs": checksums, "recipe_key": key, "sha256": sha256_file(path),
        "shape": list(volume.geometry.shape), "spacing_mm": [round(float(s), 6) for s in volume.geometry.spacing],
        "dtype": str(volume.array.dtype), "simpleitk": sitk.Version_VersionString(),
    }
    if recipe.role == "brain_mask":
        record["volume_ml"] = round(mask_volume_ml(volume), 1)
    with atomic_output(sidecar_path(path)) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def derive_files(cache: Path, manifest: Manifest, source_ids: Iterable[str], progress: Progress | None = None) -> list[str]:
    """Make every stale derived file of ``source_ids``; return one message per source that failed (empty: all ok)."""
    failures = []
    for source_id in source_ids:
        source = manifest.sources[source_id]
        paths = cached_paths(cache, source)
        for recipe in source.derived:
            path = paths[recipe.role]
            try:
                checksums = _input_checksums(cache, manifest, source, recipe)
                key = recipe_key(recipe, checksums)
                if is_current(path, key):
                    continue
                _report(progress, f"{source_id}: making {recipe.role} ({recipe.method})")
                record = _store(path, _make(cache, manifest, source, recipe), recipe, key, checksums)
                extra = f", {record['volume_ml']} ml" if "volume_ml" in record else ""
                _report(progress, f"{source_id}: {recipe.role} ready ({'x'.join(map(str, record['shape']))}{extra})")
            except InputError as error:
                failures.append(f"{source_id}/{recipe.role}: {error}")
                _report(progress, f"{source_id}: {recipe.role} not made ({error})")
                break  # later recipes of this source may need this one
    return failures


def derived_record(cache: Path, source: Source, role: str) -> dict | None:
    """The provenance sidecar of a derived file, or None when it has not been made."""
    return _read_sidecar(cached_paths(cache, source)[role])

