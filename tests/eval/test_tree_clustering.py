"""Tree-clustering metrics against hand-computed values, a brute-force pair loop and well-separated blobs."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction

import numpy as np
import pytest

from raytopo.eval.tree_clustering import (
    adjusted_rand_index,
    clustering_accuracy,
    clustering_scores,
    dendrogram_purity,
    kmeans_baseline,
    leaf_purity,
)

# The 3-leaf toy tree: root -> "0" (leaf), "1" -> "10", "11".
TOY_LABELS = ["A", "A", "B", "B", "B", "A", "B"]
TOY_LEAVES = ["0", "0", "0", "10", "10", "11", "11"]


def test_perfect_tree_scores_one_everywhere():
    labels = np.repeat([3, 7, 1, 5], [4, 6, 2, 5])
    leaves = np.repeat(["00", "01", "10", "11"], [4, 6, 2, 5])
    scores = clustering_scores(labels, leaves)
    assert set(scores) == {"acc", "nmi", "ari", "leaf_purity", "dendrogram_purity"}
    for name, value in scores.items():
        assert value == pytest.approx(1.0, abs=1e-12), name


def test_toy_tree_leaf_purity_and_accuracy_by_hand():
    """Leaves "0": [A, A, B], "10": [B, B], "11": [A, B]; N = 7.

    Leaf purity: majorities 2 (A in "0") + 2 (B in "10") + 1 (tie in "11") = 5, so 5/7.
    Contingency (rows A, B; columns "0", "10", "11"): A = [2, 0, 1], B = [1, 2, 1]. One-to-one matchings of
    the two classes to two leaves: A-"0" B-"10" = 4, A-"0" B-"11" = 3, A-"10" B-"0" = 1, A-"10" B-"11" = 1,
    A-"11" B-"0" = 2, A-"11" B-"10" = 3. Best 4, the third leaf unmatched (errors): ACC = 4/7.
    """
    assert leaf_purity(TOY_LABELS, TOY_LEAVES) == pytest.approx(float(Fraction(5, 7)), abs=1e-15)
    assert clustering_accuracy(TOY_LABELS, TOY_LEAVES) == pytest.approx(float(Fraction(4, 7)), abs=1e-15)
    scores = clustering_scores(TOY_LABELS, TOY_LEAVES)
    assert scores["acc"] == pytest.approx(4 / 7) and scores["leaf_purity"] == pytest.approx(5 / 7)


def test_toy_tree_dendrogram_purity_by_hand():
    """Same-class pairs and the purity of their lowest common ancestor's subtree.

    Subtrees: "0" = {A, A, B}, "10" = {B, B}, "1" = {B, B, A, B}, root = all 7 (3 A, 4 B).
    Class A (3 pairs): A1-A2 both in "0": 2/3; A1-A3, A2-A3 ("0" with "11", LCA root): 3/7 each.
    Class B (6 pairs): B1 in "0" with B2, B3 in "10" and B4 in "11" (LCA root): 4/7 each, 3 pairs;
    B2-B3 both in "10": 1; B2-B4, B3-B4 ("10" with "11", LCA "1"): 3/4 each.
    Sum = 2/3 + 6/7 + 12/7 + 1 + 3/2 = 241/42 over 9 pairs: DP = 241/378.
    """
    expected = (Fraction(2, 3) + 2 * Fraction(3, 7) + 3 * Fraction(4, 7) + 1 + 2 * Fraction(3, 4)) / 9
    assert expected == Fraction(241, 378)
    assert dendrogram_purity(TOY_LABELS, TOY_LEAVES) == pytest.approx(float(expected), abs=1e-14)
    assert clustering_scores(TOY_LABELS, TOY_LEAVES)["dendrogram_purity"] == pytest.approx(241 / 378)


def test_dendrogram_purity_depends_on_the_tree_not_only_the_leaves():
    """Same leaf contents, other tree: leaves "1", "00", "01" hold what "0", "10", "11" held.

    Subtree "0" = {B, B, A, B} plays the part of "1" above, so the value is again 241/378; but merging the
    two B-rich leaves under different parents changes it: leaves "00": [A, A, B], "01": [B, B], "1": [A, B]
    make the A-A pair across "00"/"1" and the B pairs "01"/"1" meet at the root (3/7, 4/7) while B1-B2, B1-B3
    meet in "0" = {A, A, B, B, B} (3/5). A: 2/3 + 2 * 3/7; B: 3/5 * 2 + 4/7 + 1 + 4/7 * 2 = 6/5 + 12/7 + 1.
    """
    relabelled = {"0": "1", "10": "00", "11": "01"}
    assert dendrogram_purity(TOY_LABELS, [relabelled[p] for p in TOY_LEAVES]) == pytest.approx(241 / 378)
    other = {"0": "00", "10": "01", "11": "1"}
    expected = (Fraction(2, 3) + 2 * Fraction(3, 7) + 2 * Fraction(3, 5) + Fraction(4, 7) + 1
                + 2 * Fraction(4, 7)) / 9
    assert dendrogram_purity(TOY_LABELS, [other[p] for p in TOY_LEAVES]) == pytest.approx(float(expected))
    assert float(expected) != pytest.approx(241 / 378)


def _random_leaf_paths(rng: np.random.Generator, n_leaves: int) -> list[str]:
    """Leaves of a random binary tree: split a random leaf until there are ``n_leaves``."""
    leaves = [""]
    while len(leaves) < n_leaves:
        parent = leaves.pop(int(rng.integers(len(leaves))))
        leaves += [parent + "0", parent + "1"]
    return leaves


def _brute_force_dendrogram_purity(labels: list, paths: list[str]) -> Fraction:
    """Direct definition: every same-class pair, LCA prefix, class fraction in that prefix's subtree."""
    total, count = Fraction(0), 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        if labels[i] != labels[j]:
            continue
        lca = os.path.commonprefix([paths[i], paths[j]])
        subtree = [labels[k] for k in range(len(labels)) if paths[k].startswith(lca)]
        total += Fraction(subtree.count(labels[i]), len(subtree))
        count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dendrogram_purity_matches_a_brute_force_pair_loop(seed: int):
    rng = np.random.default_rng(seed)
    leaves = _random_leaf_paths(rng, int(rng.integers(2, 9)))
    n = 120
    paths = [leaves[k] for k in rng.integers(len(leaves), size=n)]
    labels = [int(c) for c in rng.integers(4, size=n)]
    expected = _brute_force_dendrogram_purity(labels, paths)
    assert dendrogram_purity(labels, paths) == pytest.approx(float(expected), abs=1e-12)


