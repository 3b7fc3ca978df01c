"""`.npy` image arrays and unlabelled folders as training data: same tensors as the folder pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raytopo.data.arrays import load_image_array, load_labels
from raytopo.data.folder import ImageFolderDataset
from raytopo.errors import ConfigError, InputError
from raytopo.train.config import DataConfig, parse_run_config
from raytopo.data.sources import in_memory_arrays


def _pictures(n: int = 5, size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc", "float"])
def test_npy_layouts_match_the_folder_pipeline(tmp_path, layout) -> None:
    pictures = _pictures()
    for index, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / f"{index:03d}.png")
    stored = {"nhw": pictures, "nchw": pictures[:, None], "nhwc": pictures[..., None],
              "float": pictures.astype(np.float64) / 255.0}[layout]
    np.save(tmp_path / "images.npy", stored)
    from_array = load_image_array(tmp_path / "images.npy", image_size=8, channels=1)
    folder = ImageFolderDataset(tmp_path, "none", image_size=8)
    from_folder = np.stack([folder[i]["image"].numpy() for i in range(len(folder))])
    assert from_array.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(from_array, from_folder, atol=1e-6)
    assert "counts" not in folder[0]


def test_npy_source_with_labels_gives_label_batches(tmp_path) -> None:
    np.save(tmp_path / "images.npy", _pictures(6))
    np.save(tmp_path / "labels.npy", np.arange(6) % 3)
    data = DataConfig(source="npy", path=str(tmp_path / "images.npy"), labels_path=str(tmp_path / "labels.npy"),
                      image_size=12, eval_fraction=0, judge_fraction=0)    # every row trains
    arrays = in_memory_arrays(data)
    assert arrays["image"].shape == (6, 1, 12, 12) and arrays["image"].min() >= -1 and arrays["image"].max() <= 1
    assert arrays["label"].tolist() == [0, 1, 2, 0, 1, 2]
    assert not data.has_counts


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 4)), "expected images shaped"),
    (np.full((2, 8, 8), 2.0), "expected float pixels in [0, 1]"),
    (np.full((2, 8, 8), np.nan), "finite float pixels"),
    (np.zeros((2, 8, 8), dtype=np.int32), "uint8 or finite float"),
])
def test_bad_arrays_are_named(tmp_path, bad, message) -> None:
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match="bad.npy") as error:
        load_image_array(tmp_path / "bad.npy", 8, 1)
    assert message in str(error.value)


def test_missing_array_and_wrong_labels(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_image_array(tmp_path / "missing.npy", 8, 1)
    np.save(tmp_path / "labels.npy", np.array([0.5, 1.0]))
    with pytest.raises(InputError, match="integer labels"):
        load_labels(tmp_path / "labels.npy", 2)


def test_count_families_reject_unlabelled_data(tmp_path) -> None:
    with pytest.raises(ConfigError, match="conditioned on counts"):
        parse_run_config({"family": "tdn", "data": {"source": "npy", "path": "x.npy"}})
    with pytest.raises(ConfigError, match="labels_path"):
        DataConfig(source="shapes", labels_path="labels.npy")
    assert DataConfig(source="folder", path="p", convention="two_counts").has_counts
    assert not DataConfig(source="folder", path="p", convention="none").has_counts
    assert not DataConfig(source="glyphs").has_counts
