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


def test_only_the_module_file_sits_at_the_top_of_the_module_folder():
    """Slicer's scripted-module factory loads every .py at the top of a module folder as a module and reports
    "class ... was not found" for one that defines no class of its name; helpers belong in a subpackage."""
    top = sorted(p.name for p in MODULE.glob("*.py"))
    assert top == ["XDiffusion.py"], f"module files Slicer would try to load as modules: {top}"
    packages = [p for p in MODULE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert [p.name for p in packages] == ["XDiffusionModuleLib"]  # not XDiffusionLib: the library's folder installs beside it


def test_every_module_file_is_listed(manifest):
    listed = {Path(p) for p in manifest["script"] + manifest["resource"]}
    on_disk = {p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert on_disk - listed == set(), "files in XDiffusion/ that the extension would not install"
    assert manifest["module"] == ["XDiffusion"] and manifest["generic_tests"] == ["XDiffusion"]
    assert manifest["unittest"] == [str(MODULE / "XDiffusion.py")]


def test_metadata_is_set_and_matches_the_extensions_index_entry(manifest):
    assert manifest["EXTENSION_NAME"] == ["XDiffusion"] and manifest["cpack"] == ["XDiffusion"]
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL"):
        assert manifest[key][0].startswith("https://"), key
    assert "not for diagnosis" in manifest["EXTENSION_DESCRIPTION"][0]
    entry = json.loads((ROOT / "ExtensionsIndex" / "XDiffusion.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
                          "scm_type", "scm_url", "tier"}  # the schema allows no other keys
    assert entry["category"] and entry["scm_url"].startswith("https://")
    assert entry["build_dependencies"] == manifest["EXTENSION_DEPENDS"][0].split(";")
    # the icon the URL points at is in the repository, at that path
    icon = manifest["EXTENSION_ICONURL"][0]
    assert (ROOT / icon.split("/main/", 1)[1]).is_file(), icon


def test_no_mock_up_is_shown_as_a_screenshot(manifest):
    """The Extension Manager shows EXTENSION_SCREENSHOTURLS as screenshots of Slicer: only a real one may go there
    (none is taken yet), and the old mock-up of the panel, with invented results, is gone everywhere."""
    assert manifest["EXTENSION_SCREENSHOTURLS"] == [""]
    assert not (ROOT / "docs" / "images" / "slicer_panel.png").exists()
    for path in [ROOT / "README.md", ROOT / "CMakeLists.txt", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "slicer_panel.png" not in path.read_text(encoding="utf-8"), path


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
