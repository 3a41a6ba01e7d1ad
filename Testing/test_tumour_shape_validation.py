"""benchmarks/tumour_shape_validation.py: bad options end in one error line and exit 2, with nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tumour_shape_validation as benchmark  # noqa: E402


@pytest.mark.parametrize("options, message", [(["--lesions", "0"], "--lesions must be at least 1"),
                                              (["--volumes", "-1"], "--volumes must be at least 1"),
                                              (["--label-net", "/nonexistent/net"], "no config.json there")])
def test_bad_options_are_one_line_and_exit_two(options, message, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(benchmark, "write_results", lambda *a: pytest.fail("nothing may be written"))
    assert benchmark.main([*options, "--cache", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0]


def test_a_cache_without_the_training_subjects_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(benchmark, "write_results", lambda *a: pytest.fail("nothing may be written"))
    assert benchmark.main(["--cache", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