def test_dendrogram_purity_rejects_non_trees_and_pairless_labels():
    with pytest.raises(ValueError, match="prefix"):
        dendrogram_purity([0, 0, 1], ["0", "01", "1"])
    with pytest.raises(ValueError, match="'0'/'1'"):
        dendrogram_purity([0, 0], ["a", "b"])
    with pytest.raises(ValueError, match="no two samples"):
        dendrogram_purity([0, 1, 2], ["0", "10", "11"])
    assert dendrogram_purity([0, 0, 1], ["", "", ""]) == pytest.approx(2 / 3)  # single-leaf tree


def test_ari_on_a_hand_computed_contingency_table():
    """labels [0,0,0,1,1,1], clusters [0,0,1,1,2,2]: table rows [2,1,0], [0,1,2].

    sum C(n_ij, 2) = 1 + 1 = 2; rows 3, 3: sum C = 6; columns 2, 2, 2: sum C = 3; C(6, 2) = 15.
    E = 6 * 3 / 15 = 6/5; max = (6 + 3) / 2 = 9/2; ARI = (2 - 6/5) / (9/2 - 6/5) = (4/5) / (33/10) = 8/33.
    """
    labels, clusters = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(labels, clusters) == pytest.approx(float(Fraction(8, 33)), abs=1e-15)
    assert adjusted_rand_index(clusters, labels) == pytest.approx(8 / 33, abs=1e-15)  # symmetric


