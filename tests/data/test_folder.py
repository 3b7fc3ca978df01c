"""Image folders: file-name labels and the improved-diffusion preprocessing, against hand-computed truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from raytopo.data.folder import ImageFolderDataset, decode_image, scan_folder
from raytopo.errors import ConfigError, InputError


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """Independent truth for images that need no resampling: [C, H, W] float32 in [-1, 1]."""
    if pixels.ndim == 2:
        pixels = pixels[None]
    else:
        pixels = pixels.transpose(2, 0, 1)
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1)


def test_same_size_mask_is_only_scaled(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).choice([0, 255], size=(16, 16)).astype(np.uint8)
    _save(tmp_path / "2_0001.png", mask)
    item = ImageFolderDataset(tmp_path, "count", image_size=16)[0]
    assert item["image"].dtype == torch.float32
    assert torch.equal(item["image"], torch.from_numpy(_scaled(mask)))
    assert item["image"].min() == -1 and item["image"].max() == 1
    assert torch.equal(item["counts"], torch.tensor([2.0]))
    assert "object" not in item


def test_box_halving_of_block_constant_image(tmp_path: Path) -> None:
    small = np.random.default_rng(1).integers(0, 256, size=(16, 16), dtype=np.uint8)
    big = np.kron(small, np.ones((4, 4), dtype=np.uint8))  # 64x64 of 4x4 constant blocks
    _save(tmp_path / "1_a.png", big)
    image = ImageFolderDataset(tmp_path, "count", image_size=16)[0]["image"]
    assert torch.equal(image, torch.from_numpy(_scaled(small)))


def test_centre_crop_of_wide_and_tall_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    wide = rng.integers(0, 256, size=(16, 24), dtype=np.uint8)
    tall = rng.integers(0, 256, size=(25, 16), dtype=np.uint8)
    _save(tmp_path / "1_wide.png", wide)
    _save(tmp_path / "2_tall.png", tall)
    dataset = ImageFolderDataset(tmp_path, "count", image_size=16)
    assert [p.name for p in dataset.files] == ["1_wide.png", "2_tall.png"]
    assert torch.equal(dataset[0]["image"], torch.from_numpy(_scaled(wide[:, 4:20])))
    assert torch.equal(dataset[1]["image"], torch.from_numpy(_scaled(tall[4:20])))


def test_upscaling_keeps_constant_images_constant(tmp_path: Path) -> None:
    _save(tmp_path / "0_a.png", np.full((10, 12), 255, dtype=np.uint8))
    image = ImageFolderDataset(tmp_path, "count", image_size=32)[0]["image"]
    assert image.shape == (1, 32, 32)
    assert torch.all(image == 1)


def test_channels_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    _save(tmp_path / "1_gray.png", gray)
    _save(tmp_path / "1_rgb.png", rgb)
    three = ImageFolderDataset(tmp_path, "count", image_size=16, channels=3)
    assert torch.equal(three[0]["image"], torch.from_numpy(_scaled(np.stack([gray] * 3, axis=-1))))
    assert torch.equal(three[1]["image"], torch.from_numpy(_scaled(rgb)))
    one = ImageFolderDataset(tmp_path, "count", image_size=16, channels=1)
    rgb = rgb.astype(np.int64)
    luma = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114) / 1000  # ITU-R 601-2, as PIL "L"
    assert torch.allclose(one[1]["image"][0], torch.from_numpy(luma / 127.5 - 1).float(), atol=1.01 / 127.5)


def test_labels_objects_and_collate(tmp_path: Path) -> None:
    for name in ["3_triangle_0.png", "1_circle_1.png", "sub/2_rectangle_2.png", "0_circle_3.png"]:
        _save(tmp_path / name, np.zeros((8, 8), dtype=np.uint8))
    dataset = ImageFolderDataset(tmp_path, "count_object", image_size=8)
    assert dataset.object_index == {"circle": 0, "rectangle": 1, "triangle": 2}
    by_name = {p.name: dataset[i] for i, p in enumerate(dataset.files)}
    assert by_name["3_triangle_0.png"]["object"].item() == 2
    assert by_name["3_triangle_0.png"]["object"].dtype == torch.int64
    assert by_name["2_rectangle_2.png"]["counts"].tolist() == [2.0]
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 1, 8, 8)
    assert batch["counts"].shape == (4, 1)
    assert batch["object"].shape == (4,)
    assert len(ImageFolderDataset(tmp_path, "count_object", image_size=8, recursive=False)) == 3


def test_given_object_index_is_used_and_checked(tmp_path: Path) -> None:
    _save(tmp_path / "1_circle_0.png", np.zeros((8, 8), dtype=np.uint8))
    fixed = {"triangle": 0, "circle": 5}
    dataset = ImageFolderDataset(tmp_path, "count_object", image_size=8, object_index=fixed)
    assert dataset[0]["object"].item() == 5
    with pytest.raises(InputError, match="1_circle_0.png"):
        ImageFolderDataset(tmp_path, "count_object", image_size=8, object_index={"triangle": 0})


def test_two_counts(tmp_path: Path) -> None:
    _save(tmp_path / "3_1_x.png", np.zeros((8, 8), dtype=np.uint8))
    item = ImageFolderDataset(tmp_path, "two_counts", image_size=8)[0]
    assert item["counts"].tolist() == [3.0, 1.0]
    assert item["counts"].dtype == torch.float32


def test_bad_file_name_fails_at_construction(tmp_path: Path) -> None:
    _save(tmp_path / "1_ok.png", np.zeros((8, 8), dtype=np.uint8))
    _save(tmp_path / "nested" / "oops.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(InputError) as info:
        ImageFolderDataset(tmp_path, "count", image_size=8)
    assert "oops.png" in str(info.value) and "<count>_<id>" in str(info.value)


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_corrupt_image_names_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "1_bad.png").write_bytes(content)
    dataset = ImageFolderDataset(tmp_path, "count", image_size=8)
    with pytest.raises(InputError, match="1_bad.png"):
        dataset[0]


def test_truncated_png_names_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "1_cut.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="1_cut.png"):
        ImageFolderDataset(tmp_path, "count", image_size=8)[0]


def test_empty_or_missing_folder_names_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(InputError, match=str(tmp_path)):
        ImageFolderDataset(tmp_path, "count", image_size=8)
    with pytest.raises(InputError, match="missing"):
        scan_folder(tmp_path / "missing", "count")


@pytest.mark.parametrize(("size", "channels"), [(0, 1), (8, 2), (8.0, 1)])
def test_bad_arguments(tmp_path: Path, size: int, channels: int) -> None:
    _save(tmp_path / "1_a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError):
        ImageFolderDataset(tmp_path, "count", image_size=size, channels=channels)


def test_decode_image_accepts_other_formats_and_modes(tmp_path: Path) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    for fmt in ["BMP", "TIFF"]:
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(rgb).save(path, format=fmt)
        assert np.array_equal(decode_image(path.read_bytes(), 20, 3, str(path)), _scaled(rgb))
    binary = Image.fromarray(np.eye(8, dtype=bool))
    path = tmp_path / "b.png"
    binary.save(path)
    assert np.array_equal(decode_image(path.read_bytes(), 8, 1, "b.png"), _scaled(np.eye(8, dtype=np.uint8) * 255))
