"""Betti numbers of masks: constructed shapes with known counts, and scipy-derived truth on random masks."""

from __future__ import annotations

import cripser
import numpy as np
import pytest
from scipy import ndimage

from raytopo.errors import ConfigError, InputError
from raytopo.topology.betti import Betti, betti_numbers

EIGHT = ndimage.generate_binary_structure(2, 2)


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - center[0], xx - center[1]) <= radius


def annulus(shape: tuple[int, int], center: tuple[float, float], inner: float, outer: float) -> np.ndarray:
    return disc(shape, center, outer) & ~disc(shape, center, inner)


def both(mask: np.ndarray) -> tuple[Betti, Betti]:
    return betti_numbers(mask, connectivity=4), betti_numbers(mask, connectivity=8)


def test_disjoint_filled_squares_and_discs():
    mask = np.zeros((40, 50), dtype=bool)
    mask[2:8, 3:9] = True
    mask[20:30, 5:12] = True
    mask |= disc(mask.shape, (10, 30), 5)
    mask |= disc(mask.shape, (30, 40), 4)
    assert both(mask) == (Betti(4, 0), Betti(4, 0))


def test_annuli_have_one_hole_each():
    shape = (40, 70)
    mask = annulus(shape, (20, 15), 4, 9) | annulus(shape, (20, 50), 6, 12)
    assert both(mask) == (Betti(2, 2), Betti(2, 2))


def test_figure_eight_has_two_holes():
    mask = np.zeros((13, 20), dtype=bool)
    mask[2:11, 2:17] = True
    mask[4:9, 4:8] = False
    mask[4:9, 11:15] = False
    assert both(mask) == (Betti(1, 2), Betti(1, 2))


def test_component_touching_the_border_counts():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:3, 0:4] = True  # corner square
    mask[6:10, 9] = True  # a bar along the right edge
    assert both(mask) == (Betti(2, 0), Betti(2, 0))


def test_ring_whose_outer_boundary_is_the_image_border_has_one_hole():
    mask = np.ones((15, 21), dtype=bool)
    mask[4:11, 5:16] = False  # the hole does not reach the border
    assert both(mask) == (Betti(1, 1), Betti(1, 1))


def test_region_open_to_the_image_border_is_not_a_hole():
    # A U along the left, top and right borders: its inside reaches the bottom border, and the outside
    # of the image counts as background, so nothing is enclosed.
    mask = np.zeros((12, 12), dtype=bool)
    mask[0, :] = mask[:, 0] = mask[:, -1] = True
    assert both(mask) == (Betti(1, 0), Betti(1, 0))
    mask[-1, :] = True  # closing it along the bottom border makes a hole
    assert both(mask) == (Betti(1, 1), Betti(1, 1))


def test_diagonal_touch_separates_under_4_and_joins_under_8():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True
    assert both(mask) == (Betti(2, 0), Betti(1, 0))


def test_ring_closed_only_through_a_diagonal_contact_has_no_hole():
    diamond = np.zeros((7, 7), dtype=bool)
    for row, col in [(3, 1), (2, 2), (1, 3), (2, 4), (3, 5), (4, 4), (5, 3), (4, 2)]:
        diamond[row, col] = True
    assert both(diamond) == (Betti(8, 0), Betti(1, 0))

    square_ring = np.zeros((9, 9), dtype=bool)
    square_ring[1:8, 1:8] = True
    square_ring[2:7, 2:7] = False
    square_ring[1, 1] = False  # remove a corner: the ring now closes only at the diagonal (1,2)-(2,1)
    assert both(square_ring) == (Betti(1, 0), Betti(1, 0))


def test_cremi_style_frame_with_lines_makes_background_regions_holes():
    mask = np.zeros((20, 30), dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True  # 1-px frame on the image border
    mask[:, 12] = True  # a membrane line across the image
    mask[8, 12:] = True  # a second one across the right part
    assert both(mask) == (Betti(1, 3), Betti(1, 3))


def test_empty_and_full_masks():
    assert both(np.zeros((8, 9), dtype=bool)) == (Betti(0, 0), Betti(0, 0))
    assert both(np.ones((8, 9), dtype=bool)) == (Betti(1, 0), Betti(1, 0))


def reference_hole_count(mask: np.ndarray) -> int:
    """The reference evaluation's definition: dim-1 points with persistence > 0 of computePH(1 - mask)."""
    rows = cripser.computePH((1.0 - mask).astype(np.float64), maxdim=1)
    return int(np.count_nonzero((rows[:, 0] == 1) & (rows[:, 2] - rows[:, 1] > 0)))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("density", [0.4, 0.6, 0.75])
def test_random_masks_match_scipy_labels_and_the_reference_hole_count(seed, density):
    mask = np.random.default_rng(seed).random((16, 23)) < density
    four, eight = both(mask)
    assert four.components == ndimage.label(mask)[1]
    assert eight.components == ndimage.label(mask, structure=EIGHT)[1]
    assert four.holes == eight.holes == reference_hole_count(mask)


# --- input forms ----------------------------------------------------------------------------------------


def reference_mask() -> np.ndarray:
    mask = annulus((30, 40), (15, 12), 3, 7)
    mask[2:6, 30:36] = True
    return mask  # Betti(2, 1)


def test_uint8_uses_threshold_128_like_the_reference():
    mask = reference_mask()
    image = np.where(mask, 255, 0).astype(np.uint8)
    assert betti_numbers(image) == Betti(2, 1)
    image[2:6, 30:36] = 128  # strictly greater than 128 is foreground
    assert betti_numbers(image) == Betti(1, 1)
    image[2:6, 30:36] = 129
    assert betti_numbers(image) == Betti(2, 1)


def test_floats_in_unit_range_use_threshold_one_half():
    soft = np.where(reference_mask(), 0.9, 0.1)
    assert betti_numbers(soft) == Betti(2, 1)
    soft[2:6, 30:36] = 0.5
    assert betti_numbers(soft) == Betti(1, 1)
    assert betti_numbers(soft, threshold=0.4) == Betti(2, 1)


def test_three_channel_image_uses_channel_zero():
    rgb = np.zeros((30, 40, 3), dtype=np.uint8)
    rgb[..., 0] = np.where(reference_mask(), 255, 0)
    rgb[..., 1] = 255  # other channels must be ignored
    assert betti_numbers(rgb) == Betti(2, 1)


def test_explicit_threshold_for_other_ranges():
    heights = np.where(reference_mask(), 10.0, -3.0)
    assert betti_numbers(heights, threshold=0.0) == Betti(2, 1)
    with pytest.raises(InputError, match="threshold"):
        betti_numbers(heights)


@pytest.mark.parametrize(
    "mask,fragment",
    [
        (np.zeros(5), "shape"),
        (np.zeros((4, 4, 7)), "shape"),
        (np.zeros((2, 4, 4, 1)), "shape"),
        (np.zeros((0, 4)), "non-empty"),
        (np.array([[0.0, np.nan]]), "finite"),
        (np.array([["a"]]), "numeric"),
    ],
)
def test_bad_masks_raise_input_error(mask, fragment):
    with pytest.raises(InputError, match=fragment) as caught:
        betti_numbers(mask)
    assert "mask" in str(caught.value)


def test_bad_connectivity_raises_config_error():
    with pytest.raises(ConfigError, match="connectivity"):
        betti_numbers(np.zeros((3, 3), dtype=bool), connectivity=6)
