"""Class folders and image + mask folders: labels from the layout, masks aligned and binary, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytopo.data.config import DataConfig
from raytopo.data.layouts import image_mask_arrays, pair_images_and_masks, scan_class_folders
from raytopo.data.sources import check_data_source, held_out_arrays, in_memory_arrays
from raytopo.errors import InputError


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _class_tree(root: Path) -> Path:
    """Three classes, each a constant grey level: zebra 200 (1 image), ant 50 (2 images), moth 120 (1 image)."""
    for name, level, count in (("zebra", 200, 1), ("ant", 50, 2), ("moth", 120, 1)):
        for k in range(count):
            _png(root / name / f"{k}.png", np.full((20, 24), level))
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_class_folders_are_numbered_in_sorted_name_order(tmp_path):
    root = _class_tree(tmp_path / "classes")
    index = scan_class_folders(root)
    assert index.class_names == ("ant", "moth", "zebra")
    data = DataConfig(source="class_folder", path=str(root), image_size=16, eval_fraction=0, judge_fraction=0)
    assert check_data_source(data) == 4                         # the driver's check counts what loads
    arrays = in_memory_arrays(data)
    assert arrays["image"].shape == (4, 1, 16, 16) and arrays["label"].dtype == np.int64
    assert arrays["label"].tolist() == [0, 0, 1, 2]
    levels = np.round((arrays["image"].mean(axis=(1, 2, 3)) + 1) * 127.5).tolist()
    assert levels == [50, 50, 120, 200]                      # each image carries its own class's level
    assert data.has_classes and not data.has_counts
    split = DataConfig(source="class_folder", path=str(root), image_size=16, eval_fraction=0.5, judge_fraction=0)
    held, trained = held_out_arrays(split, 2), in_memory_arrays(split)
    assert sorted(held["label"].tolist() + trained["label"].tolist()) == [0, 0, 1, 2]   # disjoint, all of them


@pytest.mark.parametrize("breakage, message", [
    (lambda root: _png(root / "stray.png", np.zeros((8, 8))), r"stray\.png: expected images inside class folders"),
    (lambda root: (root / "empty").mkdir(), r"empty: expected at least one image in class folder 'empty'"),
    (lambda root: (root / "moth" / "1.png").write_bytes(b"not a png"), r"moth/1\.png: expected a readable image"),
])
def test_a_broken_class_tree_fails_naming_the_file(tmp_path, breakage, message):
    root = _class_tree(tmp_path / "classes")
    breakage(root)
    with pytest.raises(InputError, match=message):
        check_data_source(DataConfig(source="class_folder", path=str(root), image_size=16))


def _checker(height: int, width: int) -> np.ndarray:
    """A 1-pixel checkerboard: any interpolation would create grey values; only nearest keeps it binary."""
    return np.indices((height, width)).sum(axis=0) % 2 * 255


def test_masks_pair_by_name_or_prefix_and_stay_aligned_and_binary(tmp_path):
    root = tmp_path / "pairs"
    mask = _checker(20, 16)                                       # 16 wide, 20 tall: the crop drops 2 rows
    _png(root / "images" / "a.png", mask)
    _png(root / "masks" / "a.png", mask)
    _png(root / "images" / "Img_7.png", 255 - mask)
    _png(root / "masks" / "seg_7.png", 255 - mask)
    pairs = pair_images_and_masks(root)
    assert [(i.name, m.name) for i, m in pairs] == [("Img_7.png", "seg_7.png"), ("a.png", "a.png")]

    arrays = image_mask_arrays(root, image_size=16, channels=1)   # no resize: the crop alone must align them
    assert arrays["mask"].shape == (2, 1, 16, 16) and set(np.unique(arrays["mask"])) == {-1.0, 1.0}
    np.testing.assert_array_equal(arrays["mask"], arrays["image"])
    np.testing.assert_array_equal(arrays["mask"][1, 0], np.where(mask[2:18] > 0, 1.0, -1.0))

    smaller = image_mask_arrays(root, image_size=8, channels=1)   # downscaled: still only {-1, 1}
    assert set(np.unique(smaller["mask"])) <= {-1.0, 1.0} and smaller["image"].shape == (2, 1, 8, 8)


def test_an_image_without_its_mask_is_named(tmp_path):
    root = tmp_path / "pairs"
    _png(root / "images" / "Img_1.png", np.zeros((8, 8)))
    _png(root / "masks" / "seg_2.png", np.zeros((8, 8)))
    with pytest.raises(InputError, match=r"Img_1\.png: expected one mask in .*masks named Img_1\.\* or "
                                         r"<prefix>_1\.\*, found none"):
        check_data_source(DataConfig(source="image_mask", path=str(root), image_size=8, eval_fraction=0,
                                     judge_fraction=0))


def test_class_and_mask_layouts_pack_to_parquet_and_decode_like_the_folders(tmp_path):
    """Packed rows decode to exactly what the in-memory loaders give; the pack names its classes."""
    import pyarrow.parquet as pq

    from raytopo.data.parquet import decode_rows, pack_folder, read_pack_info

    classes = _class_tree(tmp_path / "classes")
    pack_folder(classes, tmp_path / "class_pack", "count", layout="class_folder", rows_per_shard=3)
    info = read_pack_info(tmp_path / "class_pack")
    assert info.class_names == ("ant", "moth", "zebra") and info.convention.value == "none"
    data = DataConfig(source="parquet", path=str(tmp_path / "class_pack"), convention="none", image_size=16,
                      eval_fraction=0.5, judge_fraction=0)
    check_data_source(data)
    assert data.has_classes and not data.has_counts
    decoded = decode_rows(pq.read_table([str(s) for s in info.shards]), 16)
    expected = in_memory_arrays(DataConfig(source="class_folder", path=str(classes), image_size=16,
                                           eval_fraction=0, judge_fraction=0))
    assert set(decoded) == {"image", "label"}
    np.testing.assert_array_equal(decoded["label"], expected["label"])
    np.testing.assert_array_equal(decoded["image"], expected["image"])
    held_out = held_out_arrays(data, 1)["label"].tolist()    # one of the two row groups (3 + 1 rows)
    assert held_out in ([0], [2])

    pairs = tmp_path / "pairs"
    _png(pairs / "images" / "Img_1.png", _checker(20, 16))
    _png(pairs / "masks" / "seg_1.png", _checker(20, 16))
    pack_folder(pairs, tmp_path / "mask_pack", "count", layout="image_mask")
    rows = decode_rows(pq.read_table(str(tmp_path / "mask_pack")), 16)
    assert set(rows) == {"image", "mask"}
    np.testing.assert_array_equal(rows["mask"], image_mask_arrays(pairs, 16, 1)["mask"])


def test_a_format_1_pack_without_label_or_mask_columns_still_decodes(tmp_path):
    import pyarrow as pa

    from raytopo.data.parquet import decode_rows

    png = _png(tmp_path / "3_a.png", np.zeros((16, 16))).read_bytes()
    table = pa.table({"image": [png], "counts": [[3.0]], "object_name": [None], "object": pa.array([None], pa.int64()),
                      "filename": ["3_a.png"]})
    decoded = decode_rows(table, 16)
    assert set(decoded) == {"image", "counts"} and decoded["counts"].tolist() == [[3.0]]


def test_unpaired_images_are_skipped_counted_and_named(tmp_path, capsys):
    root = tmp_path / "pairs"
    _png(root / "images" / "Img_1.png", np.zeros((8, 8)))
    _png(root / "images" / "Img_2.png", np.zeros((8, 8)))
    _png(root / "images" / "Img_3.png", np.zeros((8, 8)))
    _png(root / "masks" / "seg_2.png", np.zeros((8, 8)))
    pairs = pair_images_and_masks(root)
    assert [(i.name, m.name) for i, m in pairs] == [("Img_2.png", "seg_2.png")]
    warning = capsys.readouterr().err
    assert "2 of 3 images" in warning and "Img_1.png, Img_3.png" in warning


def test_a_mask_of_another_size_than_its_image_is_an_error(tmp_path):
    root = tmp_path / "pairs"
    _png(root / "images" / "a.png", np.zeros((8, 8)))
    _png(root / "masks" / "a.png", np.zeros((8, 10)))
    with pytest.raises(InputError, match=r"masks/a\.png: the mask is 10x8 but its image a\.png is 8x8"):
        check_data_source(DataConfig(source="image_mask", path=str(root), image_size=8, eval_fraction=0,
                                     judge_fraction=0))
