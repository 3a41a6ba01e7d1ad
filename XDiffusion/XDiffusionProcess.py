"""The reconstruction runs in a child process (`python -m xdiffusion.cli reconstruct --progress json`), so Slicer's
GUI stays responsive and a crash in torch cannot take Slicer down. No Qt here: the Widget polls `poll()` from a
QTimer, and the tests drive the same class against the real CLI.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

CANCELLED_EXIT_CODE = 130
CANCEL_GRACE_S = 5.0  # SIGTERM lets the CLI stop cleanly (exit 130); after this, the process is killed
QUALITY_PRESETS = {"fast": {"views": 2, "steps": 8}, "balanced": {"views": 4, "steps": 12}, "best": {"views": 8, "steps": 25}}
DEVICE_FLAGS = {"auto": "auto", "gpu": "cuda", "cpu": "cpu"}
OUTPUT_NAMES = {"image": "reconstruction.nrrd", "segmentation": "tumour_labels.nrrd", "uncertainty": "uncertainty.nrrd"}
INPUT_NAME = "input.nrrd"  # NRRD keeps the grid to 1e-12; NIfTI would round it to float32


@dataclass(frozen=True)
class Progress:
    fraction: float
    eta_s: Optional[int]
    stage: str


def build_reconstruct_arguments(workdir: Path, plane: str, slice_indices: Sequence[int], quality: str = "balanced",
                                device: str = "auto", model_dir: Optional[str] = None, method: str = "xdiffusion") -> list[str]:
    """The CLI arguments for one run whose input and outputs all live in ``workdir`` (deleted afterwards)."""
    if quality not in QUALITY_PRESETS:
        raise ValueError(f"unknown quality {quality!r}; use one of {', '.join(QUALITY_PRESETS)}")
    arguments = ["reconstruct", str(workdir / INPUT_NAME), "-o", str(workdir / OUTPUT_NAMES["image"]),
                 "--plane", plane, "--slice-index", *[str(int(i)) for i in slice_indices], "--method", method,
                 "--progress", "json"]
    if method == "xdiffusion":
        preset = QUALITY_PRESETS[quality]
        arguments += ["--views", str(preset["views"]), "--steps", str(preset["steps"]), "--device", DEVICE_FLAGS[device],
                      "--segmentation-output", str(workdir / OUTPUT_NAMES["segmentation"]),
                      "--uncertainty-output", str(workdir / OUTPUT_NAMES["uncertainty"])]
        if model_dir:
            arguments += ["--model", str(model_dir)]
    return arguments


def parse_progress(line: str) -> Optional[Progress]:
    """A `--progress json` line, or None for any other line (warnings, the final `wrote ...`, `error: ...`)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "progress" not in record:
        return None
    eta = record.get("eta_s")
    return Progress(float(record["progress"]), None if eta is None else int(eta), str(record.get("stage", "")))


def format_eta(seconds: Optional[int]) -> str:
    if seconds is None:
        return "estimating time left"
    minutes, rest = divmod(int(seconds), 60)
    return f"about {minutes} min {rest:02d} s left" if minutes else f"about {rest} s left"


