"""Synthetic RGB objects (`raytopo.data.objects`, source ``objects``): exact masks, balanced classes, separable
foreground, distinguishable classes.

Truth: the Shapes generator itself (`shape_example`), component counts measured with ``scipy.ndimage.label``,
and nearest-class-mean colour rules fitted on one seed and scored on another.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial.distance import cdist

from raytopo.data.config import DataConfig
from raytopo.data.objects import OBJECT_CLASSES, object_example
from raytopo.data.parquet import pack_folder
from raytopo.data.shapes import ShapesConfig, shape_example
from raytopo.data.sources import check_data_source, class_names, in_memory_arrays
from raytopo.errors import ConfigError

SIZE = 32


def objects(num_images: int, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
    return in_memory_arrays(DataConfig(source="objects", channels=3, image_size=SIZE, num_images=num_images,
                                       max_count=3, seed=seed, **kwargs))


def test_masks_and_counts_are_the_shapes_generators():
    arrays = objects(12, seed=4)
    config = ShapesConfig(dim="0", size=SIZE, max_count=3, min_count=1, seed=4)
    for index in range(12):
        mask, counts, _ = shape_example(config, index)
        np.testing.assert_array_equal(arrays["mask"][index, 0], np.where(mask > 0, 1.0, -1.0))
        np.testing.assert_array_equal(arrays["counts"][index], np.asarray(counts, dtype=np.float32))
        _, components = ndimage.label(arrays["mask"][index, 0] > 0)
        assert components == arrays["counts"][index, 0]
    shapes = in_memory_arrays(DataConfig(source="shapes", image_size=SIZE, num_images=12, max_count=3, seed=4))
    np.testing.assert_array_equal(arrays["counts"], shapes["counts"])   # exactly what `source: shapes` gives
    np.testing.assert_array_equal(arrays["mask"], shapes["image"])      # ... and its images are the masks


def test_dtypes_shapes_range_and_balanced_labels():
    arrays = objects(10)
    assert arrays["image"].shape == (10, 3, SIZE, SIZE) and arrays["image"].dtype == np.float32
    assert arrays["mask"].shape == (10, 1, SIZE, SIZE) and arrays["mask"].dtype == np.float32
    assert arrays["label"].shape == (10,) and arrays["label"].dtype == np.int64
    assert arrays["counts"].shape == (10, 1) and arrays["counts"].dtype == np.float32
    assert arrays["image"].min() >= -1.0 and arrays["image"].max() <= 1.0
    assert set(np.unique(arrays["mask"])) == {-1.0, 1.0}
    np.testing.assert_array_equal(arrays["label"], np.arange(10) % 4)
    both = objects(6, shapes_dim="both")
    assert both["counts"].shape == (6, 2)


def test_image_depends_only_on_seed_and_index():
    few, many = objects(4, seed=2), objects(16, seed=2)
    for key in few:
        np.testing.assert_array_equal(few[key], many[key][:4])
    config = ShapesConfig(dim="0", size=SIZE, max_count=3, seed=2)
    rgb = np.round((few["image"][3] + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(object_example(config, 3)[0].transpose(2, 0, 1), rgb)
    assert not np.array_equal(objects(4, seed=3)["image"], few["image"])


def _pixels(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's RGB ``[P, 3]`` and whether it is foreground ``[P]``."""
    return arrays["image"].transpose(0, 2, 3, 1).reshape(-1, 3), arrays["mask"].reshape(-1) > 0


def test_a_per_pixel_colour_rule_recovers_the_masks():
    train, test = objects(40, seed=0), objects(40, seed=1)
    colours, foreground = _pixels(train)
    pixel_class = np.where(foreground, np.repeat(train["label"], SIZE * SIZE), -1)
    means = np.stack([colours[pixel_class == c].mean(axis=0) for c in range(-1, 4)])   # background + 4 classes
    colours, truth = _pixels(test)
    predicted = cdist(colours, means).argmin(axis=1) > 0
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.9
    for image, mask in zip(test["image"], test["mask"][:, 0] > 0):   # every image: objects stand out
        assert np.linalg.norm(image[:, mask].mean(axis=1) - image[:, ~mask].mean(axis=1)) > 0.5


