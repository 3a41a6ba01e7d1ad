"""benchmarks/paired_differences.py: the bootstrap over subjects and seeds, and verdicts only from enough subjects."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paired_differences import TOO_FEW, paired_difference, verdict  # noqa: E402


def test_one_subject_with_a_constant_gain_gets_no_verdict():
    result = paired_difference({"sub-01": [2.0, 2.0, 2.0]})
    assert (result.mean, result.low, result.high) == (2.0, 2.0, 2.0)
    assert result.subjects == 1 and result.pairs == 3 and result.verdict == TOO_FEW
    assert paired_difference({"a": [5.0], "b": [4.0]}).verdict == TOO_FEW  # two subjects, both far above 0: still too few


def test_three_subjects_interval_is_the_percentiles_of_resampled_subject_means():
    result = paired_difference({"a": [1.0, 1.0], "b": [2.0], "c": [3.0, 3.0, 3.0]})
    assert result.mean == pytest.approx(2.0)
    # means of 3 subjects drawn from {1, 2, 3}: all ones has probability 1/27 (3.7 %), above the 2.5 % tail
    assert result.low == pytest.approx(1.0) and result.high == pytest.approx(3.0)
    assert result.verdict == "better" and result.subjects == 3 and result.pairs == 6


def test_subjects_weigh_equally_however_many_runs_they_have():
    result = paired_difference({"many": [0.0] * 100, "one": [3.0], "other": [3.0]})
    assert result.mean == pytest.approx(2.0)


def test_pairs_within_a_subject_are_resampled_too():
    spread = paired_difference({"a": [-1.0, 1.0], "b": [-1.0, 1.0], "c": [-1.0, 1.0]})
    assert spread.mean == 0.0 and spread.low < -0.3 and spread.high > 0.3 and spread.verdict == "not distinguishable"


def test_interval_width_matches_the_normal_approximation_for_many_subjects():
    rng = np.random.default_rng(3)
    values = rng.normal(0.5, 1.0, 40)
    result = paired_difference({f"s{i}": [v] for i, v in enumerate(values)})
    half_width = 1.96 * values.std() / np.sqrt(values.size)
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.15)
    assert result.low < values.mean() < result.high


def test_verdicts_and_missing_values():
    assert verdict(0.1, 0.5, 3) == "better" and verdict(-0.5, -0.1, 4) == "worse"
    assert verdict(-0.1, 0.5, 5) == "not distinguishable" and verdict(0.1, 0.5, 2) == TOO_FEW
    assert paired_difference({"a": [None, float("nan")]}) is None and paired_difference({}) is None
    assert paired_difference({"a": [None, 1.0]}).pairs == 1
    again = paired_difference({"a": [1.0, 2.0], "b": [0.0], "c": [4.0]})
    assert again == paired_difference({"a": [1.0, 2.0], "b": [0.0], "c": [4.0]})  # seeded: the same interval every time
