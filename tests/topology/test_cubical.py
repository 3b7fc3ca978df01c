"""Cubical persistence: hand-computed diagrams, cripser vs gudhi, raw cripser rows, scipy Betti counts."""

from __future__ import annotations

import cripser
import numpy as np
import pytest
from scipy import ndimage

from raytopo.errors import ConfigError, InputError
from raytopo.topology.cubical import _diagrams_from_cells, cubical_persistence, cubical_persistence_batch
from raytopo.topology.diagrams import Diagram

FILTRATIONS = ("sublevel", "superlevel")
CONSTRUCTIONS = ("vertex", "top")
SHAPES = [(8, 8), (7, 13), (20, 9), (1, 6), (6, 1), (2, 2)]
FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = ndimage.generate_binary_structure(2, 2)


def point_multiset(diagram: Diagram) -> list[tuple[float, float]]:
    return sorted(zip(diagram.births.tolist(), diagram.deaths.tolist()))


def assert_same_points(a: Diagram, b: Diagram) -> None:
    pa, pb = np.array(point_multiset(a)).reshape(-1, 2), np.array(point_multiset(b)).reshape(-1, 2)
    assert pa.shape == pb.shape, f"dim {a.dim}: {len(pa)} vs {len(pb)} points"
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-12)


def assert_value_invariant(image: np.ndarray, diagram: Diagram) -> None:
    flat = np.asarray(image, dtype=np.float64).reshape(-1)
    np.testing.assert_array_equal(diagram.births, flat[diagram.birth_cells])
    finite = ~diagram.essential
    np.testing.assert_array_equal(diagram.deaths[finite], flat[diagram.death_cells[finite]])
    assert (diagram.death_cells[diagram.essential] == -1).all()
    assert (diagram.death_cells[finite] >= 0).all()
    assert (diagram.persistence > 0).all(), "zero-persistence pairs must be dropped"


