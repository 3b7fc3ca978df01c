"""Count metrics of generated masks, as the TDN reference evaluation computes them (docs/references.md, TDN 5).

Pure numpy. The counting rules (binarisation, components, holes) live in :mod:`raytopo.topology.betti`;
this module turns per-sample counts into metrics.

Metrics of target counts ``c`` against measured counts ``ĉ`` (:func:`count_metrics`):

* **accuracy**: fraction of samples with ``ĉ == c`` (exact match), over all samples.
* **per-class accuracy** of a class ``k``: the fraction of samples with ``c == k`` that have ``ĉ == k``
  (identical to the recall of ``k``; 0 for a class without samples).
* **accuracy_std**: the spread of the per-class accuracies. The reference reports ``np.std`` of the
  per-class accuracies, which is a spread around the *unweighted* mean of the per-class accuracies: that
  equals the accuracy only when every class has the same number of samples. raytopo weights each class
  by its number of samples, ``sqrt(sum_k w_k (acc_k - acc)^2)`` with ``w_k = n_k / sum_j n_j`` over the
  classes with samples, so the spread is centred on the accuracy it is reported with; with equal samples
  per class it is exactly the reference's number. (Classes without samples have weight 0.)
* **precision, recall, F1** per class: ``sklearn.metrics.precision_recall_fscore_support(average=None,
  labels=classes, zero_division=0)`` semantics, reported as the macro (unweighted) mean and ``np.std``
  (``ddof=0``) over the classes, as the reference does. A predicted count outside ``classes`` is only a
  miss (a false negative of the true class), never a false positive of any class; a true count outside
  ``classes`` (possible only with explicit ``classes``) adds to no class's recall, but a prediction of a
  class for it is a false positive of that class.
* **mae**: mean of ``|c - ĉ|`` over all samples, with its ``np.std`` (``ddof=0``).

``classes`` defaults to the sorted set of target counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from raytopo.errors import ConfigError, InputError
from raytopo.topology.betti import binarise, count_components, count_holes

PER_CLASS_KEYS: tuple[str, ...] = ("precision", "recall", "f1", "support", "accuracy")


@dataclass(frozen=True)
class CountMetrics:
    """Metrics of measured against target counts (see the module docstring for the definitions).

    ``per_class`` maps each class to ``precision``, ``recall``, ``f1``, ``support`` (number of samples
    with that target count) and ``accuracy`` (fraction of them measured exactly).
    """

    accuracy: float
    accuracy_std: float
    precision: float
    precision_std: float
    recall: float
    recall_std: float
    f1: float
    f1_std: float
    mae: float
    mae_std: float
    n: int
    per_class: dict[int, dict[str, float]]

    def to_dict(self) -> dict:
        """A JSON-ready dict (per-class keys become strings, as JSON requires)."""
        result = asdict(self)
        result["per_class"] = {str(k): dict(v) for k, v in self.per_class.items()}
        return result


def count_metrics(true: Sequence[int], pred: Sequence[int], classes: Sequence[int] | None = None) -> CountMetrics:
    """Accuracy, macro precision/recall/F1 and MAE of ``pred`` counts against ``true`` counts.

    Args:
        true: target count of every sample (integers; integral floats are accepted).
        pred: measured count of every sample, aligned with ``true``.
        classes: the classes of the per-class metrics; default: the sorted set of ``true``.

    Raises:
        InputError: empty or misaligned inputs, non-integer counts, or repeated/empty ``classes``.
    """
    true_arr = _as_counts(true, "true")
    pred_arr = _as_counts(pred, "pred")
    if true_arr.size == 0:
        raise InputError("true: expected at least one sample, got none")
    if true_arr.shape != pred_arr.shape:
        raise InputError(f"pred: expected {true_arr.size} counts (one per true count), got {pred_arr.size}")
    labels = np.unique(true_arr) if classes is None else _as_classes(classes)
    precision, recall, f1, support = _per_class(true_arr, pred_arr, labels)
    accuracy = float(np.mean(true_arr == pred_arr))
    errors = np.abs(true_arr - pred_arr).astype(np.float64)
    return CountMetrics(
        accuracy=accuracy,
        accuracy_std=_weighted_std(recall, support),
        precision=float(precision.mean()),
        precision_std=float(precision.std()),
        recall=float(recall.mean()),
        recall_std=float(recall.std()),
        f1=float(f1.mean()),
        f1_std=float(f1.std()),
        mae=float(errors.mean()),
        mae_std=float(errors.std()),
        n=int(true_arr.size),
        per_class={
            int(k): dict(zip(PER_CLASS_KEYS, map(float, (p, r, f, s, r))))
            for k, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
    )


def count_mask(mask: np.ndarray, dim: int, connectivity: int = 4, threshold: float | None = None) -> int:
    """The number of components (``dim=0``, 4- or 8-connected) or holes (``dim=1``) of one mask.

    ``mask`` is binarised with :func:`raytopo.topology.betti.binarise` (a bool mask is used as is; uint8
    ``> 128``; channel 0 of a colour image). Holes do not depend on ``connectivity``.

    Raises:
        ConfigError: ``dim`` is not 0 or 1, or ``connectivity`` is not 4 or 8.
        InputError: the mask is invalid (shape, dtype, non-finite values).
    """
    if dim not in (0, 1):
        raise ConfigError(f"dim: expected 0 (components) or 1 (holes), got {dim!r}")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity: expected 4 or 8, got {connectivity!r}")
    foreground = binarise(mask, threshold)
    return count_components(foreground, connectivity) if dim == 0 else count_holes(foreground)


def count_samples(
    masks: Iterable[np.ndarray], dim: int, connectivity: int = 4, threshold: float | None = None
) -> np.ndarray:
    """:func:`count_mask` of every mask, as an int64 array (streams: masks may be a generator)."""
    return np.array([count_mask(m, dim, connectivity, threshold) for m in masks], dtype=np.int64)


def count_histogram(true: Sequence[int], pred: Sequence[int]) -> dict[int, dict[str, int]]:
    """For every count that occurs in ``true`` or ``pred``: how many targets and predictions have it."""
    true_arr, pred_arr = _as_counts(true, "true"), _as_counts(pred, "pred")
    values = np.union1d(true_arr, pred_arr)
    return {int(v): {"true": int(np.sum(true_arr == v)), "pred": int(np.sum(pred_arr == v))} for v in values}


def _per_class(
    true: np.ndarray, pred: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (zero_division=0) and support, aligned with ``labels``."""
    hit = true == pred
    tp = np.array([np.sum(hit & (true == k)) for k in labels], dtype=np.float64)
    predicted = np.array([np.sum(pred == k) for k in labels], dtype=np.float64)
    support = np.array([np.sum(true == k) for k in labels], dtype=np.float64)
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, support)
    f1 = _safe_ratio(2 * tp, predicted + support)  # = 2tp / (2tp + fp + fn)
    return precision, recall, f1, support


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _weighted_std(values: np.ndarray, weights: np.ndarray) -> float:
    """Std of ``values`` weighted by ``weights`` around their weighted mean; 0 when all weights are 0."""
    total = weights.sum()
    if total == 0:
        return 0.0
    mean = float(np.sum(weights * values) / total)
    return float(np.sqrt(np.sum(weights * (values - mean) ** 2) / total))


def _as_counts(values: Sequence[int], name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; InputError unless every value is a finite integer."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name}: expected a 1-D sequence of counts, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not numeric:
        raise InputError(f"{name}: expected integer counts, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            bad = float(array[~np.isfinite(array) | (array != np.round(array))][0])
            raise InputError(f"{name}: expected integer counts, got {bad!r}")
    return array.astype(np.int64)


def _as_classes(classes: Sequence[int]) -> np.ndarray:
    labels = _as_counts(classes, "classes")
    if labels.size == 0:
        raise InputError("classes: expected at least one class, got none")
    if np.unique(labels).size != labels.size:
        raise InputError(f"classes: expected distinct values, got {labels.tolist()}")
    return labels
