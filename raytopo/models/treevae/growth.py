"""TreeVAE's growth and pruning rules as pure functions of the leaf probabilities (brief ``treevae.md`` section 1
"Phases" 2 and 4; reference ``utils/training_utils.py`` ``compute_growing_leaf`` / ``compute_pruning_leaf``).

Both take ``leaf_probabilities`` ``[N, L]`` (q-routing ``P(leaf | x)`` over a data set, columns in the order of
``leaf_paths``) as a numpy array or a tensor, and return leaf paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raytopo.errors import InputError


def _as_matrix(leaf_probabilities, leaf_paths: Sequence[str]) -> np.ndarray:
    if hasattr(leaf_probabilities, "detach"):
        leaf_probabilities = leaf_probabilities.detach().cpu().numpy()
    probabilities = np.asarray(leaf_probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] < 1 or probabilities.shape[1] != len(leaf_paths):
        raise InputError(f"leaf_probabilities: expected shape [N >= 1, {len(leaf_paths)}] (one column per leaf path), "
                         f"got {list(probabilities.shape)}")
    return probabilities


def effective_leaves(leaf_probabilities, leaf_paths: Sequence[str], threshold: float = 0.01) -> int:
    """``n_eff``: the number of leaves holding at least ``threshold`` (1%) of the summed probability mass."""
    mass = _as_matrix(leaf_probabilities, leaf_paths).sum(axis=0)
    return int(np.count_nonzero(mass / mass.sum() >= threshold))


def choose_leaf_to_grow(leaf_probabilities, leaf_paths: Sequence[str], batch_size: int, max_depth: int,
                        max_leaves: int = 10) -> str | None:
    """The leaf to split next, or None when growth stops.

    - Stop when ``n_eff >= max_leaves``.
    - Count, per leaf, the samples with ``P >= min(1/n_eff, 0.5)`` and rank the leaves by that count, highest first.
      Ties go to the rightmost leaf (the reference reverses an ascending ``argsort``).
    - Skip leaves with fewer than ``batch_size`` such samples.
    - If the first leaf not skipped is at ``max_depth`` (its depth is ``len(path)``), **all growth stops**
      (reference ``training_utils.py:427``): None, without looking at the next leaf.
    """
    probabilities = _as_matrix(leaf_probabilities, leaf_paths)
    n_eff = effective_leaves(probabilities, leaf_paths)
    if n_eff >= max_leaves:
        return None
    counts = np.count_nonzero(probabilities >= min(1.0 / n_eff, 0.5), axis=0)
    ranking = np.argsort(counts, kind="stable")[::-1]
    for index in ranking:
        if counts[index] < batch_size:
            continue
        path = leaf_paths[index]
        return None if len(path) >= max_depth else path
    return None


def leaves_to_prune(leaf_probabilities, leaf_paths: Sequence[str], threshold: float = 0.01) -> list[str]:
    """``[path]`` of the leaf with the fewest argmax assignments if it holds fewer than ``threshold`` (1%) of the
    samples, else ``[]`` (first such leaf on ties). The reference prunes one leaf at a time and recomputes the
    probabilities in between (pruning turns the parent into a pass-through node, which changes the sibling's P)."""
    probabilities = _as_matrix(leaf_probabilities, leaf_paths)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(leaf_paths))
    index = int(np.argmin(counts))
    return [leaf_paths[index]] if counts[index] < threshold * counts.sum() else []
