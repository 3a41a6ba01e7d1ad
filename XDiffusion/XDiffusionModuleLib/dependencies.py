"""What must be in Slicer's Python before a run, and how it gets there (the way SlicerTotalSegmentator does it).

- torch >= 2.1 comes only through the PyTorch extension's PyTorchUtils, which picks the build for the GPU driver; pip
  never resolves torch here (it could pull a CPU-only or a mismatched CUDA build).
- SimpleITK is Slicer's own build (Slicer's image IO depends on it) and numpy is loaded by Slicer itself: pip may
  neither replace nor upgrade them, so every pip call pins them to the installed versions in a constraints file.
- The library ships inside the extension. Its installed version is compared with the bundled one, and it is
  reinstalled (`--no-deps`: its requirements are installed separately, as above) when the extension brings a newer
  one. Its own requirements are checked one by one against their minimum versions.
Versions are read from package metadata: nothing is imported, so checking is instant and loads no torch into Slicer.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import bundle
from .childprocess import popen_options
from .jobs import DONE, FAILED, Job

TORCH_REQUIREMENT = ">=2.1"  # PyTorchUtilsLogic.installTorch(torchVersionRequirement=...)
KEPT_OUT_OF_PIP = ("torch", "SimpleITK")  # torch: PyTorchUtils; SimpleITK: Slicer's own build
PINNED = ("torch", "SimpleITK", "numpy")  # whatever pip installs must fit the versions Slicer already has
MODULE_REQUIREMENTS = ("psutil>=5.7",)  # the module's own: cancel ends the whole process tree
LIBRARY = "xdiffusion"
IMPORT_NAMES = {"scikit-image": "skimage", "pyyaml": "yaml", "pillow": "PIL", "simpleitk": "SimpleITK"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfies(version: Optional[str], specifier: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        return False
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class Check:
    name: str
    required: str  # a version specifier
    installed: Optional[str]
    ok: bool
    how: str  # "PyTorchUtils", "pip", "bundled library" or "Slicer" (cannot be fixed by installing)

    def describe(self) -> str:
        have = self.installed or "not installed"
        return f"{self.name} {self.required}: {have}" + ("" if self.ok else f" (install through {self.how})")


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    bundled_version: str

    @property
    def missing(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    @property
    def ready(self) -> bool:
        return not self.missing

    @property
    def torch_needed(self) -> bool:
        return any(check.how == "PyTorchUtils" for check in self.missing)

    @property
    def library_needed(self) -> bool:
        return any(check.how == "bundled library" for check in self.missing)

    @property
    def pip_requirements(self) -> list[str]:
        return [f"{check.name}{check.required}" for check in self.missing if check.how == "pip"]

    @property
    def blocked(self) -> list[Check]:
        """What installing cannot fix: Slicer's own packages older than required."""
        return [check for check in self.missing if check.how == "Slicer"]

    def summary(self) -> str:
        if self.ready:
            return f"Python packages ready (xdiffusion {self.check(LIBRARY).installed})."
        return "To install: " + "; ".join(check.describe() for check in self.missing)

    def check(self, name: str) -> Optional[Check]:
        return next((c for c in self.checks if canonical(c.name) == canonical(name)), None)


def check(library_folder: Path, version_of: Callable[[str], Optional[str]] = installed_version,
          marker_environment: Optional[dict] = None) -> Report:
    """Every requirement against what is installed, without importing anything."""
    from packaging.requirements import Requirement

    bundled = bundle.library_version(library_folder)
    torch = version_of("torch")
    checks = [Check("torch", TORCH_REQUIREMENT, torch, satisfies(torch, TORCH_REQUIREMENT), "PyTorchUtils")]
    seen = set()
    for text in [*bundle.library_requirements(library_folder), *MODULE_REQUIREMENTS]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(marker_environment):
            continue
        if canonical(requirement.name) == "torch" or canonical(requirement.name) in seen:
            continue  # torch: checked above, against the module's own minimum; a package both list: checked once
        seen.add(canonical(requirement.name))
        specifier = str(requirement.specifier)
        have = version_of(requirement.name)
        how = "Slicer" if canonical(requirement.name) == canonical("SimpleITK") else "pip"
        checks.append(Check(requirement.name, specifier, have, satisfies(have, specifier) if specifier else have is not None, how))
    library = version_of(LIBRARY)
    checks.append(Check(LIBRARY, f">={bundled}", library, satisfies(library, f">={bundled}"), "bundled library"))
    return Report(tuple(checks), bundled)


