"""The extension's CMake files, configured by the real `cmake` against a test-only Slicer stand-in
(Testing/cmake_slicer_standin): every listed script and resource exists, every module file is listed, the metadata is
set, and the ExtensionsIndex entry agrees with it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "XDiffusion"
STANDIN = Path(__file__).resolve().parent / "cmake_slicer_standin"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> dict[str, list[str]]:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("cmake")
    done = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={STANDIN}", "-DBUILD_TESTING=ON"],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    entries: dict[str, list[str]] = {}
    for line in (build / "standin_manifest.tsv").read_text(encoding="utf-8").splitlines():
        kind, value = line.split("\t", 1)
        entries.setdefault(kind, []).append(value)
    return entries


def test_every_module_file_is_listed(manifest):
    listed = {Path(p) for p in manifest["script"] + manifest["resource"]}
    on_disk = {p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert on_disk - listed == set(), "files in XDiffusion/ that the extension would not install"
    assert manifest["module"] == ["XDiffusion"] and manifest["generic_tests"] == ["XDiffusion"]
    assert manifest["unittest"] == [str(MODULE / "XDiffusion.py")]


def test_metadata_is_set_and_matches_the_extensions_index_entry(manifest):
    assert manifest["EXTENSION_NAME"] == ["XDiffusion"] and manifest["cpack"] == ["XDiffusion"]
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert manifest[key][0].startswith("https://"), key
    assert "not for diagnosis" in manifest["EXTENSION_DESCRIPTION"][0]
    entry = json.loads((ROOT / "ExtensionsIndex" / "XDiffusion.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
                          "scm_type", "scm_url", "tier"}  # the schema allows no other keys
    assert entry["category"] and entry["scm_url"].startswith("https://")
    assert entry["build_dependencies"] == manifest["EXTENSION_DEPENDS"][0].split(";")
    # the icon and screenshot the URLs point at are in the repository, at those paths
    for url in (manifest["EXTENSION_ICONURL"][0], manifest["EXTENSION_SCREENSHOTURLS"][0]):
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url


def test_the_icon_is_128_pixels_square():
    from PIL import Image

    for path in (ROOT / "XDiffusion.png", MODULE / "Resources" / "Icons" / "XDiffusion.png"):
        assert Image.open(path).size == (128, 128)


def test_the_bundled_library_ships_with_its_package_metadata(manifest):
    directories = [Path(p).resolve() for p in manifest["install_directory"]]
    assert directories == [ROOT / "XDiffusionLib"] and (ROOT / "XDiffusionLib" / "pyproject.toml").is_file()


def test_the_sample_data_ships_inside_the_installed_library(manifest):
    library = Path(manifest["install_directory"][0]).resolve()
    files = [library / "xdiffusion" / "sample_data" / name for name in ("sample_t1.nii.gz", "sample_t1_seg.nii.gz")]
    assert all(p.is_file() and p.stat().st_size > 0 for p in files)
