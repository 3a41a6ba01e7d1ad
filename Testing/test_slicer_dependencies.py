"""The module's dependency checks and install steps (item 7), the SlicerTotalSegmentator way: torch only through
PyTorchUtils with its minimum version, SimpleITK and numpy never replaced by pip, the installed library compared with
the bundled one, and a restart offered only when a changed package was already loaded.

Versions come from a lookup the tests replace; the pip steps run as real child processes (of `python -c`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XDiffusion"))

from XDiffusionModuleLib import bundle, dependencies  # noqa: E402
from XDiffusionModuleLib.jobs import DONE, FAILED  # noqa: E402

LIBRARY = ROOT / "XDiffusionLib"
BUNDLED = bundle.library_version(LIBRARY)
SLICER_5_8 = {"torch": "2.4.1+cu121", "SimpleITK": "2.4.0", "numpy": "1.26.4", "diffusers": "0.31.0",
              "accelerate": "1.0.1", "safetensors": "0.4.5", "scipy": "1.14.1", "nibabel": "5.3.2",
              "scikit-image": "0.24.0", "torchio": "0.20.1", "pyyaml": "6.0.2", "matplotlib": "3.9.2", "monai": "1.4.0", "psutil": "6.1.0",
              "xdiffusion": BUNDLED}


def versions(**changes):
    table = {**SLICER_5_8, **{name.replace("_", "-"): value for name, value in changes.items()}}
    return lambda name: table.get(name, table.get(name.lower()))


def test_the_bundled_library_is_read_without_importing_it():
    assert BUNDLED.count(".") >= 1
    requirements = bundle.library_requirements(LIBRARY)
    assert "torch>=2.1" in requirements and any(r.startswith("SimpleITK") for r in requirements)
    assert bundle.library_folder(ROOT / "XDiffusion") == LIBRARY


def test_a_complete_installation_is_ready():
    report = dependencies.check(LIBRARY, versions())
    assert report.ready and report.summary().startswith("Python packages ready")


def test_torch_comes_only_through_pytorchutils_with_its_minimum():
    missing = dependencies.check(LIBRARY, versions(torch=None))
    old = dependencies.check(LIBRARY, versions(torch="2.0.1+cpu"))
    for report in (missing, old):
        assert report.torch_needed and not report.ready
        assert not any(r.lower().startswith("torch") and not r.lower().startswith("torchio") for r in report.pip_requirements)
        commands = dependencies.pip_commands(["python"], report, None, Path("constraints.txt"))
        assert not any(arg.startswith("torch") and not arg.startswith("torchio") for c in commands for arg in c[3:])
    assert dependencies.TORCH_REQUIREMENT == ">=2.1"
    assert "PyTorchUtils" in old.check("torch").describe()


def test_slicers_simpleitk_is_never_replaced():
    report = dependencies.check(LIBRARY, versions(SimpleITK="2.2.0rc2.dev368"))
    assert [c.name for c in report.blocked] == ["SimpleITK"] and report.pip_requirements == []
    assert dependencies.check(LIBRARY, versions(SimpleITK="2.5.0rc1.dev12")).ready  # Slicer's own pre-release builds
    pins = dependencies.constraints(versions())
    assert pins.split() == ["torch==2.4.1+cu121", "SimpleITK==2.4.0", "numpy==1.26.4"]


def test_missing_and_outdated_requirements_install_under_the_pins():
    report = dependencies.check(LIBRARY, versions(diffusers="0.25.0", torchio=None, psutil=None))
    assert sorted(report.pip_requirements) == ["diffusers>=0.30", "psutil>=5.7", "torchio>=0.19"]
    assert not report.library_needed
    commands = dependencies.pip_commands(["PythonSlicer"], report, None, Path("/tmp/c.txt"))
    assert commands == [["PythonSlicer", "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                         "--constraint", "/tmp/c.txt", "diffusers>=0.30", "psutil>=5.7", "torchio>=0.19"]]  # the library's order; psutil once


def test_the_library_is_upgraded_when_the_extension_brings_a_newer_one(tmp_path):
    older = dependencies.check(LIBRARY, versions(xdiffusion="0.0.1"))
    missing = dependencies.check(LIBRARY, versions(xdiffusion=None))
    newer = dependencies.check(LIBRARY, versions(xdiffusion="99.0"))  # a developer's editable install
    assert older.library_needed and missing.library_needed and not newer.library_needed
    copy = dependencies.copy_library(LIBRARY, tmp_path)
    assert (copy / "pyproject.toml").is_file() and not list(copy.glob("*.egg-info"))
    commands = dependencies.pip_commands(["python"], older, copy, tmp_path / "c.txt")
    assert commands == [["python", "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                         "--no-deps", "--upgrade", str(copy)]]


def test_the_real_environment_is_checked_from_metadata():
    report = dependencies.check(LIBRARY)
    assert report.check("xdiffusion").installed == BUNDLED and report.check("torch").ok


def test_a_restart_is_offered_only_for_packages_slicer_had_loaded():
    assert dependencies.restart_needed(["scikit-image"], {"skimage": object()})
    assert dependencies.restart_needed(["xdiffusion"], {"xdiffusion"})
    assert not dependencies.restart_needed(["diffusers", "torchio"], {"numpy", "vtk"})


def test_the_install_job_runs_its_steps_and_reports_pip_lines():
    ended = []
    job = dependencies.InstallJob([[sys.executable, "-c", "print('Collecting diffusers')"],
                                   [sys.executable, "-c", "print('Successfully installed diffusers-0.31.0')"]],
                                  on_end=lambda: ended.append(True)).start()
    assert "step 1 of 2" in job.status
    assert job.wait(60) == DONE and job.fraction == 1.0 and ended == [True]
    assert "Successfully installed" in job.log_text
    failing = dependencies.InstallJob([[sys.executable, "-c", "import sys; print('ERROR: no matching distribution', "
                                                               "file=sys.stderr); sys.exit(1)"]]).start()
    assert failing.wait(60) == FAILED and "no matching distribution" in failing.error


def test_device_detection_names_what_torch_sees():
    info = dependencies.detect_compute_device([sys.executable])
    assert info["torch"] and info["note"]
    assert dependencies.detect_compute_device([sys.executable, "-c", "raise SystemExit(1)", "--"])["torch"] is None


def echo_python(log: Path) -> list[str]:
    """A stand-in interpreter for the pip steps: records each command line instead of installing anything."""
    code = f"import sys, json; open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')"
    return [sys.executable, "-c", code]


def test_the_installer_puts_torch_through_pytorchutils_first_then_pip(tmp_path):
    import json

    installed = {**SLICER_5_8, "torch": "2.0.1", "diffusers": None, "xdiffusion": None}
    asked, statuses = [], []

    def install_torch(requirement):
        asked.append(requirement)
        installed["torch"] = "2.5.1+cu124"
        return True

    log = tmp_path / "pip.jsonl"
    installer = dependencies.Installer(LIBRARY, echo_python(log), str(tmp_path), lambda name: installed.get(name))
    job = installer.start(lambda report: True, install_torch, statuses.append, loaded_modules={"torch": object()})
    assert asked == [">=2.1"] and "PyTorch >=2.1" in statuses[0]
    assert job.wait(60) == DONE
    pip_calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [call[:3] for call in pip_calls] == [["-m", "pip", "install"]] * 2
    assert "diffusers>=0.30" in pip_calls[0] and "--constraint" in pip_calls[0]
    assert installer.pins == "torch==2.5.1+cu124\nSimpleITK==2.4.0\nnumpy==1.26.4\n"
    assert "--no-deps" in pip_calls[1] and pip_calls[1][-1].endswith("XDiffusionLib")
    assert not any(arg.startswith("torch") and not arg.startswith("torchio") for call in pip_calls for arg in call)
    assert installer.changed[0] == "torch" and installer.restart_needed({"torch": object()})
    assert not list(tmp_path.glob("XDiffusion-install-*"))  # the copy and constraints are removed afterwards


def test_the_installer_stops_when_declined_or_when_torch_stays_too_old(tmp_path):
    installed = {**SLICER_5_8, "torch": None}
    installer = dependencies.Installer(LIBRARY, [sys.executable], str(tmp_path), lambda name: installed.get(name))
    assert installer.start(lambda report: False, lambda requirement: True) is None  # declined at the confirmation
    assert installer.start(lambda report: True, lambda requirement: False) is None  # declined in PyTorchUtils' dialog

    def old_torch(requirement):
        installed["torch"] = "2.0.0"
        return True

    with pytest.raises(RuntimeError, match="needs torch>=2.1"):
        installer.start(lambda report: True, old_torch)
    installed.update(SimpleITK="2.1.0")
    with pytest.raises(RuntimeError, match="install a newer Slicer"):
        installer.start(lambda report: True, old_torch)
    ready = dependencies.Installer(LIBRARY, [sys.executable], str(tmp_path), versions())
    assert ready.start(lambda report: pytest.fail("nothing to confirm"), lambda requirement: pytest.fail("no torch")) is None
