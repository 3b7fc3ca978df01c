"""Pixel-space distribution distances: the unbiased MMD^2 against its brute-force definition, symmetry, and
their behaviour on same / shifted / rotated distributions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from raytopo.errors import InputError
from raytopo.eval.distribution import distribution_distances, median_bandwidth, mmd2_unbiased, sliced_wasserstein


def _brute_force_mmd2(x: np.ndarray, y: np.ndarray, k) -> float:
    """Gretton et al. 2012, eq. 3, written with explicit loops over index pairs."""
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_brute_force_formula_on_a_tiny_example():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 1, 2, 3)), rng.normal(0.5, 1.0, size=(5, 1, 2, 3))
    fx, fy = x.reshape(4, -1), y.reshape(5, -1)
    pooled = np.concatenate([fx, fy])
    squared = [np.sum((pooled[i] - pooled[j]) ** 2) for i, j in itertools.combinations(range(9), 2)]
    # torch's median of an even count is the lower middle value
    h2 = sorted(squared)[(len(squared) - 1) // 2] / 2
    assert median_bandwidth(torch.from_numpy(fx), torch.from_numpy(fy)) == pytest.approx(h2)

    def rbf(a, b):
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * h2)))

    def poly(a, b):
        return float((a @ b / a.size + 1.0) ** 3)

    assert mmd2_unbiased(x, y) == pytest.approx(_brute_force_mmd2(fx, fy, rbf), rel=1e-10)
    assert mmd2_unbiased(x, y, kernel="poly") == pytest.approx(_brute_force_mmd2(fx, fy, poly), rel=1e-10)
    assert mmd2_unbiased(x, y, bandwidth2=0.7) == pytest.approx(
        _brute_force_mmd2(fx, fy, lambda a, b: float(np.exp(-np.sum((a - b) ** 2) / 1.4))), rel=1e-10)


def test_distances_are_symmetric():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 1, 4, 4)), rng.normal(0.3, 1.2, size=(30, 1, 4, 4))
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x), rel=1e-12)
    assert mmd2_unbiased(x, y, kernel="poly") == pytest.approx(mmd2_unbiased(y, x, kernel="poly"), rel=1e-12)
    assert sliced_wasserstein(x, y, seed=3) == pytest.approx(sliced_wasserstein(y, x, seed=3), rel=1e-9)


def _bars(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    """Images of a horizontal bar at a random row (an orientation-dependent distribution), in [-1, 1]."""
    images = -np.ones((n, 1, size, size))
    for image, row in zip(images, rng.integers(2, size - 4, n)):
        image[0, row:row + 2, 3:size - 3] = 1.0
    return images + 0.05 * rng.normal(size=images.shape)


def test_same_distribution_is_near_zero_and_shifted_or_rotated_ones_are_clearly_larger():
    rng = np.random.default_rng(2)
    a, b = _bars(rng, 150), _bars(rng, 150)
    rotated = np.rot90(_bars(rng, 150), 1, axes=(-2, -1)).copy()
    shifted = _bars(rng, 150) + 0.5
    same = distribution_distances(a, b)
    for other in (rotated, shifted):
        far = distribution_distances(a, other)
        assert far["mmd"] > 10 * abs(same["mmd"]) and far["mmd"] > 0.01
        assert far["swd"] > 2 * same["swd"]
    # pixel-space MMD sees orientation: the rotated set is far, though every image is "a bar"
    assert abs(same["mmd"]) < 0.01


def test_unbiased_mmd2_averages_to_zero_for_equal_distributions():
    rng = np.random.default_rng(3)
    values = [mmd2_unbiased(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)), kernel="poly") for _ in range(300)]
    # biased estimators (V-statistics) are positive on average; the U-statistic is centred at 0
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))
    assert min(values) < 0 < max(values)


@pytest.mark.parametrize("x,y", [
    (np.zeros((1, 4)), np.zeros((3, 4))),
    (np.zeros((3, 4)), np.zeros((3, 5))),
    (np.full((3, 4), np.nan), np.zeros((3, 4))),
])
def test_bad_inputs_raise_input_error(x, y):
    with pytest.raises(InputError):
        mmd2_unbiased(x, y)