def constraints(version_of: Callable[[str], Optional[str]] = installed_version) -> str:
    """Pins for pip: the installed torch, SimpleITK and numpy, so pip fails rather than replace them."""
    pins = [f"{name}=={version}" for name in PINNED for version in [version_of(name)] if version]
    return "\n".join(pins) + "\n"


def pip_commands(python: Sequence[str], report: Report, library_copy: Optional[Path], constraints_file: Path) -> list[list[str]]:
    """The pip calls that bring the report to ready (after PyTorchUtils has installed torch): the missing
    requirements under the constraints, then the bundled library with `--no-deps`."""
    pip = [*python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    commands = []
    requirements = [r for r in report.pip_requirements if canonical(re.split(r"[<>=!~;\[ ]", r)[0]) not in
                    {canonical(name) for name in KEPT_OUT_OF_PIP}]
    if requirements:
        commands.append([*pip, "--constraint", str(constraints_file), *requirements])
    if report.library_needed:
        if library_copy is None:
            raise ValueError("the bundled library is needed but there is no copy of it to install")
        commands.append([*pip, "--no-deps", "--upgrade", str(library_copy)])
    return commands


def copy_library(folder: Path, destination: Path) -> Path:
    """A writable copy of the bundled library to install from (pip builds in the source folder, and the extension's
    folder may be read-only)."""
    target = Path(destination) / bundle.LIBRARY_FOLDER
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    return target


def restart_needed(changed: Sequence[str], loaded_modules) -> bool:
    """Whether Slicer must restart: a package pip changed was already imported into Slicer's own process."""
    for name in changed:
        module = IMPORT_NAMES.get(canonical(name), canonical(name).replace("-", "_"))
        if module in loaded_modules:
            return True
    return False


class InstallJob(Job):
    """The pip calls, one after the other in a child process each; the panel shows the latest line of pip's output."""

    what = "The installation"

    def __init__(self, commands: Sequence[Sequence[str]], env: Optional[dict] = None,
                 on_end: Optional[Callable[[], None]] = None):
        super().__init__(env)
        self.commands = [list(c) for c in commands]
        self.step = 0
        self.on_end = on_end

    def start(self) -> "InstallJob":
        if not self.commands:
            self._finish(DONE)
            return self
        self._start_step()
        return self

    def _start_step(self) -> None:
        self.fraction = self.step / len(self.commands)
        self.status = f"Installing Python packages (step {self.step + 1} of {len(self.commands)})…"
        self._run(self.commands[self.step])

    def _on_line(self, stream: str, line: str) -> None:
        if line.strip():
            self.status = f"Installing (step {self.step + 1} of {len(self.commands)}): {line.strip()[:120]}"

    def _on_step_end(self, process) -> None:
        if process.returncode != 0:
            last = next((line for line in reversed(process.stderr + process.stdout) if line.strip()), "")
            self._finish(FAILED, f"pip stopped with exit code {process.returncode}: {last.strip()[:300]}")
            return
        self.step += 1
        if self.step < len(self.commands):
            self._start_step()
            return
        self.fraction = 1.0
        self.status = "Python packages installed."
        self._finish(DONE)

    def _cleanup(self) -> None:
        if self.on_end is not None:
            self.on_end()


class Installer:
    """The whole installation, in order: check, confirm, torch through PyTorchUtils, then the pip job. Slicer's dialog
    and PyTorchUtils come in as callables, so the sequence runs (and is tested) without Slicer."""

    def __init__(self, library_folder: Path, python: Sequence[str], temp_root: Optional[str] = None,
                 version_of: Callable[[str], Optional[str]] = installed_version, env: Optional[dict] = None):
        self.library_folder = Path(library_folder)
        self.python = list(python)
        self.temp_root = temp_root
        self.version_of = version_of
        self.env = env
        self.changed: list[str] = []  # what this session installed or replaced
        self.pins = ""  # the constraints the last pip job ran under

    def check(self) -> Report:
        return check(self.library_folder, self.version_of)

    def start(self, confirm: Callable[[Report], bool], install_torch: Callable[[str], bool],
              show_status: Callable[[str], None] = lambda text: None, loaded_modules=None) -> Optional[InstallJob]:
        """None when nothing is missing or the user declined; else the running pip job. ``install_torch`` gets the
        version requirement and returns False when the user declined."""
        loaded_modules = sys.modules if loaded_modules is None else loaded_modules
        report = self.check()
        if report.ready:
            return None
        if report.blocked:
            raise RuntimeError("This Slicer's " + ", ".join(c.describe() for c in report.blocked)
                               + " is older than XDiffusion needs; install a newer Slicer.")
        if not confirm(report):
            return None
        if report.torch_needed:
            torch_was_loaded = "torch" in loaded_modules
            show_status(f"Installing PyTorch {TORCH_REQUIREMENT} through the PyTorch extension (several minutes; details "
                        f"in the Python console)…")
            if not install_torch(TORCH_REQUIREMENT):
                return None
            report = self.check()
            torch = report.check("torch")
            if not torch.ok:
                raise RuntimeError(f"PyTorch {torch.installed} is installed but XDiffusion needs torch{TORCH_REQUIREMENT}: "
                                   f"reinstall it from the PyTorch Utils module with that version requirement.")
            if torch_was_loaded:
                self.changed.append("torch")
        workdir = Path(tempfile.mkdtemp(prefix="XDiffusion-install-", dir=self.temp_root))
        constraints_file = workdir / "constraints.txt"
        self.pins = constraints(self.version_of)
        constraints_file.write_text(self.pins, encoding="utf-8")
        library_copy = copy_library(self.library_folder, workdir) if report.library_needed else None
        commands = pip_commands(self.python, report, library_copy, constraints_file)
        self.changed += [c.name for c in report.missing if c.how in ("pip", "bundled library")]
        show_status(f"Installing Python packages ({len(commands)} step{'s' if len(commands) != 1 else ''})…")
        return InstallJob(commands, self.env, on_end=lambda: shutil.rmtree(workdir, ignore_errors=True)).start()

    def restart_needed(self, loaded_modules=None) -> bool:
        return restart_needed(self.changed, sys.modules if loaded_modules is None else loaded_modules)


def detect_compute_device(python: Sequence[str], timeout: float = 120.0) -> dict:
    """Ask a child interpreter what torch sees: {'torch': version or None, 'gpu': name or None, 'note': text}.

    A child keeps torch (and its CUDA libraries) out of Slicer's own process. The note explains the most common
    complaint: an NVIDIA driver is present but the installed torch is a CPU-only build.
    """
    probe = ("import json, torch; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None; "
             "print(json.dumps({'torch': torch.__version__, 'gpu': gpu, 'cuda_build': torch.version.cuda}))")
    try:
        done = subprocess.run([*python, "-c", probe], capture_output=True, text=True, timeout=timeout, **popen_options())
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (subprocess.TimeoutExpired, OSError, json.JSONDecodeError, IndexError):
        info = {}
    if not info:
        return {"torch": None, "gpu": None, "note": "PyTorch is not installed yet: click Install dependencies."}
    if info.get("gpu"):
        return {**info, "note": f"GPU: {info['gpu']} (PyTorch {info['torch']})"}
    if shutil.which("nvidia-smi") and not info.get("cuda_build"):
        note = "An NVIDIA driver is present but this PyTorch is a CPU-only build: reinstall it with the PyTorch Utils module."
    else:
        note = "No GPU found: the reconstruction runs on the CPU (slower; choose the 'fast' quality)."
    return {**info, "note": note}
