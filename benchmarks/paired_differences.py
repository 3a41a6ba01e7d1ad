"""Paired differences between two methods, with a bootstrap interval over subjects and seeds, and a verdict only
where there are enough subjects to give one.

A pair is two runs on the same input (subject, case, plane, K, seed): the method's score minus the baseline's, on a
scale where higher is better. The interval is a two-level (hierarchical) bootstrap: subjects are drawn with
replacement, then each drawn subject's pairs (its planes, cases and seeds) are drawn with replacement; the statistic
is the mean over subjects of each subject's mean pair, so a subject with more runs does not weigh more. With fewer
than ``MIN_SUBJECTS`` subjects no verdict is given at all: two people cannot tell a method from the luck of which
two people were scanned, however narrow their interval looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

MIN_SUBJECTS = 3
RESAMPLES = 4000
CONFIDENCE = 0.95
TOO_FEW = "too few subjects"


@dataclass(frozen=True)
class PairedDifference:
    """The mean paired difference (higher = the method is better), its bootstrap interval, counts and verdict."""

    mean: float
    low: float
    high: float
    subjects: int
    pairs: int
    verdict: str

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "subjects": self.subjects, "pairs": self.pairs,
                "verdict": self.verdict}


def verdict(low: float, high: float, subjects: int, min_subjects: int = MIN_SUBJECTS) -> str:
    """``better`` when the whole interval is above 0, ``worse`` when below, ``not distinguishable`` when it holds 0;
    ``too few subjects`` below ``min_subjects``, whatever the interval."""
    if subjects < min_subjects:
        return TOO_FEW
    if low > 0:
        return "better"
    return "worse" if high < 0 else "not distinguishable"


def paired_difference(pairs: Mapping[str, Sequence[float]], resamples: int = RESAMPLES, seed: int = 0,
                      min_subjects: int = MIN_SUBJECTS) -> Optional[PairedDifference]:
    """``pairs``: subject -> its paired differences. None when no subject has a pair."""
    groups = [np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64) for values in pairs.values()]
    groups = [g for g in groups if g.size]
    if not groups:
        return None
    mean = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    drawn_subjects = rng.integers(0, len(groups), size=(resamples, len(groups)))
    subject_means = np.empty((resamples, len(groups)))
    for column in range(len(groups)):
        for number, group in enumerate(groups):
            rows = drawn_subjects[:, column] == number
            if rows.any():
                draws = rng.integers(0, group.size, size=(int(rows.sum()), group.size))
                subject_means[rows, column] = group[draws].mean(axis=1)
    statistic = subject_means.mean(axis=1)
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    low, high = (float(v) for v in np.percentile(statistic, [tail, 100.0 - tail]))
    return PairedDifference(mean, low, high, len(groups), int(sum(g.size for g in groups)), verdict(low, high, len(groups), min_subjects))
