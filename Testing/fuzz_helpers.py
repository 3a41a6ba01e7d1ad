"""Shared by the reliability suites (test_fuzz, test_signals, test_reliability): running the CLI in-process or as a
real process and checking that a refusal is clean, plus a tiny saved model."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from xdiffusion.cli import main

EXAMPLES = int(os.environ.get("XDIFFUSION_FUZZ_EXAMPLES", "25"))  # a long run: XDIFFUSION_FUZZ_EXAMPLES=2000


def listing(*folders: Path) -> set[str]:
    """Every entry (hidden ones included) below ``folders``, as paths."""
    found = set()
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            found.update(os.path.join(root, name) for name in dirs + files)
    return found


# one thread per child: several children share a 2-core CI machine, and OpenMP spin-waiting would slow them all
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_main(argv: Sequence[str]) -> tuple[int, str, str]:
    """`xdiffusion.cli.main` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: Sequence[str], *folders: Path, fragments: Sequence[str] = ()) -> str:
    """Exit 2, exactly one stderr line starting `error:`, no traceback, and nothing new (no output, no temporary)
    in ``folders``. Returns the error line."""
    before = listing(*folders)
    code, out, err = run_main(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and out == "", (out, err)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert listing(*folders) == before, sorted(listing(*folders) - before)
    return lines[0]


def run_process(argv: Sequence[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m xdiffusion.cli ARGV` as a real process."""
    kwargs.setdefault("env", CHILD_ENV)
    return subprocess.run([sys.executable, "-m", "xdiffusion.cli", *map(str, argv)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=timeout, **kwargs)


def start_process(argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """`python -m xdiffusion.cli ARGV` started, not awaited (text pipes for stdout and stderr)."""
    kwargs.setdefault("env", CHILD_ENV)
    return subprocess.Popen([sys.executable, "-m", "xdiffusion.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", **kwargs)


def assert_process_refused(argv: Sequence[str], *folders: Path, fragments: Sequence[str] = ()) -> str:
    before = listing(*folders)
    result = run_process(argv)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert listing(*folders) == before
    return lines[0]


def save_tiny_model(folder: Path, **card) -> Path:
    """The tiny untrained model of test_pipeline, saved (2 views, 2 steps by default)."""
    from test_pipeline import tiny_model

    from xdiffusion.model import save_model

    model = tiny_model()
    card = {"default_sampling": {"views": 2, "steps": 2}, "default_modality": "t1", **card}
    return save_model(folder, model.unet, model.condition_encoder, None, model.scheduler_config, model.config, card)