def test_classes_are_distinguishable_by_their_mean_object_colour():
    def features(arrays):
        return np.stack([image[:, mask].mean(axis=1) for image, mask in zip(arrays["image"], arrays["mask"][:, 0] > 0)])

    train, test = objects(40, seed=0), objects(40, seed=1)
    x = features(train)
    means = np.stack([x[train["label"] == c].mean(axis=0) for c in range(4)])
    accuracy = (cdist(features(test), means).argmin(axis=1) == test["label"]).mean()
    assert accuracy > 0.9


def test_textured_classes_have_texture_and_plain_has_none():
    arrays = objects(16)
    spread = {name: [] for name in OBJECT_CLASSES}
    for image, mask, label in zip(arrays["image"], arrays["mask"][:, 0] > 0, arrays["label"]):
        spread[OBJECT_CLASSES[label]].append(image.mean(axis=0)[mask].std())
    plain = np.mean(spread["yellow_plain"])
    for name in ("red_stripes", "blue_dots", "green_checks"):
        assert np.mean(spread[name]) > 3 * plain, name


def test_grey_channels_are_refused_naming_the_field():
    data = DataConfig(source="objects", channels=1, image_size=SIZE, num_images=2)
    with pytest.raises(ConfigError, match="data.channels: source 'objects' is RGB; expected 3, got 1"):
        in_memory_arrays(data)
    with pytest.raises(ConfigError, match="data.channels"):
        check_data_source(data)
    with pytest.raises(ConfigError, match="source objects, image_size 16.*max_count"):
        check_data_source(DataConfig(source="objects", channels=3, image_size=16, max_count=6))
    check_data_source(DataConfig(source="objects", channels=3, image_size=SIZE, max_count=3))


def test_what_batches_carry_and_class_names(tmp_path):
    objects_data = DataConfig(source="objects", channels=3)
    assert objects_data.has_masks and objects_data.has_classes and objects_data.has_counts
    assert class_names(objects_data) == OBJECT_CLASSES
    assert not DataConfig(source="shapes").has_masks and class_names(DataConfig(source="shapes")) is None
    assert DataConfig(source="image_mask", path=str(tmp_path)).has_masks
    assert len(class_names(DataConfig(source="garments"))) == 10

    arrays = objects(3)
    for folder in ("images", "masks"):
        (tmp_path / "pairs" / folder).mkdir(parents=True)
    for index in range(3):
        rgb = np.round((arrays["image"][index].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / "pairs" / "images" / f"img_{index}.png")
        Image.fromarray(((arrays["mask"][index, 0] > 0) * 255).astype(np.uint8)).save(
            tmp_path / "pairs" / "masks" / f"seg_{index}.png")
        (tmp_path / "classes" / OBJECT_CLASSES[index]).mkdir(parents=True)
        Image.fromarray(rgb).save(tmp_path / "classes" / OBJECT_CLASSES[index] / f"{index}.png")
    pack_folder(tmp_path / "pairs", tmp_path / "pair_pack", "none", layout="image_mask")
    pack_folder(tmp_path / "classes", tmp_path / "class_pack", "none", layout="class_folder")
    assert DataConfig(source="parquet", path=str(tmp_path / "pair_pack")).has_masks
    class_pack = DataConfig(source="parquet", path=str(tmp_path / "class_pack"))
    folder_classes = tuple(sorted(OBJECT_CLASSES[:3]))                  # sorted sub-folder names
    assert not class_pack.has_masks and class_names(class_pack) == folder_classes
    assert class_names(DataConfig(source="class_folder", path=str(tmp_path / "classes"))) == folder_classes
    assert class_names(DataConfig(source="parquet", path=str(tmp_path / "pair_pack"))) is None
