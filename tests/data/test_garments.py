"""Synthetic garments (FashionMNIST stand-in): determinism, layout, and that the classes carry information.

Truth: a nearest-class-mean classifier fitted on one seed and scored on another (chance is 10%), and plain
Euclidean distances between images.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from raytopo.data.garments import GARMENT_CLASSES, garment_images
from raytopo.errors import InputError


def test_shapes_dtypes_and_balanced_labels():
    images, labels = garment_images(25, size=32, seed=3)
    assert images.shape == (25, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (25,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(25) % 10)
    assert len(GARMENT_CLASSES) == 10
    assert images.max() > 100  # a garment, not an empty picture
    empty_images, empty_labels = garment_images(0)
    assert empty_images.shape == (0, 28, 28) and empty_labels.shape == (0,)


def test_image_depends_only_on_seed_and_index():
    first, _ = garment_images(12, seed=5)
    again, _ = garment_images(30, seed=5)
    np.testing.assert_array_equal(first, again[:12])
    other, _ = garment_images(12, seed=6)
    assert not np.array_equal(first, other)


def test_classes_are_distinguishable_but_not_trivially():
    train, train_labels = garment_images(1000, seed=0)
    test, test_labels = garment_images(500, seed=1)
    train_x = train.reshape(len(train), -1) / 255.0
    test_x = test.reshape(len(test), -1) / 255.0
    means = np.stack([train_x[train_labels == c].mean(axis=0) for c in range(10)])
    predicted = cdist(test_x, means).argmin(axis=1)
    accuracy = float((predicted == test_labels).mean())
    assert 0.6 < accuracy < 0.99  # far above chance (0.1), yet some classes look alike (as in FashionMNIST)

    distances = cdist(test_x[:200], test_x[:200])
    same = test_labels[:200, None] == test_labels[None, :200]
    off_diagonal = ~np.eye(200, dtype=bool)
    assert distances[same & off_diagonal].mean() < 0.8 * distances[~same].mean()


def test_images_vary_within_a_class():
    images, labels = garment_images(40, seed=0)
    tshirts = images[labels == 0].astype(float)
    assert np.abs(tshirts[0] - tshirts[1]).mean() > 5  # shift/scale/intensity/noise differ per image


@pytest.mark.parametrize("kwargs,name", [({"num_images": -1}, "num_images"), ({"num_images": 2, "size": 4}, "size")])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(InputError, match=name):
        garment_images(**kwargs)
