"""Count metrics against hand-computed confusions, sklearn as an oracle, and masks with known counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raytopo.errors import ConfigError, InputError
from raytopo.eval.topology_metrics import count_histogram, count_mask, count_metrics, count_samples

# true:  1 1 1 2 2 3 3 3 3      classes 1, 2, 3 (supports 3, 2, 4)
# pred:  1 1 2 2 3 3 3 0 5      0 and 5 are outside the classes: misses only
TRUE = [1, 1, 1, 2, 2, 3, 3, 3, 3]
PRED = [1, 1, 2, 2, 3, 3, 3, 0, 5]


def test_hand_built_confusion() -> None:
    m = count_metrics(TRUE, PRED)
    # class 1: tp 2, predicted 2, support 3 -> P 1, R 2/3, F1 2*1*(2/3)/(5/3) = 4/5
    # class 2: tp 1, predicted 2 (true 1 -> 2, true 2 -> 2), support 2 -> P 1/2, R 1/2, F1 1/2
    # class 3: tp 2, predicted 3 (true 2 -> 3, two true 3), support 4 -> P 2/3, R 1/2, F1 (2/3)/(7/6) = 4/7
    expected = {
        1: {"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3.0, "accuracy": 2 / 3},
        2: {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2.0, "accuracy": 1 / 2},
        3: {"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "support": 4.0, "accuracy": 1 / 2},
    }
    assert list(m.per_class) == [1, 2, 3]
    for k, row in expected.items():
        assert m.per_class[k] == pytest.approx(row)
    assert m.n == 9
    assert m.accuracy == pytest.approx(5 / 9)
    assert m.precision == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert m.recall == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert m.f1 == pytest.approx((4 / 5 + 1 / 2 + 4 / 7) / 3)
    assert m.precision_std == pytest.approx(np.std([1, 1 / 2, 2 / 3]))
    assert m.f1_std == pytest.approx(np.std([4 / 5, 1 / 2, 4 / 7]))
    # |errors| 0 0 1 0 1 0 0 3 2 -> mean 7/9, mean of squares 15/9
    assert m.mae == pytest.approx(7 / 9)
    assert m.mae_std == pytest.approx(math.sqrt(15 / 9 - (7 / 9) ** 2))
    # support-weighted std of per-class accuracies around 5/9:
    # (3 (2/3 - 5/9)^2 + 2 (1/2 - 5/9)^2 + 4 (1/2 - 5/9)^2) / 9 = (3/81 + 6/324) / 9 = 1/162
    assert m.accuracy_std == pytest.approx(math.sqrt(1 / 162))


def test_accuracy_std_equals_reference_std_when_classes_are_balanced() -> None:
    true = [1, 1, 2, 2, 3, 3]
    pred = [1, 1, 2, 0, 0, 0]
    m = count_metrics(true, pred)
    assert m.accuracy == pytest.approx(1 / 2)
    assert m.accuracy_std == pytest.approx(np.std([1.0, 0.5, 0.0]))  # the reference's np.std over classes


def test_accuracy_std_is_weighted_by_class_support() -> None:
    # per-class accuracies 1 (4 samples) and 0 (1 sample); accuracy 4/5.
    # sqrt((4 (1 - 0.8)^2 + 1 (0 - 0.8)^2) / 5) = sqrt(0.16) = 0.4; the reference's np.std([1, 0]) = 0.5
    m = count_metrics([1, 1, 1, 1, 2], [1, 1, 1, 1, 0])
    assert m.accuracy == pytest.approx(0.8)
    assert m.accuracy_std == pytest.approx(0.4)
    assert [row["accuracy"] for row in m.per_class.values()] == [1.0, 0.0]


def test_out_of_class_predictions_are_only_misses() -> None:
    m = count_metrics([1, 1, 2], [7, 7, 2])
    assert list(m.per_class) == [1, 2]  # 7 never becomes a class
    zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    ones = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    assert m.per_class[1] == {**zeros, "support": 2.0}
    assert m.per_class[2] == {**ones, "support": 1.0}
    assert m.precision == pytest.approx(0.5)
    assert m.mae == pytest.approx(12 / 3)


def test_explicit_classes_with_an_empty_class_and_true_counts_outside() -> None:
    # classes 1..3; class 3 has no samples and no predictions (all zeros); true 9 is in no class,
    # but its prediction 2 is a false positive of class 2
    m = count_metrics([1, 2, 9], [1, 2, 2], classes=[1, 2, 3])
    assert m.per_class[3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0, "accuracy": 0.0}
    assert m.per_class[2]["precision"] == pytest.approx(1 / 2)
    assert m.per_class[2]["f1"] == pytest.approx(2 / 3)
    assert m.precision == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m.accuracy == pytest.approx(2 / 3)  # over all samples
    assert m.accuracy_std == 0.0  # classes with samples (1, 2) are both measured exactly


def test_perfect_and_integral_float_inputs() -> None:
    m = count_metrics(np.array([0.0, 3.0, 3.0]), np.array([0, 3, 3]))
    assert (m.accuracy, m.accuracy_std, m.f1, m.f1_std, m.mae, m.mae_std) == (1.0, 0.0, 1.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    true = rng.integers(1, 6, size=200)
    pred = np.where(rng.random(200) < 0.6, true, rng.integers(0, 8, size=200))
    for classes in (None, [1, 2, 3, 4, 5], [2, 4, 6]):
        labels = sorted(set(true.tolist())) if classes is None else classes
        p, r, f, s = metrics.precision_recall_fscore_support(true, pred, average=None, labels=labels, zero_division=0)
        m = count_metrics(true, pred, classes)
        assert list(m.per_class) == labels
        np.testing.assert_allclose([m.per_class[k]["precision"] for k in labels], p)
        np.testing.assert_allclose([m.per_class[k]["recall"] for k in labels], r)
        np.testing.assert_allclose([m.per_class[k]["f1"] for k in labels], f)
        np.testing.assert_allclose([m.per_class[k]["support"] for k in labels], s)
        assert (m.precision, m.precision_std) == pytest.approx((p.mean(), p.std()))
        assert (m.recall, m.recall_std) == pytest.approx((r.mean(), r.std()))
        assert (m.f1, m.f1_std) == pytest.approx((f.mean(), f.std()))
        assert m.accuracy == pytest.approx(metrics.accuracy_score(true, pred))
        assert m.mae == pytest.approx(metrics.mean_absolute_error(true, pred))


@pytest.mark.parametrize(
    ("true", "pred", "classes", "message"),
    [
        ([], [], None, "at least one sample"),
        ([1, 2], [1], None, "expected 2 counts"),
        ([1, 2.5], [1, 2], None, "integer counts, got 2.5"),
        ([1, float("nan")], [1, 2], None, "integer counts"),
        ([1, 2], ["a", "b"], None, "integer counts"),
        ([[1, 2]], [[1, 2]], None, "1-D"),
        ([1, 2], [1, 2], [1, 1], "distinct"),
        ([1, 2], [1, 2], [], "at least one class"),
    ],
)
def test_bad_inputs(true: list, pred: list, classes: list | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        count_metrics(true, pred, classes)


def test_histogram() -> None:
    assert count_histogram(TRUE, PRED) == {
        0: {"true": 0, "pred": 1},
        1: {"true": 3, "pred": 2},
        2: {"true": 2, "pred": 2},
        3: {"true": 4, "pred": 3},
        5: {"true": 0, "pred": 1},
    }


def _squares(positions: list[tuple[int, int]], size: int = 4, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for r, c in positions:
        mask[r : r + size, c : c + size] = 255
    return mask


def test_count_samples_components_and_holes() -> None:
    separated = _squares([(2, 2), (2, 12), (20, 20)])  # 3 components, no holes
    diagonal = _squares([(2, 2), (6, 6)])  # touch at one corner: 2 under 4-, 1 under 8-connectivity
    ring = _squares([(4, 4)], size=12)
    ring[7:13, 7:13] = 0  # one hole
    two_rings = np.concatenate([ring, ring], axis=1)
    masks = [separated, diagonal, ring, two_rings]
    assert count_samples(masks, dim=0, connectivity=4).tolist() == [3, 2, 1, 2]
    assert count_samples(masks, dim=0, connectivity=8).tolist() == [3, 1, 1, 2]
    assert count_samples(iter(masks), dim=1).tolist() == [0, 0, 1, 2]
    assert count_samples([], dim=0).dtype == np.int64


def test_count_mask_binarises_like_the_reference() -> None:
    mask = _squares([(2, 2), (2, 12)])
    mask[2:6, 12:16] = 128  # not > 128: background
    rgb = np.stack([mask, np.zeros_like(mask), np.full_like(mask, 255)], axis=-1)  # channel 0 only
    assert count_mask(mask, 0) == 1
    assert count_mask(rgb, 0) == 1


def test_count_mask_rejects_bad_dim_and_connectivity() -> None:
    with pytest.raises(ConfigError, match="dim"):
        count_mask(np.zeros((4, 4), bool), 2)
    with pytest.raises(ConfigError, match="connectivity"):
        count_mask(np.zeros((4, 4), bool), 0, connectivity=6)
