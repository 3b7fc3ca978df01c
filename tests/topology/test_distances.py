"""Diagram distances: values against gudhi, matchings checked pair by pair."""

from __future__ import annotations

import gudhi
import gudhi.wasserstein
import numpy as np
import pytest

from raytopo.errors import InputError
from raytopo.topology.diagrams import Diagram
from raytopo.topology.distances import Matching, bottleneck_matching, wasserstein_matching

SIZES = [(0, 0), (0, 4), (5, 0), (1, 1), (3, 8), (12, 12), (40, 3), (300, 6)]


def random_diagram(rng: np.random.Generator, n: int) -> np.ndarray:
    births = rng.uniform(0.0, 1.0, n)
    return np.stack([births, births + rng.exponential(0.4, n)], axis=1)


def hand_pair_cost(a: np.ndarray, b: np.ndarray, i: int, j: int, p: float) -> float:
    """Ground cost of one pair, written out: L-p between points, L-p distance to the diagonal otherwise."""
    if i >= 0 and j >= 0:
        gap = np.abs(a[i] - b[j])
        return float(gap.max()) if np.isinf(p) else float((gap**p).sum() ** (1 / p))
    birth, death = a[i] if i >= 0 else b[j]
    half = (death - birth) / 2  # nearest diagonal point is the midpoint ((b+d)/2, (b+d)/2)
    return half if np.isinf(p) else float((2 * half**p) ** (1 / p))


def assert_covers_each_point_once(matching: Matching, n: int, m: int) -> None:
    pairs = matching.pairs
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert not np.any((pairs[:, 0] < 0) & (pairs[:, 1] < 0)), "diagonal-diagonal pairs must not be listed"
    assert sorted(pairs[pairs[:, 0] >= 0, 0]) == list(range(n))
    assert sorted(pairs[pairs[:, 1] >= 0, 1]) == list(range(m))


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_bottleneck_equals_gudhi_and_its_matching_attains_it(n: int, m: int) -> None:
    rng = np.random.default_rng(100 * n + m)
    a, b = random_diagram(rng, n), random_diagram(rng, m)
    matching = bottleneck_matching(a, b)
    assert matching.cost == pytest.approx(gudhi.bottleneck_distance(a, b), abs=1e-12)
    assert_covers_each_point_once(matching, n, m)
    costs = [hand_pair_cost(a, b, int(i), int(j), np.inf) for i, j in matching.pairs]
    np.testing.assert_allclose(matching.pair_costs, costs, atol=1e-12)
    assert max(costs, default=0.0) == pytest.approx(matching.cost, abs=1e-12)
    if len(costs):
        i, j = matching.worst_pair()
        assert hand_pair_cost(a, b, i, j, np.inf) == pytest.approx(matching.cost, abs=1e-12)


@pytest.mark.parametrize("order", [1.0, 2.0])
@pytest.mark.parametrize("internal_p", [np.inf, 2.0])
@pytest.mark.parametrize(("n", "m"), SIZES)
def test_wasserstein_equals_gudhi_and_its_matching_sums_to_it(n: int, m: int, order: float, internal_p: float) -> None:
    rng = np.random.default_rng(1000 + 100 * n + m)
    a, b = random_diagram(rng, n), random_diagram(rng, m)
    matching = wasserstein_matching(a, b, order=order, internal_p=internal_p)
    expected = gudhi.wasserstein.wasserstein_distance(a, b, order=order, internal_p=internal_p)
    assert matching.cost == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert_covers_each_point_once(matching, n, m)
    costs = np.array([hand_pair_cost(a, b, int(i), int(j), internal_p) for i, j in matching.pairs])
    assert float(np.sum(costs**order) ** (1 / order)) == pytest.approx(matching.cost, rel=1e-9, abs=1e-12)


def test_hand_made_example() -> None:
    """a = {(0, 4)}, b = {(0, 3), (1, 1.5)}: (0,4)-(0,3) costs 1, (1,1.5) to the diagonal 0.25."""
    a, b = np.array([[0.0, 4.0]]), np.array([[0.0, 3.0], [1.0, 1.5]])
    bottleneck = bottleneck_matching(a, b)
    assert bottleneck.cost == pytest.approx(1.0)
    assert bottleneck.worst_pair() == (0, 0)
    assert wasserstein_matching(a, b, order=1).cost == pytest.approx(1.25)
    assert wasserstein_matching(a, b, order=2).cost == pytest.approx(np.sqrt(1.0 + 0.0625))
    # a far point is cheaper on the diagonal: (0, 0.2) vs (10, 10.4) -> each to the diagonal, 0.2 / 2
    far = bottleneck_matching(np.array([[0.0, 0.2]]), np.array([[10.0, 10.4]]))
    assert far.cost == pytest.approx(0.2) and sorted(map(tuple, far.pairs.tolist())) == [(-1, 0), (0, -1)]


def test_ties_and_duplicates() -> None:
    a = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert bottleneck_matching(a, b).cost == pytest.approx(gudhi.bottleneck_distance(a, b))
    assert wasserstein_matching(a, b).cost == pytest.approx(0.5)


def test_accepts_diagrams() -> None:
    rng = np.random.default_rng(3)
    points = random_diagram(rng, 6)
    diagram = Diagram(1, points[:, 0], points[:, 1], np.zeros((6, 2)), np.zeros((6, 2)))
    other = random_diagram(rng, 4)
    assert bottleneck_matching(diagram, other).cost == pytest.approx(bottleneck_matching(points, other).cost)
    assert wasserstein_matching(diagram, other).cost == pytest.approx(wasserstein_matching(points, other).cost)


def test_essential_points_raise_input_error() -> None:
    essential = np.array([[0.0, np.inf]])
    with pytest.raises(InputError, match="finite"):
        bottleneck_matching(essential, np.zeros((0, 2)))
    with pytest.raises(InputError, match="finite"):
        wasserstein_matching(np.zeros((0, 2)), essential)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(4)])
def test_bad_shapes_raise_input_error(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        bottleneck_matching(bad, np.zeros((1, 2)))


@pytest.mark.parametrize(("order", "internal_p"), [(0.5, np.inf), (np.inf, np.inf), (1.0, 0.5)])
def test_bad_orders_raise_input_error(order: float, internal_p: float) -> None:
    with pytest.raises(InputError):
        wasserstein_matching(np.zeros((1, 2)), np.zeros((1, 2)), order=order, internal_p=internal_p)
