"""Clustering metrics for hierarchical (tree) clusterings such as TreeVAE's, and the k-means baseline.

TreeVAE (Manduchi et al. 2023) assigns each sample to its most probable leaf and reports, against the class
labels (see ``shared/reference/treevae.md`` section 1 "Evaluation" and section 8 check 6):

* **ACC**: accuracy under the best one-to-one matching of clusters to classes (Hungarian algorithm on the
  contingency table; with more clusters than classes the unmatched clusters count as errors).
* **NMI**: normalised mutual information, :func:`raytopo.eval.clustering.normalized_mutual_info`.
* **ARI**: adjusted Rand index, Hubert & Arabie (1985), from the contingency table.
* **leaf purity**: ``sum_leaves max_c n(leaf, c) / N``, the weighted purity of the leaves.
* **dendrogram purity**: Heller & Ghahramani (2005), Kobren et al. (2017): the mean, over all unordered pairs
  of distinct samples with the same class ``c``, of the fraction of class ``c`` in the smallest subtree that
  holds both samples' leaves (their lowest common ancestor).

A tree is given by its leaves' paths: a string of ``'0'``/``'1'`` characters from the root (``"0"``,
``"10"``, ``"11"`` for a root whose right child was split again; ``""`` for a single-leaf tree). The lowest
common ancestor of two leaves is their longest common prefix, and the subtree of a prefix ``p`` holds every
sample whose leaf path starts with ``p``. No leaf path may be a proper prefix of another (a leaf is not an
inner node).

:func:`kmeans_baseline` is the flat baseline TreeVAE is compared against: seeded k-means++ initialisation and
Lloyd iterations in plain numpy, best of ``n_init`` restarts by inertia.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from raytopo.eval.clustering import contingency_table, normalized_mutual_info


def clustering_accuracy(labels: Sequence | np.ndarray, clusters: Sequence | np.ndarray) -> float:
    """Unsupervised clustering accuracy: ``max_m sum_i [labels_i == m(clusters_i)] / N``.

    ``m`` ranges over one-to-one maps from clusters to classes (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment`` maximising the matched counts of the contingency table). With more
    clusters than classes the clusters left unmatched count as errors, as in TreeVAE and DEC (Xie et al. 2016).
    Invariant to renaming classes or clusters.
    """
    table = contingency_table(labels, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def adjusted_rand_index(labels: Sequence | np.ndarray, clusters: Sequence | np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) from the contingency table ``n_ij`` with marginals ``a_i, b_j``.

    ``ARI = (sum_ij C(n_ij,2) - E) / ((sum_i C(a_i,2) + sum_j C(b_j,2)) / 2 - E)`` with
    ``E = sum_i C(a_i,2) * sum_j C(b_j,2) / C(N,2)``. 1 for identical partitions up to renaming, about 0 in
    expectation for independent ones, and may be negative. The denominator vanishes only when both
    labelings are the same trivial partition (both a single cluster, or both all singletons, or ``N = 1``);
    then the partitions agree and the index is 1, as in scikit-learn.
    """
    table = contingency_table(labels, clusters).astype(np.float64)
    n = table.sum()
    pairs = lambda x: x * (x - 1) / 2  # noqa: E731  (C(x, 2), elementwise)
    index = pairs(table).sum()
    sum_a, sum_b = pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum()
    total = pairs(n)
    if total == 0:
        return 1.0
    expected = sum_a * sum_b / total
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def leaf_purity(labels: Sequence | np.ndarray, leaves: Sequence | np.ndarray) -> float:
    """Leaf purity (TreeVAE, Manduchi et al. 2023): ``sum_leaves max_c n(leaf, c) / N``.

    The weighted purity of the leaves: each leaf counts its majority class (ties: any one of them) as
    correct. ``leaves`` may be any per-sample leaf identifiers (leaf paths or integers).
    """
    table = contingency_table(labels, leaves)
    return float(table.max(0).sum() / table.sum())


def _check_leaf_paths(paths: Sequence[str]) -> None:
    """Raise unless every path is a '0'/'1' string and no path is a proper prefix of another."""
    for path in paths:
        if not isinstance(path, str) or set(path) - {"0", "1"}:
            raise ValueError(f"leaf path {path!r} is not a string of '0'/'1' characters")
    ordered = sorted(paths)
    for first, second in zip(ordered, ordered[1:]):
        if second.startswith(first):  # sorted order puts a prefix right before some extension of it
            raise ValueError(f"leaf path {first!r} is a prefix of leaf path {second!r}: not a tree's leaves")


