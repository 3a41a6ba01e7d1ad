"""A child process the panel can watch without waiting for it: reader threads feed a queue, `poll()` drains it (the
panel calls it from a QTimer), and `cancel()` returns at once.

Cancel ends the whole process tree with psutil on every platform: in Slicer the child is the `PythonSlicer`
launcher, which starts the real interpreter as its own child, so ending only the launcher (`Popen.terminate()`)
would leave the reconstruction running. The tree is asked to stop first (SIGTERM: the CLI exits 130 and writes
nothing) and killed if it is still there after `CANCEL_GRACE_S`; the reader threads report the end, as for any
other run. On Windows the console window is hidden, as `slicer.util.launchConsoleProcess` does.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

CANCEL_GRACE_S = 5.0
STREAMS = ("stdout", "stderr")


def on_windows() -> bool:
    return os.name == "nt"


def python_command() -> list[str]:
    """Slicer's `PythonSlicer` launcher when present (it sets Slicer's environment), otherwise this interpreter."""
    launcher = shutil.which("PythonSlicer")
    return [launcher] if launcher else [sys.executable]


def popen_options(windows: Optional[bool] = None) -> dict:
    """Windows: no console window (STARTUPINFO with SW_HIDE, as `slicer.util.launchConsoleProcess`). Elsewhere: a
    session of its own, so a Ctrl-C in Slicer's terminal does not reach it."""
    if windows if windows is not None else on_windows():
        info = subprocess.STARTUPINFO()
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = subprocess.SW_HIDE
        return {"startupinfo": info}
    return {"start_new_session": True}


def process_tree(pid: int) -> list:
    """psutil processes of ``pid`` and all its descendants, descendants first (the interpreter before its launcher)."""
    import psutil

    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:  # gone already, or not ours to see
        return []
    return list(reversed(children)) + [root]


def _signal_all(processes: list, kill: bool) -> None:
    import psutil

    for process in processes:
        try:
            process.kill() if kill else process.terminate()
        except psutil.Error:  # gone already (or not ours): nothing left to end
            pass


class ChildProcess:
    """One command run to its end: its stdout and stderr lines, in the order read, and its exit code."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None):
        self.command = [str(part) for part in command]
        self.env = env
        self.cwd = cwd
        self.returncode: Optional[int] = None
        self.cancelled = False
        self.started_at = 0.0
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: "queue.Queue[tuple[str, Optional[str]]]" = queue.Queue()
        self._open_streams = set(STREAMS)
        self._popen: Optional[subprocess.Popen] = None
        self._tree: list = []
        self._kill_at: Optional[float] = None

    def start(self) -> "ChildProcess":
        env = dict(self.env if self.env is not None else os.environ, PYTHONUNBUFFERED="1")
        self.started_at = time.monotonic()
        self._popen = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env,
                                       cwd=self.cwd, **popen_options())
        for name in STREAMS:
            threading.Thread(target=self._read, args=(name, getattr(self._popen, name)), daemon=True,
                             name=f"xdiffusion-{name}").start()
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                self._lines.put((name, line.rstrip("\r\n")))
        finally:
            self._lines.put((name, None))  # this stream has ended

    @property
    def pid(self) -> Optional[int]:
        return None if self._popen is None else self._popen.pid

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at if self.started_at else 0.0

    def poll(self) -> list[tuple[str, str]]:
        """The (stream, line) pairs read since the last call; never blocks. Sets `returncode` once both streams have
        ended and the process has exited; after a cancel, kills what is left of the tree once the grace time is up."""
        new = []
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams.discard(name)
                continue
            (self.stdout if name == "stdout" else self.stderr).append(line)
            new.append((name, line))
        if self._kill_at is not None and time.monotonic() >= self._kill_at and not self.finished:
            _signal_all(self._tree + (process_tree(self.pid) if self.pid else []), kill=True)
            self._kill_at = None
        if not self._open_streams and self._popen is not None and self.returncode is None:
            self.returncode = self._popen.poll()
        return new

    def cancel(self) -> None:
        """Ask the whole tree to stop and return at once; `poll()` finishes the job."""
        if self.cancelled or self.finished or self._popen is None:
            self.cancelled = True
            return
        self.cancelled = True
        try:
            self._tree = process_tree(self._popen.pid)
        except ImportError:  # psutil is one of the module's dependencies; without it, only the direct child stops
            logging.warning("XDiffusion: psutil is missing; cancelling only the launcher process")
            self._popen.terminate()
            return
        _signal_all(self._tree, kill=False)
        self._kill_at = time.monotonic() + CANCEL_GRACE_S

    def kill(self) -> None:
        """End the whole tree now, without a grace time and without waiting (the panel is going away)."""
        self.cancelled = True
        if self._popen is None or self.finished:
            return
        try:
            _signal_all(self._tree + process_tree(self._popen.pid), kill=True)
        except ImportError:
            self._popen.kill()

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> int:
        """Block until the end (scripts and Slicer's self-test; the panel polls)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.command[0]} did not finish within {timeout} s")
            self.poll()
            time.sleep(interval)
        return self.returncode  # type: ignore[return-value]
