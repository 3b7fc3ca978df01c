"""Vietoris-Rips persistence: checked against a minimum spanning tree, hand-derived shapes, gudhi and giotto-ph."""

from __future__ import annotations

import numpy as np
import pytest
from gph import ripser_parallel
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist

from raytopo.errors import ConfigError, InputError
from raytopo.topology.rips import as_point_cloud, rips_persistence

BACKENDS = ("giotto", "gudhi")


def random_cloud(seed: int, n: int = 30, dim: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def mst_edge_lengths(cloud: np.ndarray) -> np.ndarray:
    """Independent truth for H0 of a Rips filtration: the edge lengths of a minimum spanning tree."""
    tree = minimum_spanning_tree(cdist(cloud, cloud))
    return np.sort(tree.data)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_h0_deaths_are_the_minimum_spanning_tree_edges(backend: str, seed: int) -> None:
    cloud = random_cloud(seed)
    h0 = rips_persistence(cloud, maxdim=0, backend=backend)[0]
    np.testing.assert_allclose(np.sort(h0.finite().deaths), mst_edge_lengths(cloud), rtol=1e-12)
    assert np.all(h0.births == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_are_the_lengths_of_their_cells(backend: str) -> None:
    cloud = random_cloud(3, n=25, dim=2)
    distances = cdist(cloud, cloud)
    h0, h1 = rips_persistence(cloud, maxdim=1, backend=backend)
    assert len(h1) > 0, "the test cloud should have 1-cycles"
    for diagram in (h0.finite(), h1):
        np.testing.assert_allclose(diagram.births, distances[diagram.birth_cells[:, 0], diagram.birth_cells[:, 1]])
        np.testing.assert_allclose(diagram.deaths, distances[diagram.death_cells[:, 0], diagram.death_cells[:, 1]])
    assert np.all(h1.deaths > h1.births)


@pytest.mark.parametrize("backend", BACKENDS)
def test_h0_layout_every_vertex_born_once_one_essential(backend: str) -> None:
    cloud = random_cloud(4, n=20)
    h0 = rips_persistence(cloud, maxdim=0, backend=backend)[0]
    assert len(h0) == 20
    assert np.array_equal(h0.birth_cells[:, 0], h0.birth_cells[:, 1])
    assert sorted(h0.birth_cells[:, 0]) == list(range(20))
    assert int(h0.essential.sum()) == 1
    essential = h0.select(h0.essential)
    assert essential.deaths[0] == np.inf and essential.death_cells.tolist() == [[-1, -1]]


def test_values_match_giotto_own_diagram() -> None:
    """The float64 values from the generator edges agree with giotto-ph's float32 diagram values."""
    cloud = random_cloud(5, n=40, dim=4)
    raw = ripser_parallel(cloud, maxdim=1, n_threads=1)["dgms"]
    ours = rips_persistence(cloud, maxdim=1)
    for dim in (0, 1):
        expected = raw[dim][np.isfinite(raw[dim][:, 1])]
        got = ours[dim].finite().points
        np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], expected[np.lexsort(expected.T[::-1])], rtol=1e-6)


@pytest.mark.parametrize("seed", [10, 11, 12, 13])
def test_giotto_and_gudhi_agree(seed: int) -> None:
    cloud = random_cloud(seed, n=24, dim=2 + seed % 2)
    for fast, slow in zip(rips_persistence(cloud, 1, "giotto"), rips_persistence(cloud, 1, "gudhi")):
        assert len(fast) == len(slow)
        fast_points, slow_points = fast.finite().points, slow.finite().points
        np.testing.assert_allclose(
            fast_points[np.lexsort(fast_points.T[::-1])], slow_points[np.lexsort(slow_points.T[::-1])], rtol=1e-12
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("sides", "death"), [(4, np.sqrt(2.0)), (6, np.sqrt(3.0))])
def test_regular_polygon_has_one_cycle(backend: str, sides: int, death: float) -> None:
    """A regular polygon with unit sides: one 1-cycle born at 1 (the sides), filled at the hand-derived
    diameter of its triangles (square: the diagonal sqrt 2; hexagon: the short diagonal sqrt 3)."""
    angles = 2 * np.pi * np.arange(sides) / sides
    radius = 1.0 / (2 * np.sin(np.pi / sides))
    cloud = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    h1 = rips_persistence(cloud, maxdim=1, backend=backend)[1]
    significant = h1.select(h1.persistence > 1e-9)
    np.testing.assert_allclose(significant.points, [[1.0, death]], rtol=1e-9)


def test_maxdim_zero_returns_only_h0() -> None:
    diagrams = rips_persistence(random_cloud(6, n=10), maxdim=0)
    assert [d.dim for d in diagrams] == [0]


def test_as_point_cloud_flattens_each_sample() -> None:
    batch = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    cloud = as_point_cloud(batch)
    assert cloud.shape == (4, 6) and cloud.dtype == np.float64
    np.testing.assert_array_equal(cloud[2], batch[2].ravel())


def test_batch_of_images_is_a_point_cloud() -> None:
    images = np.random.default_rng(7).random((12, 1, 4, 4))
    flat = images.reshape(12, -1)
    np.testing.assert_allclose(np.sort(rips_persistence(images, 0)[0].finite().deaths), mst_edge_lengths(flat))


@pytest.mark.parametrize(
    "bad", [np.zeros(5), np.zeros((1, 3)), np.array([[0.0, 1.0], [np.nan, 2.0]]), np.array([[0.0], [np.inf]])]
)
def test_bad_clouds_raise_input_error(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        rips_persistence(bad)


@pytest.mark.parametrize(("maxdim", "backend"), [(2, "giotto"), (-1, "giotto"), (1, "ripser")])
def test_bad_options_raise_config_error(maxdim: int, backend: str) -> None:
    with pytest.raises(ConfigError):
        rips_persistence(random_cloud(0, n=5), maxdim=maxdim, backend=backend)  # type: ignore[arg-type]
