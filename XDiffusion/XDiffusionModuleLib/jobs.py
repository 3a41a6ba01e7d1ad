"""A job: one or more child processes in a row, advanced by `poll()` from the panel's QTimer on the main thread
(where the scene may be touched), cancelled without waiting, and finished in one of three states."""

from __future__ import annotations

import time
from typing import Optional, Sequence

from .childprocess import ChildProcess

RUNNING, CANCELLING, DONE, FAILED, CANCELLED = "running", "cancelling", "done", "failed", "cancelled"


class Job:
    """Subclasses start their first step in `start()` with `_run(command)`, read lines in `_on_line`, and in
    `_on_step_end` start the next step, or call `_finish()`; an exception there fails the job with its message."""

    what = "The command"

    def __init__(self, env: Optional[dict] = None):
        self.env = env
        self.state = RUNNING
        self.status = ""
        self.fraction: Optional[float] = None
        self.warnings: list[str] = []
        self.error = ""
        self.log: list[str] = []
        self.process: Optional[ChildProcess] = None
        self.started_at = time.monotonic()

    @property
    def active(self) -> bool:
        return self.state in (RUNNING, CANCELLING)

    @property
    def elapsed_s(self) -> int:
        return int(time.monotonic() - self.started_at)

    @property
    def log_text(self) -> str:
        return "\n".join(self.log)

    def _run(self, command: Sequence[str]) -> None:
        self.log.append("$ " + " ".join(str(part) for part in command))
        self.process = ChildProcess(command, self.env).start()

    def _on_line(self, stream: str, line: str) -> None:
        pass

    def _on_step_end(self, process: ChildProcess) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Called once, whatever the end."""

    def _finish(self, state: str = DONE, error: str = "") -> None:
        if not self.active:
            return
        self.state, self.error = state, error
        if state == CANCELLED:
            self.status = "Cancelled; nothing was written."
        self._cleanup()

    def poll(self) -> None:
        if not self.active:
            return
        if self.process is None:
            if self.state == CANCELLING:
                self._finish(CANCELLED)
            return
        for stream, line in self.process.poll():
            self.log.append(line)
            self._on_line(stream, line)
        if not self.process.finished:
            return
        if self.state == CANCELLING:
            self._finish(CANCELLED)
            return
        try:
            self._on_step_end(self.process)
        except Exception as error:  # the job's own failure: one line for the panel, the log for details
            self.log.append(f"{type(error).__name__}: {error}")
            self._finish(FAILED, str(error) or type(error).__name__)

    def cancel(self) -> None:
        """Returns at once; the job ends (CANCELLED) on a later `poll()`, once its process tree is gone."""
        if not self.active:
            return
        self.state = CANCELLING
        self.status = "Cancelling…"
        if self.process is not None:
            self.process.cancel()

    def abandon(self) -> None:
        """End now, without waiting: the process tree is killed and the job's files removed (Slicer is closing the
        module, so nobody will poll again)."""
        if not self.active:
            return
        if self.process is not None:
            self.process.kill()
        self.state = CANCELLING
        self._finish(CANCELLED)

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Block until the end (scripts and Slicer's self-test; the panel polls)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.active:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"{self.what} did not finish within {timeout} s")
            self.poll()
            time.sleep(interval)
        return self.state