def test_ari_negative_and_degenerate_cases():
    """labels [0,0,1,1], clusters [0,1,0,1]: sum C(n_ij,2) = 0, rows/cols 2 each, E = 2*2/6 = 2/3, max 2.

    ARI = (0 - 2/3) / (2 - 2/3) = -1/2. Both single-cluster, or both all-singletons: 1 (sklearn's convention).
    """
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5, abs=1e-15)
    assert adjusted_rand_index([4, 4, 4], ["x", "x", "x"]) == 1.0
    assert adjusted_rand_index([0, 1, 2], [5, 6, 7]) == 1.0
    assert adjusted_rand_index([0], [1]) == 1.0
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0, abs=1e-15)


def test_acc_and_ari_invariant_to_relabelling_and_acc_counts_unmatched_clusters():
    rng = np.random.default_rng(5)
    labels = rng.integers(3, size=200)
    clusters = np.where(rng.random(200) < 0.7, labels, rng.integers(5, size=200))
    permutation = np.array([4, 2, 0, 3, 1])
    acc, ari = clustering_accuracy(labels, clusters), adjusted_rand_index(labels, clusters)
    assert 0.5 < acc < 1.0 and 0.0 < ari < 1.0
    assert clustering_accuracy(labels, permutation[clusters]) == acc
    assert clustering_accuracy((labels + 1) % 3, clusters) == acc
    assert adjusted_rand_index(labels, permutation[clusters]) == pytest.approx(ari, abs=1e-14)
    assert adjusted_rand_index(labels, clusters.astype(str)) == pytest.approx(ari, abs=1e-14)
    assert clustering_accuracy([0, 0, 1, 1], [0, 1, 2, 3]) == 0.5     # two clusters left unmatched
    assert clustering_accuracy([0, 0, 1, 1], [9, 9, 9, 9]) == 0.5     # fewer clusters than classes


@pytest.mark.parametrize("seed", [0, 1])
def test_ari_matches_sklearn_when_available(seed: int):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    labels, clusters = rng.integers(4, size=300), rng.integers(6, size=300)
    clusters[:150] = labels[:150]
    assert adjusted_rand_index(labels, clusters) == pytest.approx(
        metrics.adjusted_rand_score(labels, clusters), abs=1e-12)


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 5.0], [0.0, 20.0, -5.0]])
    labels = np.repeat([0, 1, 2], [40, 60, 50])
    return centers[labels] + rng.normal(scale=1.0, size=(len(labels), 3)), labels


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    features, labels = _blobs(0)
    clusters = kmeans_baseline(features, 3, seed=3)
    assert clusters.shape == labels.shape and set(clusters.tolist()) == {0, 1, 2}
    assert clustering_accuracy(labels, clusters) == 1.0
    assert adjusted_rand_index(labels, clusters) == pytest.approx(1.0)
    np.testing.assert_array_equal(kmeans_baseline(features, 3, seed=3), clusters)
    # one restart, one Lloyd round: still equal for equal seeds
    np.testing.assert_array_equal(kmeans_baseline(features, 3, seed=11, n_init=1, iterations=1),
                                  kmeans_baseline(features, 3, seed=11, n_init=1, iterations=1))


def test_kmeans_degenerate_inputs_and_argument_checks():
    features = np.array([[0.0], [0.0], [0.0], [1.0]])      # fewer distinct points than clusters: no crash
    clusters = kmeans_baseline(features, 3, seed=0, n_init=2)
    assert clusters.shape == (4,) and clusters.min() >= 0 and clusters.max() < 3
    assert clusters[0] == clusters[1] == clusters[2] != clusters[3]
    distinct = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    assert sorted(kmeans_baseline(distinct, 4, seed=1).tolist()) == [0, 1, 2, 3]   # one point per cluster
    with pytest.raises(ValueError):
        kmeans_baseline(features, 5)
    with pytest.raises(ValueError):
        kmeans_baseline(features, 0)
