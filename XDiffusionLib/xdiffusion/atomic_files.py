"""Outputs that appear whole or not at all: a hidden temporary beside the target (``.NAME.HOST-PID.RANDOM.partSUFFIX``),
flushed and renamed into place (`atomic_output`), and the clean-up of temporaries that a cancel or a dead writer left.
No image format here: `io.py` writes volumes through these."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError


def file_suffix(path: Path) -> str:
    """The suffix that names a file's format: ``.nii.gz`` for gzipped NIfTI, else the last one, lower case."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _process_is_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists (POSIX; never called on Windows)
    except ProcessLookupError:
        return True
    except OSError:  # alive but someone else's, or unknown: keep its file
        return False
    return False


def _remove_stale_parts(target: Path, folder: Path) -> None:
    """Delete this target's hidden ``.part`` files left by writers on this host that no longer run (SIGKILL, power
    loss). Only files named for ``target`` by a dead process of this host are touched, so concurrent writers into
    other outputs (or on other hosts sharing the folder) are never disturbed."""
    if os.name != "posix":
        return
    pattern = re.compile(re.escape(f".{target.name}.{_HOST}-") + r"(\d+)\.[A-Za-z0-9_]+" + re.escape(f".part{file_suffix(target)}") + "$")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and _process_is_gone(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def temporary_beside(target: Path) -> Path:
    """A new hidden temporary beside ``target`` (``.NAME.HOST-PID.RANDOM.partSUFFIX``), after removing this target's
    stale ones."""
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{target}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{target}: output folder {folder} is not writable")
    _remove_stale_parts(target, folder)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.{_HOST}-{os.getpid()}.",
                                             suffix=f".part{file_suffix(target)}", dir=folder)
    except OSError as error:
        raise InputError(f"{target}: cannot write into {folder} ({error.strerror or error})") from None
    os.close(handle)
    return Path(temporary)


def remove_own_parts(target: Path) -> None:
    """Delete this process's temporaries for ``target``, also one whose name a cancel (SIGTERM, Ctrl-C) kept from
    being recorded: the signal can arrive between the file's creation and the caller's bookkeeping."""
    folder = target.parent if str(target.parent) else Path(".")
    prefix, suffix = f".{target.name}.{_HOST}-{os.getpid()}.", f".part{file_suffix(target)}"
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def seal(temporary: Path) -> None:
    """Make a written temporary ready to be renamed into place: normal permissions, data on disk."""
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes the file private (0600); outputs are not
    with open(temporary, "r+b") as written:  # writable: Windows cannot flush a read-only handle
        os.fsync(written.fileno())  # the data is on disk before the name points at it


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary (``.NAME.HOST-PID.RANDOM.partSUFFIX``, hidden) keeps the real suffix so writers pick the right
    format. An exception, Ctrl-C or SIGTERM removes it; a crash or SIGKILL leaves the old file (or nothing) at
    ``path``, never a partial one, plus at most a stale ``.part`` file, which the next write of the same ``path``
    deletes once its writer process is gone.
    """
    target = Path(path)
    done = False
    try:
        temporary_path = temporary_beside(target)
        yield temporary_path
        seal(temporary_path)
        os.replace(temporary_path, target)
        done = True
    finally:
        if not done:
            remove_own_parts(target)