class ReconstructionProcess:
    """One CLI run: a reader thread feeds its output lines to a queue; `poll()` turns them into progress events.

    The run owns ``workdir`` (input and outputs) and removes it when cancelled or when `cleanup()` is called, so no
    patient data stays behind in the temporary folder.
    """

    def __init__(self, python: Sequence[str], arguments: Sequence[str], workdir: Path, env: Optional[dict] = None):
        self.command = [*python, "-m", "xdiffusion.cli", *arguments]
        self.workdir = Path(workdir)
        self.env = env
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: list[str] = []
        self.latest: Optional[Progress] = None
        self.returncode: Optional[int] = None
        self.cancelled = False
        self.started_at = 0.0
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def start(self) -> None:
        # a new process group/session: a cancel reaches the CLI and nothing else; unbuffered, so progress is live
        flags = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        env = dict(self.env if self.env is not None else os.environ, PYTHONUNBUFFERED="1")
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         text=True, encoding="utf-8", errors="replace", env=env, **flags)
        self._reader = threading.Thread(target=self._read, name="xdiffusion-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def poll(self) -> list[Progress]:
        """Drain the output read so far (never blocks); returns the new progress events and sets `returncode` once
        the process has exited and all its output has been read."""
        events = []
        finished_output = False
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                finished_output = True
                break
            progress = parse_progress(line)
            if progress is None:
                self.log.append(line)
            else:
                self.latest = progress
                events.append(progress)
        if finished_output and self._process is not None:
            self.returncode = self._process.wait()
        return events

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> int:
        """Block until the run ends (the Test class and the Python console use this; the GUI polls)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the reconstruction did not finish within {timeout} s")
            self.poll()
            time.sleep(interval)
        return self.returncode  # type: ignore[return-value]

    def cancel(self) -> int:
        """Stop the run: SIGTERM makes the CLI exit 130 without writing outputs; kill if it does not stop in time."""
        self.cancelled = True
        process = self._process
        if process is not None and process.poll() is None:
            if os.name == "nt":
                process.terminate()  # Windows has no catchable SIGTERM for a child; TerminateProcess is immediate
            else:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                if os.name == "nt":
                    process.kill()
                else:
                    os.killpg(process.pid, signal.SIGKILL)
        code = self.wait(timeout=CANCEL_GRACE_S)
        self.cleanup()
        return code

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def output_path(self, name: str) -> Path:
        return self.workdir / OUTPUT_NAMES[name]

    @property
    def log_text(self) -> str:
        return "\n".join(self.log)

    def error_message(self) -> str:
        """One line for the user: the CLI's own `error:` line, never a bare exit status."""
        if self.cancelled or self.returncode == CANCELLED_EXIT_CODE:
            return "Cancelled; nothing was written."
        for line in reversed(self.log):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        last = next((line.strip() for line in reversed(self.log) if line.strip()), "")
        detail = f": {last}" if last else " without a message"
        return f"The reconstruction process stopped unexpectedly (exit code {self.returncode}){detail}. See the log for details."


def python_command() -> list[str]:
    """The interpreter for the child: Slicer's `PythonSlicer` launcher when present (it sets Slicer's environment),
    otherwise this interpreter."""
    launcher = shutil.which("PythonSlicer")
    return [launcher] if launcher else [sys.executable]


def detect_compute_device(python: Sequence[str], timeout: float = 120.0) -> dict:
    """Ask a child interpreter what torch sees: {'torch': version or None, 'gpu': name or None, 'note': text}.

    A child keeps torch (and its CUDA libraries) out of Slicer's own process until they are needed. The note explains
    the most common complaint: an NVIDIA driver is present but the installed torch is a CPU-only build.
    """
    probe = ("import json, torch; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None; "
             "print(json.dumps({'torch': torch.__version__, 'gpu': gpu, 'cuda_build': torch.version.cuda}))")
    try:
        done = subprocess.run([*python, "-c", probe], capture_output=True, text=True, timeout=timeout)
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (subprocess.TimeoutExpired, OSError, json.JSONDecodeError, IndexError):
        info = {}
    if not info:
        return {"torch": None, "gpu": None, "note": "PyTorch is not installed yet (it is installed on first use)."}
    if info.get("gpu"):
        return {**info, "note": f"GPU: {info['gpu']}"}
    if shutil.which("nvidia-smi") and not info.get("cuda_build"):
        note = "An NVIDIA driver is present but this PyTorch is a CPU-only build: reinstall it with the PyTorch Utils module."
    else:
        note = "No GPU found: the reconstruction runs on the CPU (slower; choose the 'fast' quality)."
    return {**info, "note": note}
