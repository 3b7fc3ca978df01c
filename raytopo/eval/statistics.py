"""Summaries over seeds: mean, spread and a 95% interval, for one variant and for paired differences.

A study trains every variant once per seed. With ``n`` values ``x_i`` (one per seed) the summary is the mean,
the sample standard deviation ``s`` (ddof 1) and Student's t interval ``mean +- t_{0.975, n-1} s / sqrt(n)``.
Two variants run with the same seeds share their data order and initial weights seed by seed, so their
difference is summarised *paired*: the same interval over the per-seed differences ``b_i - a_i`` (seeds that
only one of them finished are left out). With one value the spread and interval are undefined (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample standard deviation and the ``CONFIDENCE`` t interval of the mean."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely on one side of zero (a difference the seeds resolve)."""
        return self.low > 0 or self.high < 0


def summarise(values: Sequence[float]) -> Summary:
    """Mean, spread (ddof 1) and the t interval of finite ``values`` (NaNs dropped)."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(data)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_difference(baseline: Mapping[int, float], other: Mapping[int, float]) -> Summary:
    """``other - baseline`` summarised over the seeds both have (keys: seeds)."""
    common = sorted(set(baseline) & set(other))
    return summarise([other[seed] - baseline[seed] for seed in common])
