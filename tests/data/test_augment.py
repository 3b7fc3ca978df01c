"""Augmentations: each family refuses what breaks its labels, flips and turns move masks with their images,
and a random resized crop cuts the same window out of an image and its mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raytopo.data.augment import AugmentConfig, augment_rows, transform
from raytopo.data.config import DataConfig
from raytopo.data.folder import crop_window
from raytopo.data.rows import ReadSpec, file_rows, read_all
from raytopo.errors import ConfigError
from raytopo.train.config import parse_run_config


def _run(family: str, augment: dict, source: str = "shapes", **data) -> dict:
    model = {"group": "C4", "mechanism": "none"} if family == "equivariant" else {}
    return {"family": family, "model": model, "data": {"source": source, "augment": augment, **data}}


@pytest.mark.parametrize("family, augment, allowed", [
    ("tdn", {"crop": [0.5, 1.0]}, "hflip, rot90, vflip"),
    ("adm_t", {"crop": [0.8, 1.0]}, "hflip, rot90, vflip"),
    ("equivariant", {"hflip": True}, "crop, rot90"),
])
def test_an_augmentation_that_breaks_a_familys_labels_is_refused_in_one_line(family, augment, allowed):
    data = {"path": "/tmp/x", "group": "C4", "convention": "count"} if "crop" in augment else {"group": "C4"}
    source = "folder" if "crop" in augment else ("glyphs" if family == "equivariant" else "shapes")
    name = next(iter(augment))
    with pytest.raises(ConfigError, match=rf"^data\.augment\.{name}: family '{family}' does not keep its labels "
                                          rf"under {name} .*; allowed: {allowed}$"):
        parse_run_config(_run(family, augment, source, **data))


def test_what_a_family_keeps_is_accepted():
    assert parse_run_config(_run("tdn", {"hflip": True, "vflip": True, "rot90": True})).data.augment.rot90
    assert parse_run_config(_run("adm", {"crop": [0.5, 1.0]}, "folder", path="/tmp/x")).data.augment.crop == (0.5, 1.0)
    assert parse_run_config(_run("equivariant", {"rot90": True}, "glyphs", group="C4")).data.augment.rot90
    with pytest.raises(ConfigError, match="data.augment.crop: only for file sources"):
        DataConfig(source="shapes", augment=AugmentConfig(crop=(0.5, 1.0)))
    with pytest.raises(ConfigError, match=r"data.augment.crop: expected \[min, max\] with 0 < min <= max <= 1"):
        parse_run_config(_run("adm", {"crop": [0.9, 0.5]}, "folder", path="/tmp/x"))


def test_flips_and_turns_are_the_dihedral_group_and_move_masks_with_images():
    image = np.arange(16).reshape(1, 4, 4)
    assert np.array_equal(transform(image, True, False, 0), image[..., ::-1])
    assert np.array_equal(transform(image, False, False, 1), np.rot90(image, 1, axes=(-2, -1)))
    seen = {transform(image, h, v, k).tobytes() for h in (0, 1) for v in (0, 1) for k in range(4)}
    assert len(seen) == 8                                            # all of D4, nothing else
    images = np.random.default_rng(0).integers(0, 255, (64, 1, 6, 6)).astype(np.uint8)
    arrays = augment_rows({"image": images, "mask": images.copy()}, np.arange(64), seed=1, epoch=0,
                          config=AugmentConfig(hflip=True, vflip=True, rot90=True))
    assert np.array_equal(arrays["image"], arrays["mask"])
    assert (arrays["image"] != images).any(axis=(1, 2, 3)).sum() > 40
    again = augment_rows({"image": images}, np.arange(64), seed=1, epoch=0, config=AugmentConfig(rot90=True))
    other = augment_rows({"image": images}, np.arange(64), seed=1, epoch=1, config=AugmentConfig(rot90=True))
    assert not np.array_equal(again["image"], other["image"])     # a new draw every epoch


def test_a_crop_window_is_a_square_of_the_requested_size_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, side = crop_window((100, 60), 16, (0.5, 1.0), rng)
        assert 30 <= side <= 60 and 0 <= left <= 100 - side and 0 <= top <= 60 - side
    assert crop_window((16, 40), 16, (0.1, 0.2), rng)[2] == 16     # never below the target size


def test_a_crop_cuts_the_same_window_out_of_an_image_and_its_mask(tmp_path):
    blocks = np.random.default_rng(1).integers(0, 2, (12, 16)) * 255
    pixels = np.kron(blocks, np.ones((4, 4))).astype(np.uint8)       # 48 x 64, in 4 px blocks
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.where(pixels > 127, 255, 0).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    index = file_rows(str(tmp_path), ["images/a.png"], masks=["masks/a.png"])
    spec = ReadSpec("pairs", str(tmp_path), 16, 1, masks=True, crop=(0.5, 0.5), seed=3, epoch=0)
    out = read_all(index, np.array([0]), spec)
    assert out["image"].shape == (1, 1, 16, 16) and set(np.unique(out["mask"])) <= {0, 1}
    agreement = ((out["image"][0, 0] > 127) == (out["mask"][0, 0] == 1)).mean()
    assert agreement > 0.9                                           # the mask still covers its image's pixels
    shifted = read_all(index, np.array([0]), ReadSpec("pairs", str(tmp_path), 16, 1, masks=True, crop=(0.5, 0.5),
                                                      seed=4, epoch=0))
    assert ((out["image"][0, 0] > 127) == (shifted["mask"][0, 0] == 1)).mean() < 0.8   # another window: no match
    plain = read_all(index, np.array([0]), ReadSpec("pairs", str(tmp_path), 16, 1, masks=True))
    assert not np.array_equal(out["image"], plain["image"])          # a 24 px window, not the centre crop