def random_image(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def structured_images() -> list[np.ndarray]:
    """Images with many tied values: blobs, rings, integer noise."""
    yy, xx = np.mgrid[0:24, 0:31]
    radius = np.hypot(yy - 11.5, xx - 15)
    ring = ((radius > 5) & (radius < 8)).astype(float)
    blobs = np.zeros((15, 22))
    blobs[2:5, 2:6] = 1.0
    blobs[8:13, 10:14] = 2.0
    blobs[3:6, 15:20] = 0.5
    integer_noise = np.random.default_rng(5).integers(0, 3, (13, 19)).astype(float)
    smooth = ndimage.gaussian_filter(np.random.default_rng(6).random((32, 27)), 2)
    return [ring, blobs, integer_noise, np.round(smooth, 2), np.zeros((4, 9))]


# --- hand-computed diagrams -------------------------------------------------------------------------


def two_peaks() -> tuple[np.ndarray, int, int, int]:
    """Zero background; peak A=3 and peak B=2 joined through a saddle pixel of value 1."""
    image = np.zeros((5, 7))
    a, saddle, b = (2, 2), (2, 3), (2, 4)
    image[a], image[saddle], image[b] = 3.0, 1.0, 2.0
    flat = lambda rc: int(np.ravel_multi_index(rc, image.shape))  # noqa: E731
    return image, flat(a), flat(saddle), flat(b)


@pytest.mark.parametrize("backend", ["cripser", "gudhi"])
@pytest.mark.parametrize("construction", CONSTRUCTIONS)
def test_two_peaks_superlevel_components_are_known(backend, construction):
    image, a, saddle, b = two_peaks()
    dim0, dim1 = cubical_persistence(image, 1, "superlevel", construction, backend)
    # A is born at 3 and never dies; B is born at 2 and merges into A when the saddle (1) enters.
    order = np.argsort(-dim0.births)
    np.testing.assert_array_equal(dim0.births[order], [3.0, 2.0])
    np.testing.assert_array_equal(dim0.deaths[order], [-np.inf, 1.0])
    np.testing.assert_array_equal(dim0.birth_cells[order], [a, b])
    np.testing.assert_array_equal(dim0.death_cells[order], [-1, saddle])
    assert len(dim1) == 0  # superlevel sets are a point, two points, a segment, then everything


@pytest.mark.parametrize("backend", ["cripser", "gudhi"])
@pytest.mark.parametrize("construction", CONSTRUCTIONS)
def test_two_peaks_sublevel_holes_are_known(backend, construction):
    image, a, saddle, b = two_peaks()
    dim0, dim1 = cubical_persistence(image, 1, "sublevel", construction, backend)
    # The zero background is one component; it surrounds the three peak pixels: a hole born at 0.
    # The saddle (1) splits that hole in two; B (2) fills the younger one, A (3) the older one.
    assert point_multiset(dim0) == [(0.0, np.inf)]
    assert point_multiset(dim1) == [(0.0, 3.0), (1.0, 2.0)]
    order = np.argsort(dim1.births)
    np.testing.assert_array_equal(dim1.death_cells[order], [a, b])
    assert dim1.birth_cells[order][1] == saddle


@pytest.mark.parametrize("backend", ["cripser", "gudhi"])
def test_vertex_is_4_connected_and_top_is_8_connected(backend):
    image = np.ones((4, 5))
    image[1, 1] = image[2, 2] = 0.0  # two low pixels touching only at a corner
    vertex = cubical_persistence(image, 0, "sublevel", "vertex", backend)[0]
    top = cubical_persistence(image, 0, "sublevel", "top", backend)[0]
    assert point_multiset(vertex) == [(0.0, 1.0), (0.0, np.inf)]
    assert point_multiset(top) == [(0.0, np.inf)]


@pytest.mark.parametrize("backend", ["cripser", "gudhi"])
def test_line_image_components(backend):
    image = np.array([[0.3, 0.1, 0.9, 0.2]])
    for construction in CONSTRUCTIONS:  # cripser's vertex PH needs a fallback on 1-pixel-wide images
        for arr in (image, image.T):
            dim0, dim1 = cubical_persistence(arr, 1, "sublevel", construction, backend)
            assert point_multiset(dim0) == [(0.1, np.inf), (0.2, 0.9)]
            assert len(dim1) == 0


# --- backend agreement --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filtration", FILTRATIONS)
@pytest.mark.parametrize("construction", CONSTRUCTIONS)
def test_backends_agree_on_random_images_including_cells(shape, filtration, construction):
    for seed in range(3):
        image = random_image(seed, shape)  # distinct values: critical cells are unique
        ours = cubical_persistence(image, 1, filtration, construction, "cripser")
        theirs = cubical_persistence(image, 1, filtration, construction, "gudhi")
        for a, b in zip(ours, theirs):
            assert_same_points(a, b)
            assert sorted(zip(a.birth_cells, a.death_cells)) == sorted(zip(b.birth_cells, b.death_cells))
            assert_value_invariant(image, a)
            assert_value_invariant(image, b)


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("filtration", FILTRATIONS)
@pytest.mark.parametrize("construction", CONSTRUCTIONS)
def test_backends_agree_on_structured_images_with_ties(index, filtration, construction):
    image = structured_images()[index]
    ours = cubical_persistence(image, 1, filtration, construction, "cripser")
    theirs = cubical_persistence(image, 1, filtration, construction, "gudhi")
    for a, b in zip(ours, theirs):
        assert_same_points(a, b)
        assert_value_invariant(image, a)
        assert_value_invariant(image, b)


def test_gudhi_cells_are_row_major_on_non_square_images():
    image = np.zeros((3, 5))
    image[0, 4] = -1.0  # the global minimum: (row 0, col 4) -> row-major 4, column-major 12
    dim0 = cubical_persistence(image, 0, backend="gudhi")[0]
    essential = dim0.select(dim0.essential)
    assert essential.birth_cells.tolist() == [4]
    assert essential.births.tolist() == [-1.0]


# --- against raw cripser ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 13), (20, 9)])
def test_sublevel_matches_raw_cripser_rows(shape):
    image = random_image(11, shape)
    raw = cripser.computePH(image, maxdim=1)
    for diagram in cubical_persistence(image):
        rows = raw[raw[:, 0] == diagram.dim]
        rows = rows[rows[:, 1] != rows[:, 2]]
        raw_deaths = np.where(rows[:, 2] >= np.finfo(np.float64).max, np.inf, rows[:, 2])
        expected = sorted(zip(rows[:, 1].tolist(), raw_deaths.tolist()))
        assert point_multiset(diagram) == expected


def test_superlevel_is_negated_sublevel_of_negated_image():
    image = random_image(3, (9, 14))
    for construction in CONSTRUCTIONS:
        sup = cubical_persistence(image, 1, "superlevel", construction)
        sub = cubical_persistence(-image, 1, "sublevel", construction)
        for a, b in zip(sup, sub):
            np.testing.assert_array_equal(a.births, -b.births)
            np.testing.assert_array_equal(a.deaths, -b.deaths)
            np.testing.assert_array_equal(a.birth_cells, b.birth_cells)
            assert (a.births >= a.deaths).all()
            assert (a.deaths[a.essential] == -np.inf).all()


def test_value_invariant_holds_for_float32_input():
    image = random_image(4, (10, 12)).astype(np.float32)
    for filtration in FILTRATIONS:
        for diagram in cubical_persistence(image, 1, filtration):
            assert_value_invariant(image, diagram)


# --- Betti numbers of binary images read off the diagram -----------------------------------------------


def enclosed_background_regions(mask: np.ndarray, structure: np.ndarray) -> int:
    """Background regions that do not reach the image border (the outside counts as background)."""
    padded_background = np.pad(~mask, 1, constant_values=True)
    _, regions = ndimage.label(padded_background, structure=structure)
    return regions - 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("construction,fg,bg", [("vertex", FOUR, EIGHT), ("top", EIGHT, FOUR)])
def test_binary_betti_from_diagram_equals_scipy(seed, construction, fg, bg):
    mask = np.random.default_rng(seed).random((12, 17)) < 0.55
    for backend in ("cripser", "gudhi"):
        dim0, dim1 = cubical_persistence(mask.astype(float), 1, "superlevel", construction, backend)
        components = int(np.count_nonzero(dim0.births == 1.0))  # born when the foreground enters
        holes = int(np.count_nonzero((dim1.births == 1.0) & (dim1.deaths == 0.0)))
        assert components == ndimage.label(mask, structure=fg)[1]
        assert holes == enclosed_background_regions(mask, bg)
        assert len(dim1) == holes


def test_zero_persistence_pairs_are_dropped_and_essential_ones_kept():
    # Older cripser releases and gudhi with min_persistence=-1 emit birth == death pairs; feed such
    # library output straight into the conversion step.
    image = np.array([[0.0, 0.0], [1.0, 0.5]])
    dims = np.array([0, 0, 0, 1])
    birth_cells = np.array([0, 1, 3, 3])
    death_cells = np.array([-1, 0, 2, 3])  # essential, zero (0 -> 0), finite (0.5 -> 1), zero (0.5 -> 0.5)
    dim0, dim1 = _diagrams_from_cells(image, dims, birth_cells, death_cells, 1, np.inf)
    assert point_multiset(dim0) == [(0.0, np.inf), (0.5, 1.0)]
    assert len(dim1) == 0


def test_constant_image_has_one_essential_component():
    dim0, dim1 = cubical_persistence(np.full((6, 4), 0.25))
    assert point_multiset(dim0) == [(0.25, np.inf)]
    assert len(dim1) == 0


# --- API shape and validation --------------------------------------------------------------------------


def test_maxdim_zero_returns_only_dim_zero():
    image = random_image(1, (9, 9))
    only = cubical_persistence(image, maxdim=0)
    both = cubical_persistence(image, maxdim=1)
    assert [d.dim for d in only] == [0] and [d.dim for d in both] == [0, 1]
    assert point_multiset(only[0]) == point_multiset(both[0])


def test_batch_equals_per_image_calls():
    images = np.random.default_rng(8).random((3, 7, 11))
    batch = cubical_persistence_batch(images, filtration="superlevel", construction="top")
    for image, diagrams in zip(images, batch):
        single = cubical_persistence(image, filtration="superlevel", construction="top")
        for a, b in zip(diagrams, single):
            assert point_multiset(a) == point_multiset(b)


@pytest.mark.parametrize(
    "image,fragment",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "finite"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "finite"),
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((0, 5)), "non-empty"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_images_raise_input_error(image, fragment):
    with pytest.raises(InputError, match=fragment) as caught:
        cubical_persistence(image)
    assert "image" in str(caught.value)


@pytest.mark.parametrize("maxdim", [2, -1, True, 1.0])
def test_bad_maxdim_raises_input_error(maxdim):
    with pytest.raises(InputError, match="maxdim"):
        cubical_persistence(np.zeros((3, 3)), maxdim=maxdim)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"backend": "ripser"}, "backend"), ({"filtration": "up"}, "filtration"), ({"construction": "T"}, "construction")],
)
def test_unknown_option_names_raise_config_error_listing_allowed(kwargs, name):
    with pytest.raises(ConfigError, match=name) as caught:
        cubical_persistence(np.zeros((3, 3)), **kwargs)
    allowed = {"backend": "cripser, gudhi", "filtration": "sublevel, superlevel", "construction": "vertex, top"}
    assert allowed[name] in str(caught.value)


def test_batch_rejects_wrong_rank_and_names_the_bad_image():
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        cubical_persistence_batch(np.zeros((4, 4)))
    images = np.zeros((3, 4, 4))
    images[2, 1, 1] = np.nan
    with pytest.raises(InputError, match=r"images\[2\]"):
        cubical_persistence_batch(images)
