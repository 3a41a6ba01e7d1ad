"""The `xdiffusion` library the extension ships (folder `XDiffusionLib`, with its model weights and the sample data):
where it is, its version and its requirements, read from its `pyproject.toml` without importing it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

LIBRARY_FOLDER = "XDiffusionLib"  # installed beside the module; at the repository root in a source checkout
SAMPLE_FILES = ("sample_t1.nii.gz", "sample_t1_seg.nii.gz")
SAMPLE_FOLDER = Path(LIBRARY_FOLDER) / "xdiffusion" / "sample_data"  # the library's own demo sample, one copy
MODEL_FOLDER = Path(LIBRARY_FOLDER) / "xdiffusion" / "default_model"  # the model the CLI uses without --model


def library_folder(module_dir: Path) -> Optional[Path]:
    for folder in (Path(module_dir) / LIBRARY_FOLDER, Path(module_dir).parent / LIBRARY_FOLDER):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def _project_table(folder: Path) -> str:
    text = (Path(folder) / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    if match is None:
        raise ValueError(f"{folder}/pyproject.toml has no [project] table")
    return match.group(1)


def library_version(folder: Path) -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', _project_table(folder), flags=re.M)
    if match is None:
        raise ValueError(f"{folder}/pyproject.toml gives no version")
    return match.group(1)


def library_requirements(folder: Path) -> list[str]:
    """The `dependencies` list of the library's `pyproject.toml` (PEP 508 strings, comments dropped)."""
    match = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", _project_table(folder), flags=re.M | re.S)
    if match is None:
        return []
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    return re.findall(r'"([^"]+)"', body)


def bundled_model_folder(module_dir: Path) -> Optional[Path]:
    """The shipped model's folder inside the bundled library; None when it is not there."""
    for folder in (Path(module_dir) / MODEL_FOLDER, Path(module_dir).parent / MODEL_FOLDER):
        if (folder / "model_index.json").is_file():
            return folder
    return None


def sample_data_files(module_dir: Path) -> Optional[tuple[Path, Path]]:
    """The shipped sample (T1 volume, BraTS labels) inside the bundled library; None when they are not there."""
    for folder in (Path(module_dir) / SAMPLE_FOLDER, Path(module_dir).parent / SAMPLE_FOLDER):
        files = tuple(folder / name for name in SAMPLE_FILES)
        if all(f.is_file() for f in files):
            return files  # type: ignore[return-value]
    return None
