"""Judges trained by raytopo: IoU and topology agreement against hand counts on constructed masks, and the
classifier / segmenter on synthetic sets whose truth is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytopo.errors import ConfigError, InputError
from raytopo.eval.judges import (
    Classifier,
    Segmenter,
    binarise,
    class_agreement,
    mask_iou,
    mean_iou,
    topology_agreement,
    topology_agreement_by_dim,
    train_classifier,
    train_segmenter,
)
from raytopo.eval.topology_metrics import count_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16


def _box(rows: tuple[int, int], cols: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """A bool mask with rows[0]..rows[1] x cols[0]..cols[1] (inclusive) set."""
    mask = np.zeros((size, size), bool)
    mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return mask


# --- mask_iou --------------------------------------------------------------------------------------------------


def test_mask_iou_of_two_overlapping_rectangles_is_the_closed_form() -> None:
    a = _box((1, 4), (1, 4))  # 4 x 4 = 16 pixels
    b = _box((3, 6), (2, 7))  # 4 x 6 = 24 pixels
    # intersection rows 3..4 x cols 2..4 = 2 x 3 = 6; union 16 + 24 - 6 = 34
    assert mask_iou(a[None], b[None]) == pytest.approx([6 / 34])
    assert mask_iou(b[None], a[None]) == pytest.approx([6 / 34])


def test_mask_iou_per_image_with_empty_disjoint_and_identical_masks() -> None:
    empty, a, far = np.zeros((SIZE, SIZE), bool), _box((1, 4), (1, 4)), _box((10, 12), (10, 12))
    pred = torch.from_numpy(np.stack([empty, a, a, empty, a]))
    target = torch.from_numpy(np.stack([empty, far, a, a, _box((1, 4), (1, 2))]))
    iou = mask_iou(pred, target)
    # empty/empty = 1 by definition; disjoint = 0; identical = 1; empty vs a = 0; half of a = 8/16
    assert iou.dtype == np.float64 and iou.shape == (5,)
    np.testing.assert_allclose(iou, [1.0, 0.0, 1.0, 0.0, 0.5])
    assert mean_iou(pred, target) == pytest.approx(2.5 / 5)


def test_mask_iou_rejects_mismatched_or_non_bool_masks() -> None:
    a = np.zeros((2, SIZE, SIZE), bool)
    with pytest.raises(InputError, match="target: expected bool masks of shape"):
        mask_iou(a, a[:1])
    with pytest.raises(InputError, match="pred: expected bool masks"):
        mask_iou(a.astype(np.float32), a)


# --- binarise --------------------------------------------------------------------------------------------------


def test_binarise_thresholds_channel_zero_at_zero() -> None:
    masks = torch.tensor([[[[-1.0, 0.0], [0.2, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    expected = torch.tensor([[[False, False], [True, True]]])
    assert torch.equal(binarise(masks), expected)
    assert torch.equal(binarise(masks.numpy()[:, 0]), expected)  # [N, H, W] array
    assert torch.equal(binarise(expected), expected)  # bool passes through
    with pytest.raises(InputError, match=r"masks: expected shape \[N, 1, H, W\]"):
        binarise(torch.zeros(4, 4))


# --- topology agreement ----------------------------------------------------------------------------------------

SQUARE = _box((3, 9), (3, 9))
EXTRA = SQUARE | _box((12, 14), (12, 14))
RING = SQUARE & ~_box((5, 7), (5, 7))


def test_constructed_masks_have_the_hand_counts() -> None:
    # square: 1 component 0 holes; square + separate square: 2, 0; square with a 3x3 hole: 1, 1
    for mask, (components, holes) in ((SQUARE, (1, 0)), (EXTRA, (2, 0)), (RING, (1, 1))):
        u8 = mask.astype(np.uint8) * 255
        assert (count_mask(u8, 0), count_mask(u8, 1)) == (components, holes)


def test_topology_agreement_of_identical_masks_is_one() -> None:
    masks = np.stack([SQUARE, EXTRA, RING])
    assert topology_agreement_by_dim(masks, masks) == {"dim0": 1.0, "dim1": 1.0, "all": 1.0}
    assert topology_agreement(masks, masks) == 1.0


def test_topology_agreement_per_dim_against_hand_counts() -> None:
    pred = np.stack([SQUARE, EXTRA, RING])
    target = np.stack([SQUARE, SQUARE, SQUARE])
    # components pred 1 2 1 vs target 1 1 1 -> agree T F T; holes pred 0 0 1 vs 0 0 0 -> T T F; both: T F F
    assert topology_agreement_by_dim(pred, target) == pytest.approx({"dim0": 2 / 3, "dim1": 2 / 3, "all": 1 / 3})
    assert topology_agreement(pred, target) == pytest.approx(1 / 3)
    assert topology_agreement_by_dim(pred, target, dims=(0,)) == pytest.approx({"dim0": 2 / 3, "all": 2 / 3})
    assert topology_agreement(pred, target, dims=(1,)) == pytest.approx(2 / 3)
    # the same masks as [-1, 1] float tensors [N, 1, H, W] give the same numbers
    as_float = [torch.from_numpy(np.where(m, 1.0, -1.0)[:, None]) for m in (pred, target)]
    assert topology_agreement_by_dim(*as_float) == pytest.approx({"dim0": 2 / 3, "dim1": 2 / 3, "all": 1 / 3})


def test_topology_agreement_passes_the_connectivity_on() -> None:
    diagonal = _box((2, 4), (2, 4)) | _box((5, 7), (5, 7))  # two squares touching at one corner
    single = _box((2, 7), (2, 7))
    pred, target = diagonal[None], single[None]
    assert topology_agreement_by_dim(pred, target, connectivity=4)["dim0"] == 0.0  # 2 components vs 1
    assert topology_agreement_by_dim(pred, target, connectivity=8)["dim0"] == 1.0  # 1 vs 1


def test_topology_agreement_rejects_bad_arguments() -> None:
    masks = np.stack([SQUARE, RING])
    with pytest.raises(InputError, match="target_masks: expected 2 masks of 16x16"):
        topology_agreement(masks, masks[:1])
    with pytest.raises(ConfigError, match="dims"):
        topology_agreement(masks, masks, dims=(2,))
    with pytest.raises(ConfigError, match="connectivity"):
        topology_agreement(masks, masks, connectivity=6)


# --- synthetic sets --------------------------------------------------------------------------------------------


def _classes(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of noisy RGB images: red, green, horizontal stripes, vertical stripes (stripes are grey, so the
    two stripe classes share their colour statistics and differ only in texture orientation)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    stripes = np.where((np.arange(size) // 2) % 2 == 0, 0.6, -0.6)
    images = np.zeros((n, 3, size, size))
    for image, k in zip(images, labels):
        if k == 0:
            image[0] += 0.6
            image[1:] -= 0.3
        elif k == 1:
            image[1] += 0.6
            image[[0, 2]] -= 0.3
        elif k == 2:
            image += stripes[:, None]
        else:
            image += stripes[None, :]
    images += 0.3 * rng.normal(size=images.shape)
    return torch.from_numpy(np.clip(images, -1, 1)).float(), torch.from_numpy(labels)


def _shapes(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy RGB images of 1-3 filled discs, rectangles or rings in one colour on a background of another, with
    their masks [N, 1, H, W] in {-1, 1}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(5, size - 5, 2)
            kind, d2 = rng.integers(0, 3), (yy - cy) ** 2 + (xx - cx) ** 2
            if kind == 0:
                mask |= d2 <= rng.uniform(2.5, 6) ** 2
            elif kind == 1:
                h, w = rng.integers(1, 5, 2)
                mask[cy - h:cy + h + 1, cx - w:cx + w + 1] = True
            else:
                radius = rng.uniform(4.5, 6.5)
                mask |= (d2 <= radius ** 2) & (d2 > (radius - 2.0) ** 2)
    background = np.array([-0.5, -0.2, 0.1])[:, None, None]
    foreground = np.array([0.6, 0.1, -0.5])[:, None, None]
    images = np.where(masks[:, None], foreground, background) + 0.2 * rng.normal(size=(n, 3, size, size))
    return torch.from_numpy(np.clip(images, -1, 1)).float(), torch.from_numpy(np.where(masks, 1.0, -1.0)[:, None])


@pytest.fixture(scope="module")
def classifier() -> tuple[Classifier, float]:
    images, labels = _classes(200, seed=0)
    return train_classifier(images, labels, 4)


@pytest.fixture(scope="module")
def segmenter() -> tuple[Segmenter, float]:
    images, masks = _shapes(200, seed=0)
    return train_segmenter(images, masks)


def test_classifier_separates_colour_and_texture_classes(classifier) -> None:
    model, held_out_accuracy = classifier
    assert held_out_accuracy >= 0.9
    assert held_out_accuracy * 40 == pytest.approx(round(held_out_accuracy * 40))  # 20 % of 200 held out
    assert not model.training


def test_class_agreement_is_the_accuracy_on_the_given_labels(classifier) -> None:
    model, _ = classifier
    images, labels = _classes(120, seed=1)  # fresh images, as a generator would produce
    with torch.no_grad():
        predicted = model(images).argmax(1)
    agreement = class_agreement(model, images, labels)
    assert agreement == pytest.approx(float((predicted == labels).double().mean()))
    assert agreement >= 0.9
    wrong = (labels + 1) % 4  # every label wrong
    assert class_agreement(model, images, wrong) <= 1 - agreement + 1e-12
    shuffled = labels[torch.from_numpy(np.random.default_rng(2).permutation(120))]
    assert class_agreement(model, images, shuffled) < 0.5
    assert torch.equal(model.predict(images.numpy()), predicted)


def test_held_out_accuracy_is_measured_on_images_kept_out_of_training() -> None:
    # pure noise with random labels: the net memorises its training images, but cannot beat chance on
    # images it never saw; a score computed on training images would be close to the overall agreement
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(64, 1, 8, 8))).float().clamp(-1, 1)
    labels = torch.from_numpy(rng.integers(0, 2, 64))
    model, held_out_accuracy = train_classifier(images, labels, 2, steps=300, lr=1e-2)
    overall = class_agreement(model, images, labels)
    assert overall >= 0.75
    assert held_out_accuracy <= overall - 0.25


def test_segmenter_follows_masks_and_their_topology(segmenter) -> None:
    model, held_out_iou = segmenter
    assert held_out_iou >= 0.8
    images, masks = _shapes(100, seed=1)
    predicted = model.predict(images)
    assert predicted.dtype == torch.bool and predicted.shape == (100, 32, 32)
    assert mean_iou(predicted, binarise(masks)) >= 0.8
    truth = binarise(masks).numpy()
    assert any(count_mask(m.astype(np.uint8) * 255, 1) > 0 for m in truth)  # the set has holes to get right
    by_dim = topology_agreement_by_dim(predicted, masks)
    assert by_dim["all"] >= 0.8
    assert by_dim["dim0"] >= by_dim["all"] and by_dim["dim1"] >= by_dim["all"]


def test_same_seed_gives_the_same_judge_and_score() -> None:
    images, labels = _classes(60, seed=3)
    first, score = train_classifier(images, labels, 4, steps=15, seed=7)
    second, again = train_classifier(images, labels, 4, steps=15, seed=7)
    other, _ = train_classifier(images, labels, 4, steps=15, seed=8)
    assert score == again
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    images, masks = _shapes(30, seed=3)
    assert train_segmenter(images, masks, steps=10, seed=7)[1] == train_segmenter(images, masks, steps=10, seed=7)[1]


def test_judges_train_inside_a_no_grad_evaluation() -> None:
    """The trainer evaluates under torch.no_grad; a judge first trained there must still learn."""
    images, labels = _classes(60, seed=3)
    with torch.no_grad():
        model, _ = train_classifier(images, labels, 4, steps=15, seed=7)
    reference, _ = train_classifier(images, labels, 4, steps=15, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_training_leaves_threads_and_the_global_rng_alone() -> None:
    images, labels = _classes(20, seed=4, size=8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # training itself runs on one thread, then must restore this setting
    try:
        torch.manual_seed(123)
        train_classifier(images, labels, 4, steps=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(torch.rand(3), expected)


def test_models_take_any_size_from_eight_pixels_and_one_or_three_channels() -> None:
    for channels, (h, w) in ((1, (8, 8)), (3, (9, 13)), (1, (28, 28))):
        x = torch.zeros(2, channels, h, w)
        assert Classifier(channels, 5).predict(x).shape == (2,)
        assert Segmenter(channels).predict(x).shape == (2, h, w)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y, m: train_classifier(x, y[:5], 4), "labels: expected 10 labels"),
        (lambda x, y, m: train_classifier(x, y + 4, 4), r"labels: expected values in \[0, 4\)"),
        (lambda x, y, m: train_classifier(x[:, :2], y, 4), r"images: expected shape \[N, C, H, W\]"),
        (lambda x, y, m: train_classifier(x[..., :7], y, 4), r"H, W >= 8"),
        (lambda x, y, m: train_classifier(x[:1], y[:1], 4), "images: expected at least 2 images"),
        (lambda x, y, m: train_segmenter(x, m[:, :, :8]), "masks: expected 10 masks of 16x16"),
        (lambda x, y, m: class_agreement(Classifier(1, 4), x, y), r"C in \(1,\)"),
    ],
)
def test_mismatched_inputs_raise_one_line_input_errors(call, message) -> None:
    x, y = torch.zeros(10, 3, 16, 16), torch.arange(10) % 4
    m = -torch.ones(10, 1, 16, 16)
    with pytest.raises(InputError, match=message) as info:
        call(x, y, m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("settings", [{"held_out": 0.0}, {"held_out": 1.0}, {"steps": 0}, {"lr": 0.0}])
def test_out_of_range_settings_raise_config_errors(settings) -> None:
    with pytest.raises(ConfigError):
        train_classifier(torch.zeros(10, 3, 16, 16), torch.arange(10) % 4, 4, **settings)
