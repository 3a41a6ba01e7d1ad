"""Progress on stderr: a human bar (`text`), one JSON object per line (`json`, for the Slicer module), or nothing.

Warnings (a fallback the run took, e.g. an input slice left out of the atlas registration) go to the same stream, in
every mode, ``--quiet`` included: a line ``warning: MESSAGE``, or in `json` mode the object
``{"event": "warning", "message": MESSAGE}`` on a line of its own.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional, TextIO

PROGRESS_MODES = ("text", "json")
_open_lines: set = set()  # streams a text bar has left without a final newline


def end_progress_line() -> None:
    """End a text bar's unfinished line, so a message printed next (an `error:` line) starts a line of its own."""
    while _open_lines:
        stream = _open_lines.pop()
        try:
            stream.write("\n")
            stream.flush()
        except (OSError, ValueError):
            pass


class ProgressReporter:
    """A progress callback with a time estimate; call it with (fraction done, stage)."""

    def __init__(self, mode: Optional[str], stream: Optional[TextIO] = None):
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.last_text = 0.0

    def eta_seconds(self, fraction: float) -> Optional[int]:
        elapsed = time.monotonic() - self.started
        if fraction <= 0.02:
            return None
        return int(round(elapsed * (1.0 - fraction) / fraction))

    def __call__(self, fraction: float, stage: str) -> bool:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "json":
            record = {"progress": round(fraction, 4), "eta_s": self.eta_seconds(fraction), "stage": stage}
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        elif self.mode == "text":
            now = time.monotonic()
            if fraction < 1.0 and now - self.last_text < 0.2:
                return True
            self.last_text = now
            eta = self.eta_seconds(fraction)
            bar = "#" * int(fraction * 30)
            tail = f" eta {eta}s" if eta is not None else ""
            if fraction < 1.0:  # marked before writing: a signal right after the write still finds the line open
                _open_lines.add(self.stream)
            self.stream.write(f"\r[{bar:<30}] {fraction * 100:5.1f}% {stage:<20}{tail}   ")
            if fraction >= 1.0:
                self.stream.write("\n")
                _open_lines.discard(self.stream)
            self.stream.flush()
        return True

    def warning(self, message: str) -> None:
        """Report a fallback the run took, as one line (see the module docstring); shown even when progress is not."""
        message = " ".join(str(message).split())
        if self.mode == "json":
            self.stream.write(json.dumps({"event": "warning", "message": message}) + "\n")
        else:
            if self.stream in _open_lines:  # the bar's line is unfinished: the warning starts a line of its own
                self.stream.write("\n")
                _open_lines.discard(self.stream)
            self.stream.write(f"warning: {message}\n")
        self.stream.flush()
