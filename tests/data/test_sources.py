"""The one held-out split every family evaluates on (`held_out_arrays`), checked against the training arrays
and against a parquet pack of the same folder (two independent decoders of the same files)."""

from __future__ import annotations

import numpy as np
import pytest

from raytopo.commands.data import ShapesArgs, run_shapes
from raytopo.data.config import DataConfig
from raytopo.data.parquet import pack_folder
from raytopo.data.sources import held_out_arrays, in_memory_arrays
from raytopo.errors import InputError


def test_generated_sources_draw_new_images_deterministically():
    data = DataConfig(source="shapes", image_size=16, num_images=32, max_count=3)
    training = in_memory_arrays(data)["image"]
    held = held_out_arrays(data, 8)
    assert held["image"].shape == (8, 1, 16, 16) and held["counts"].shape == (8, 1)
    assert not any((image == training).all(axis=(1, 2, 3)).any() for image in held["image"])   # never trained on
    np.testing.assert_array_equal(held_out_arrays(data, 8)["image"], held["image"])


def test_files_give_their_last_images_and_parquet_agrees_with_the_folder(tmp_path):
    run_shapes(ShapesArgs(dim="0", n=10, size=16, max_count=3, min_count=1, objects=False, seed=0,
                          out=tmp_path / "masks"))
    pack_folder(tmp_path / "masks", tmp_path / "pack", "count", rows_per_shard=4)
    folder = DataConfig(source="folder", path=str(tmp_path / "masks"), image_size=16)
    parquet = DataConfig(source="parquet", path=str(tmp_path / "pack"), image_size=16)
    everything = in_memory_arrays(folder)
    from_folder, from_parquet = held_out_arrays(folder, 5), held_out_arrays(parquet, 5)
    np.testing.assert_array_equal(from_folder["image"], everything["image"][-5:])
    np.testing.assert_array_equal(from_folder["counts"], everything["counts"][-5:])
    np.testing.assert_array_equal(from_parquet["image"], from_folder["image"])
    np.testing.assert_array_equal(from_parquet["counts"], from_folder["counts"])
    with pytest.raises(InputError, match="at least 11 images"):
        held_out_arrays(folder, 11)


def stripes_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """A custom source for the registry test: horizontal stripes."""
    image = np.where(np.arange(data.image_size) % 2, 1.0, -1.0).astype(np.float32)[:, None]
    image = np.broadcast_to(image, (data.image_size, data.image_size))
    return {"image": np.broadcast_to(image, (data.num_images, data.channels, *image.shape)).copy()}


checked: list[str] = []


def check_stripes(data: DataConfig) -> None:
    checked.append(data.source)


def test_a_registered_source_is_a_valid_data_source_everywhere(monkeypatch):
    from raytopo.data import source_registry
    from raytopo.data.source_registry import Source, register_source
    from raytopo.data.sources import check_data_source
    from raytopo.errors import ConfigError

    with pytest.raises(ConfigError, match="expected one of class_folder, folder, garments, glyphs, image_mask, npy, objects, parquet, shapes"):
        DataConfig(source="stripes")
    monkeypatch.setattr(source_registry, "_SOURCES", dict(source_registry._SOURCES))
    register_source("stripes", Source(f"{__name__}:stripes_arrays", f"{__name__}:check_stripes", generated=True))
    data = DataConfig(source="stripes", image_size=8, num_images=3)
    assert not data.has_counts                       # what a source declares, not a list of names
    register_source("counted", Source(f"{__name__}:stripes_arrays", f"{__name__}:check_stripes", generated=True,
                                      counts="always"))
    assert DataConfig(source="counted").has_counts
    assert check_data_source(data) is None           # a check that does not count: the batch check is skipped
    assert checked == ["stripes"]
    arrays = in_memory_arrays(data)
    assert arrays["image"].shape == (3, 1, 8, 8) and set(np.unique(arrays["image"])) == {-1.0, 1.0}
    assert held_out_arrays(data, 2)["image"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="streamed source needs a dataset"):
        register_source("bad", Source(None, f"{__name__}:check_stripes"))
