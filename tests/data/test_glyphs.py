"""Glyph dataset: deterministic, no image symmetric, the distribution G-invariant (and not without augmentation)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from raytopo.data.glyphs import PENTOMINOES, glyph_image, glyph_images
from raytopo.errors import ConfigError
from raytopo.models.equivariant import act, get_group

N = 3000
Z_LIMIT = 5.0  # |mean difference| / standard error; the deterministic seeds give |z| < 3 on invariant sets


@cache
def dataset(group: str) -> np.ndarray:
    return glyph_images(N, 16, group, seed=7)


def transformed(g, images: np.ndarray) -> np.ndarray:
    return act(g, torch.from_numpy(images)).numpy()


def second_moments(images: np.ndarray) -> np.ndarray:
    """Per image: elongation (var_y - var_x) / (var_y + var_x) and correlation cov_xy / sqrt(var_x var_y) of the
    intensity; a quarter turn negates both, a mirror negates the correlation."""
    size = images.shape[-1]
    coords = np.arange(size) - (size - 1) / 2
    weights = images.astype(np.float64) / images.sum(axis=(1, 2), keepdims=True)
    mean_y = (weights.sum(2) * coords).sum(1)[:, None, None]
    mean_x = (weights.sum(1) * coords).sum(1)[:, None, None]
    dy, dx = coords[None, :, None] - mean_y, coords[None, None, :] - mean_x
    var_y, var_x = (weights * dy**2).sum((1, 2)), (weights * dx**2).sum((1, 2))
    cov = (weights * dx * dy).sum((1, 2))
    return np.stack([(var_y - var_x) / (var_y + var_x), cov / np.sqrt(var_x * var_y)], axis=1)


def moment_z_scores(images: np.ndarray, g) -> np.ndarray:
    """z-scores of the mean change of both moments between ``X`` and ``g.X``."""
    change = second_moments(transformed(g, images)) - second_moments(images)
    return np.abs(change.mean(0)) / (change.std(0) / np.sqrt(len(images)) + 1e-12)


def test_shapes_dtype_and_determinism() -> None:
    for size in (16, 28, 32, 64):
        images = glyph_images(5, size, "D4", seed=3)
        assert images.shape == (5, size, size) and images.dtype == np.uint8
        assert images.max() >= 128 and images.min() == 0
        assert np.array_equal(images, glyph_images(5, size, "D4", seed=3))
    # image i depends only on (seed, i)
    assert np.array_equal(glyph_images(8, 16, seed=1)[5], glyph_image(5, 16, seed=1))
    assert not np.array_equal(glyph_images(3, 16, seed=1), glyph_images(3, 16, seed=2))


def test_letters_have_no_symmetry() -> None:
    for name, rows in PENTOMINOES.items():
        grid = np.zeros((4, 4), dtype=np.uint8)
        cells = np.array([[c == "#" for c in row] for row in rows])
        grid[: cells.shape[0], : cells.shape[1]] = cells
        for g in get_group("D4").elements()[1:]:
            image = transformed(g, grid)
            # compare up to translation: crop both to their bounding boxes
            assert not np.array_equal(crop(image), crop(grid)), (name, g.name)


def crop(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(image)
    return image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_single_images_are_not_symmetric() -> None:
    images = dataset("D4")[:500]
    symmetric = sum(
        any(np.array_equal(transformed(g, x), x) for g in get_group("D4").elements()[1:]) for x in images
    )
    assert symmetric <= 5


@pytest.mark.parametrize("group", ["Z2", "C4", "D4"])
def test_distribution_is_invariant(group: str) -> None:
    images = dataset(group)
    mean = images.mean(0) / 255.0
    pixel_se = images.std(0) / 255.0 / np.sqrt(N)
    for g in get_group(group).elements():
        assert moment_z_scores(images, g).max() < Z_LIMIT, g.name
        mean_change = np.abs(transformed(g, mean) - mean)
        assert (mean_change / (np.sqrt(2) * pixel_se + 1e-12)).max() < 6.0, g.name


def test_distribution_without_augmentation_is_not_invariant() -> None:
    # the test above can fail: un-augmented letters are tall and leaning, a Z2 set is still tall
    r90, mirror = get_group("C4").elements()[1], get_group("Z2").elements()[1]
    assert moment_z_scores(dataset("trivial"), r90).max() > 4 * Z_LIMIT
    assert moment_z_scores(dataset("trivial"), mirror).max() > 2 * Z_LIMIT
    assert moment_z_scores(dataset("Z2"), r90).max() > 4 * Z_LIMIT


def test_errors() -> None:
    with pytest.raises(ConfigError, match="size"):
        glyph_images(2, 8)
    with pytest.raises(ConfigError, match="num_images"):
        glyph_images(-1, 16)
    with pytest.raises(ConfigError, match="unknown group"):
        glyph_images(2, 16, "H")
