"""Summaries over seeds and clustering agreement, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raytopo.eval.clustering import latent_class_nmi, normalized_mutual_info
from raytopo.eval.statistics import paired_difference, summarise

T_975_4 = 2.7764451051977987   # Student's t quantile 0.975 with 4 degrees of freedom (tables)


def test_summary_of_five_values_is_the_textbook_t_interval():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]          # mean 3, sample variance 2.5
    summary = summarise(values)
    half = T_975_4 * math.sqrt(2.5) / math.sqrt(5)
    assert summary.n == 5 and summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(2.5))
    assert (summary.low, summary.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert summary.excludes_zero


def test_one_value_has_no_spread_and_nan_values_are_dropped():
    one = summarise([2.0, float("nan")])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.std) and math.isnan(one.low)
    assert summarise([]).n == 0


def test_paired_difference_uses_common_seeds_only():
    baseline = {0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}
    other = {0: 1.5, 1: 2.5, 2: 3.0, 7: 0.0}   # differences 0.5, 0.5, 0.0 on seeds 0, 1, 2
    summary = paired_difference(baseline, other)
    std = float(np.std([0.5, 0.5, 0.0], ddof=1))
    half = 4.302652729911275 * std / math.sqrt(3)   # t 0.975, 2 degrees of freedom
    assert summary.n == 3 and summary.mean == pytest.approx(1 / 3)
    assert (summary.low, summary.high) == pytest.approx((1 / 3 - half, 1 / 3 + half))
    assert not summary.excludes_zero


def test_nmi_is_one_for_renamed_partitions_zero_for_independent_ones_and_matches_a_hand_value():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)
    assert normalized_mutual_info(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # a = [0,0,1,1], b = [0,0,0,1]: I = H(b) - H(b|a) = H(1/4) - (1/2) ln 2, NMI = 2 I / (H(a) + H(b))
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    mutual = h(0.25, 0.75) - 0.5 * math.log(2)
    expected = 2 * mutual / (math.log(2) + h(0.25, 0.75))
    assert normalized_mutual_info(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(expected)


def test_latent_nmi_finds_separated_classes_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    assert latent_class_nmi(centres[labels] + rng.normal(size=(150, 2)), labels) == pytest.approx(1.0)
    assert latent_class_nmi(rng.normal(size=(150, 2)), labels) < 0.1
