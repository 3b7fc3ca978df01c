"""How well a representation separates known classes: k-means clusters scored by normalised mutual information.

``NMI(a, b) = I(a; b) / ((H(a) + H(b)) / 2)`` (arithmetic normalisation; 1 for identical partitions up to
renaming, 0 for independent ones), computed from the contingency table. Topo-GEN claims its latent vectors
organise by class; `latent_class_nmi` measures that on held-out images: k-means with one cluster per class on
the latent means, then the NMI of the clusters against the labels.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def contingency_table(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts ``[n_a, n_b]`` of two labelings of the same items (any hashable labels, in sorted label order)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if len(a) != len(b):
        raise ValueError(f"labelings of different lengths: {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("empty labelings")
    _, a_index = np.unique(a, return_inverse=True)
    _, b_index = np.unique(b, return_inverse=True)
    table = np.zeros((a_index.max() + 1, b_index.max() + 1), dtype=np.int64)
    np.add.at(table, (a_index.ravel(), b_index.ravel()), 1)
    return table


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI of two labelings of the same items (any hashable labels); 1.0 when both have a single cluster."""
    table = contingency_table(a, b)
    h_a, h_b = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_a == 0 and h_b == 0:
        return 1.0
    joint = table / table.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum())
    return mutual / ((h_a + h_b) / 2)


def latent_class_nmi(latents: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """k-means (k = number of classes, k-means++ init, seeded) on ``latents`` ``[N, D]``, NMI against ``labels``."""
    k = len(np.unique(labels))
    _, clusters = kmeans2(np.asarray(latents, dtype=np.float64), k, minit="++", seed=np.random.default_rng(seed))
    return normalized_mutual_info(clusters, labels)
