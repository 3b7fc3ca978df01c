"""The tree picture: node layout by path (closed form) and a rendered RGB image."""

import numpy as np

from raytopo.eval.tree_picture import node_positions, tree_picture


def test_leaves_are_evenly_spaced_in_order_and_parents_sit_over_their_children():
    positions = node_positions(["", "0", "1", "10", "11", "110", "111"])
    assert positions["0"] == (0.0, 1) and positions["10"] == (1.0, 2)
    assert positions["110"] == (2.0, 3) and positions["111"] == (3.0, 3)
    assert positions["11"] == (2.5, 2) and positions["1"] == (1.75, 1) and positions[""] == (0.875, 0)


def test_the_picture_is_an_rgb_image_wider_with_more_leaves():
    thumbnails = {path: np.random.default_rng(0).random((8, 4)) for path in ("0", "10", "11")}
    small = tree_picture(["", "0", "1", "10", "11"], thumbnails, {"0": 0.5, "10": 0.3, "11": 0.2})
    more = dict(thumbnails, **{"110": thumbnails["11"], "111": thumbnails["11"]})
    del more["11"]
    large = tree_picture(["", "0", "1", "10", "11", "110", "111"], more, {})
    assert small.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3
    assert large.shape[1] > small.shape[1]
    assert small.std() > 10   # not blank