def dendrogram_purity(labels: Sequence | np.ndarray, leaf_paths: Sequence[str]) -> float:
    """Dendrogram purity (Heller & Ghahramani 2005; Kobren et al. 2017; as used by TreeVAE, Manduchi et al. 2023).

    ``DP = (1/|P|) sum_{(i,j) in P} pur(lca(leaf_i, leaf_j), c_i)`` where ``P`` is the set of unordered pairs
    of distinct samples with the same class (``c_i == c_j``; both in one leaf included), ``lca`` the lowest
    common ancestor in the tree (the longest common prefix of the two leaf paths) and ``pur(p, c)`` the
    fraction of class ``c`` among the samples whose leaf path starts with ``p``.

    ``leaf_paths[i]`` is the '0'/'1' path from the root to sample ``i``'s leaf. Computed from per-(leaf,
    class) counts: per class, ``C(n_a, 2)`` pairs inside leaf ``a`` and ``n_a * n_b`` across leaves ``a, b``,
    so the cost is ``O(N + L^2 K)`` for ``L`` leaves and ``K`` classes. Raises ``ValueError`` when no two
    samples share a class (no pairs: undefined).
    """
    label_array = np.asarray(labels).ravel()
    paths = [str(p) for p in np.asarray(leaf_paths, dtype=object).ravel()]
    if len(label_array) != len(paths):
        raise ValueError(f"labelings of different lengths: {len(label_array)} and {len(paths)}")
    leaf_names = sorted(set(paths))
    _check_leaf_paths(leaf_names)
    n_leaves = len(leaf_names)
    leaf_index = {name: k for k, name in enumerate(leaf_names)}
    _, class_index = np.unique(label_array, return_inverse=True)
    table = np.zeros((n_leaves, class_index.max() + 1 if len(paths) else 0))  # [leaves, classes]
    np.add.at(table, ([leaf_index[p] for p in paths], class_index.ravel()), 1)

    prefix_counts: dict[str, np.ndarray] = {}

    def subtree_counts(prefix: str) -> np.ndarray:
        if prefix not in prefix_counts:
            inside = [k for k, name in enumerate(leaf_names) if name.startswith(prefix)]
            prefix_counts[prefix] = table[inside].sum(0)
        return prefix_counts[prefix]

    def purity(prefix: str) -> np.ndarray:
        counts = subtree_counts(prefix)
        return counts / counts.sum()

    weighted, n_pairs = 0.0, 0.0
    for a in range(n_leaves):
        within = table[a] * (table[a] - 1) / 2
        weighted += float(within @ purity(leaf_names[a]))
        n_pairs += float(within.sum())
        for b in range(a + 1, n_leaves):
            across = table[a] * table[b]
            if across.any():
                weighted += float(across @ purity(os.path.commonprefix([leaf_names[a], leaf_names[b]])))
                n_pairs += float(across.sum())
    if n_pairs == 0:
        raise ValueError("dendrogram purity is undefined: no two samples share a class")
    return weighted / n_pairs


def _squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``[N, K]`` squared Euclidean distances, clipped at 0 against rounding."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): first center uniform, then by D^2 sampling."""
    n = len(x)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = _squared_distances(x, centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        index = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[j] = x[index]
        closest = np.minimum(closest, _squared_distances(x, centers[j : j + 1])[:, 0])
    return centers


def _lloyd(x: np.ndarray, centers: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    """Lloyd iterations from ``centers``; an emptied cluster takes the point farthest from its center."""
    k = len(centers)
    assign = np.full(len(x), -1)
    for _ in range(iterations):
        distances = _squared_distances(x, centers)
        new_assign = distances.argmin(1)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
        counts = np.bincount(assign, minlength=k)
        for j in np.flatnonzero(counts == 0):  # some cluster holds >= 2 points while one is empty (k <= N)
            own = np.where(counts[assign] > 1, distances[np.arange(len(x)), assign], -1.0)
            far = int(own.argmax())
            counts[assign[far]] -= 1
            counts[j] += 1
            assign[far] = j
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        centers = sums / counts[:, None]
    distances = _squared_distances(x, centers)
    assign = distances.argmin(1)
    return assign, float(distances[np.arange(len(x)), assign].sum())


def kmeans_baseline(
    features: np.ndarray, n_clusters: int, seed: int = 0, n_init: int = 10, iterations: int = 100
) -> np.ndarray:
    """k-means cluster labels ``[N]`` (ints in ``[0, n_clusters)``) of ``features`` ``[N, D]``.

    Lloyd's algorithm (at most ``iterations`` assignment/update rounds, stopping when the assignment is
    unchanged) from ``n_init`` k-means++ seedings (Arthur & Vassilvitskii 2007); the run with the lowest inertia
    (sum of squared distances to the assigned center) wins. All randomness comes from
    ``np.random.default_rng(seed)``, so equal seeds give equal labels. Plain numpy: the flat baseline TreeVAE
    is compared against, without a scikit-learn dependency.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be in [1, {len(x)}], got {n_clusters}")
    if n_init < 1 or iterations < 1:
        raise ValueError("n_init and iterations must be positive")
    rng = np.random.default_rng(seed)
    best_assign, best_inertia = None, np.inf
    for _ in range(n_init):
        assign, inertia = _lloyd(x, _kmeans_pp(x, n_clusters, rng), iterations)
        if inertia < best_inertia:
            best_assign, best_inertia = assign, inertia
    return best_assign.astype(np.int64)


def flat_scores(labels: Sequence | np.ndarray, clusters: Sequence | np.ndarray) -> dict[str, float]:
    """ACC, NMI, ARI and leaf purity of a flat clustering (any hashable cluster ids) against class labels."""
    _, cluster_ids = np.unique(np.asarray(clusters).ravel().astype(str), return_inverse=True)
    label_array = np.asarray(labels).ravel()
    return {
        "acc": clustering_accuracy(label_array, cluster_ids),
        "nmi": normalized_mutual_info(label_array, cluster_ids),
        "ari": adjusted_rand_index(label_array, cluster_ids),
        "leaf_purity": leaf_purity(label_array, cluster_ids),
    }


def clustering_scores(labels: Sequence | np.ndarray, leaf_paths: Sequence[str]) -> dict[str, float]:
    """ACC, NMI, ARI, leaf purity and dendrogram purity of a tree clustering against class labels.

    The flat clusters are the leaves (`flat_scores`). Keys: ``"acc"``, ``"nmi"``, ``"ari"``,
    ``"leaf_purity"``, ``"dendrogram_purity"``.
    """
    paths = [str(p) for p in np.asarray(leaf_paths, dtype=object).ravel()]
    return {**flat_scores(labels, paths), "dendrogram_purity": dendrogram_purity(np.asarray(labels).ravel(), paths)}
