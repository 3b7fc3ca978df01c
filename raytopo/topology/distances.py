"""Wasserstein and bottleneck distances between persistence diagrams, with the optimal matching.

Both distances compare two finite diagrams ``a`` (n points) and ``b`` (m points), each point
``(birth, death)``, where any point may instead be matched to the diagonal (Cohen-Steiner, Edelsbrunner
& Harer 2007; Edelsbrunner & Harer, *Computational Topology*, VIII.2-VIII.4):

* ground cost between two points: the L-``internal_p`` norm of their difference;
* cost of sending ``(b, d)`` to the diagonal: its L-p distance to the nearest diagonal point
  ``((b+d)/2, (b+d)/2)``, i.e. ``2**(1/p - 1) * |d - b|`` (``|d - b| / 2`` for ``p = inf``).

Essential points (infinite death) are rejected with ``InputError``: callers pass ``diagram.finite()`` or
clip deaths first. A ``Matching`` lists every point of ``a`` and of ``b`` exactly once; ``-1`` stands for
the diagonal; diagonal-to-diagonal pairs are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial.distance import cdist

from raytopo.errors import InputError
from raytopo.topology.diagrams import Diagram

DIAGONAL = -1


@dataclass(frozen=True, eq=False)
class Matching:
    """An optimal partial matching between diagrams ``a`` and ``b``.

    ``pairs[k] = (i, j)``: point ``i`` of ``a`` (or ``-1``, the diagonal) is matched to point ``j`` of ``b``
    (or ``-1``). ``pair_costs[k]`` is that pair's ground cost in the internal norm (not raised to any order).
    """

    cost: float
    pairs: np.ndarray
    pair_costs: np.ndarray

    def worst_pair(self) -> tuple[int, int]:
        """The pair with the largest ground cost (Topo-GEN's bottleneck losses act on it); first on ties."""
        if len(self.pairs) == 0:
            raise InputError("matching: both diagrams are empty, there is no worst pair")
        index = int(np.argmax(self.pair_costs))
        return int(self.pairs[index, 0]), int(self.pairs[index, 1])


def _as_finite_points(diagram: Diagram | np.ndarray, name: str) -> np.ndarray:
    points = diagram.points if isinstance(diagram, Diagram) else np.asarray(diagram, dtype=np.float64)
    if points.size == 0:
        return np.zeros((0, 2))
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"diagram {name}: expected an array of (birth, death) rows [n, 2], got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise InputError(f"diagram {name}: expected finite points; pass diagram.finite() or clip essential deaths")
    return points.astype(np.float64, copy=False)


def _validated_norm(internal_p: float) -> float:
    if not internal_p >= 1:
        raise InputError(f"internal_p: expected a norm exponent >= 1 (or inf), got {internal_p!r}")
    return float(internal_p)


def _pairwise_costs(a: np.ndarray, b: np.ndarray, internal_p: float) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if np.isinf(internal_p):
        return cdist(a, b, metric="chebyshev")
    return cdist(a, b, metric="minkowski", p=internal_p)


def diagonal_costs(points: np.ndarray, internal_p: float = np.inf) -> np.ndarray:
    """L-p distance of each ``(b, d)`` to the diagonal: ``2**(1/p - 1) * |d - b|``."""
    scale = 0.5 if np.isinf(internal_p) else 2.0 ** (1.0 / internal_p - 1.0)
    return scale * np.abs(points[:, 1] - points[:, 0])


def _pairs_and_costs(
    pairs: list[np.ndarray], costs: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(pairs).astype(np.int64).reshape(-1, 2), np.concatenate(costs).astype(np.float64)


def _all_to_diagonal(a: np.ndarray, b: np.ndarray, internal_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The only matching when one diagram is empty: every point goes to the diagonal."""
    a_pairs = np.stack([np.arange(len(a)), np.full(len(a), DIAGONAL)], axis=1)
    b_pairs = np.stack([np.full(len(b), DIAGONAL), np.arange(len(b))], axis=1)
    return _pairs_and_costs([a_pairs, b_pairs], [diagonal_costs(a, internal_p), diagonal_costs(b, internal_p)])


# ----------------------------------------------------------------------------------------------- Wasserstein


def _augmented_cost_matrix(a: np.ndarray, b: np.ndarray, internal_p: float) -> np.ndarray:
    """The ``(n+1) x (m+1)`` ground-cost matrix whose last row and column are the diagonal (as gudhi builds it)."""
    costs = np.zeros((len(a) + 1, len(b) + 1))
    costs[:-1, :-1] = _pairwise_costs(a, b, internal_p)
    costs[:-1, -1] = diagonal_costs(a, internal_p)
    costs[-1, :-1] = diagonal_costs(b, internal_p)
    return costs


def _plan_to_pairs(plan: np.ndarray) -> np.ndarray:
    """Read the integral optimal plan: row ``i < n`` sends its unit to column ``j`` (``m`` = diagonal)."""
    m = plan.shape[1] - 1
    units = np.rint(plan).astype(np.int64)
    if not (np.allclose(plan, units, atol=1e-6) and np.all(units[:-1].sum(1) == 1) and np.all(units[:, :-1].sum(0) == 1)):
        raise RuntimeError("Wasserstein matching: the optimal transport plan is not a permutation")
    rows, cols = np.nonzero(units[:-1])
    a_pairs = np.stack([rows, np.where(cols == m, DIAGONAL, cols)], axis=1)
    b_from_diagonal = np.nonzero(units[-1, :-1])[0]
    b_pairs = np.stack([np.full(len(b_from_diagonal), DIAGONAL), b_from_diagonal], axis=1)
    return np.concatenate([a_pairs, b_pairs]).astype(np.int64).reshape(-1, 2)


def _costs_of_pairs(pairs: np.ndarray, a: np.ndarray, b: np.ndarray, internal_p: float) -> np.ndarray:
    """Ground cost of each listed pair, recomputed from the points."""
    i, j = pairs[:, 0], pairs[:, 1]
    costs = np.empty(len(pairs))
    both = (i >= 0) & (j >= 0)
    costs[both] = _row_norms(a[i[both]] - b[j[both]], internal_p)
    only_a, only_b = (i >= 0) & (j < 0), (i < 0) & (j >= 0)
    costs[only_a] = diagonal_costs(a[i[only_a]], internal_p)
    costs[only_b] = diagonal_costs(b[j[only_b]], internal_p)
    return costs


def _row_norms(differences: np.ndarray, internal_p: float) -> np.ndarray:
    return np.linalg.norm(differences, ord=internal_p, axis=1) if len(differences) else np.zeros(0)


def wasserstein_matching(
    a: Diagram | np.ndarray, b: Diagram | np.ndarray, order: float = 1.0, internal_p: float = np.inf
) -> Matching:
    """The ``order``-Wasserstein distance ``(sum over pairs of cost**order)**(1/order)`` and its matching.

    Solved exactly with POT's network simplex (``ot.emd``) on the ``(n+1) x (m+1)`` matrix whose last row
    and column stand for the diagonal with masses ``m`` and ``n`` (gudhi's construction; linear in n for a
    small m, unlike the ``(n+m)^2`` assignment problem). The plan of an integral transport problem at a
    vertex is integral, so it is read directly as a matching.
    """
    if not order >= 1 or np.isinf(order):
        raise InputError(f"Wasserstein order: expected a finite number >= 1, got {order!r}")
    internal_p = _validated_norm(internal_p)
    a_points, b_points = _as_finite_points(a, "a"), _as_finite_points(b, "b")
    if len(a_points) == 0 or len(b_points) == 0:
        pairs, pair_costs = _all_to_diagonal(a_points, b_points, internal_p)
    else:
        pairs = _optimal_transport_pairs(a_points, b_points, order, internal_p)
        pair_costs = _costs_of_pairs(pairs, a_points, b_points, internal_p)
    cost = float(np.sum(pair_costs**order) ** (1.0 / order))
    return Matching(cost, pairs, pair_costs)


def _optimal_transport_pairs(a: np.ndarray, b: np.ndarray, order: float, internal_p: float) -> np.ndarray:
    import ot

    n, m = len(a), len(b)
    supply = np.concatenate([np.ones(n), [float(m)]])
    demand = np.concatenate([np.ones(m), [float(n)]])
    costs = _augmented_cost_matrix(a, b, internal_p) ** order
    plan = ot.emd(supply, demand, costs, numItermax=max(100_000, 20 * (n + 1) * (m + 1)))
    return _plan_to_pairs(plan)


# ------------------------------------------------------------------------------------------------ bottleneck


def _bottleneck_edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(left, right, cost)`` of the augmented bipartite graph, L-inf ground cost.

    Left nodes: ``a`` (0..n-1) then one diagonal copy per point of ``b`` (n..n+m-1). Right nodes: ``b``
    (0..m-1) then one diagonal copy per point of ``a`` (m..m+n-1). Point-point edges cost the L-inf
    distance, a point to its own diagonal copy its diagonal distance, diagonal copy to diagonal copy 0.
    """
    n, m = len(a), len(b)
    point_left, point_right = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    diag_left, diag_right = np.meshgrid(n + np.arange(m), m + np.arange(n), indexing="ij")
    left = np.concatenate([point_left.ravel(), np.arange(n), n + np.arange(m), diag_left.ravel()])
    right = np.concatenate([point_right.ravel(), m + np.arange(n), np.arange(m), diag_right.ravel()])
    costs = np.concatenate(
        [_pairwise_costs(a, b, np.inf).ravel(), diagonal_costs(a), diagonal_costs(b), np.zeros(n * m)]
    )
    return left, right, costs


def _perfect_matching_within(
    left: np.ndarray, right: np.ndarray, costs: np.ndarray, threshold: float, size: int
) -> np.ndarray | None:
    """A perfect matching using only edges of cost <= threshold (right node per left node), or None."""
    keep = costs <= threshold
    graph = sparse.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (left[keep], right[keep])), shape=(size, size)
    )
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return matched if np.all(matched >= 0) else None


def _matching_to_pairs(matched: np.ndarray, n: int, m: int) -> np.ndarray:
    a_partner = matched[:n]
    a_pairs = np.stack([np.arange(n), np.where(a_partner < m, a_partner, DIAGONAL)], axis=1)
    copy_partner = matched[n:]  # left diagonal copy of b_j: listed only when matched to b_j itself
    b_alone = np.nonzero(copy_partner == np.arange(m))[0]
    b_pairs = np.stack([np.full(len(b_alone), DIAGONAL), b_alone], axis=1)
    return np.concatenate([a_pairs, b_pairs]).astype(np.int64).reshape(-1, 2)


def bottleneck_matching(a: Diagram | np.ndarray, b: Diagram | np.ndarray) -> Matching:
    """The exact bottleneck distance (L-inf internal norm, as gudhi and persim) and a matching attaining it.

    The distance is one of the candidate edge costs; binary search over the sorted distinct costs finds the
    smallest threshold at which the graph of edges no costlier than it has a perfect matching
    (Hopcroft-Karp via ``scipy.sparse.csgraph.maximum_bipartite_matching``). The matching found there has
    maximum pair cost equal to the distance, so ``worst_pair()`` identifies a pair attaining it.
    """
    a_points, b_points = _as_finite_points(a, "a"), _as_finite_points(b, "b")
    n, m = len(a_points), len(b_points)
    if n == 0 or m == 0:
        pairs, pair_costs = _all_to_diagonal(a_points, b_points, np.inf)
        return Matching(float(pair_costs.max(initial=0.0)), pairs, pair_costs)
    left, right, costs = _bottleneck_edges(a_points, b_points)
    candidates = np.unique(costs)
    low, high = 0, len(candidates) - 1  # the largest candidate always admits a perfect matching
    best = _perfect_matching_within(left, right, costs, candidates[high], n + m)
    while low < high:
        middle = (low + high) // 2
        matched = _perfect_matching_within(left, right, costs, candidates[middle], n + m)
        if matched is None:
            low = middle + 1
        else:
            high, best = middle, matched
    pairs = _matching_to_pairs(best, n, m)
    pair_costs = _costs_of_pairs(pairs, a_points, b_points, np.inf)
    return Matching(float(pair_costs.max(initial=0.0)), pairs, pair_costs)
