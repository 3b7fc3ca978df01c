"""The one held-out split every family evaluates on (`held_out_arrays`), checked against the training arrays
and against a parquet pack of the same folder (two independent decoders of the same files)."""

from __future__ import annotations

import numpy as np
import pytest

from raytopo.data.config import DataConfig
from raytopo.data.sources import held_out_arrays, in_memory_arrays


def test_generated_sources_draw_new_images_deterministically():
    data = DataConfig(source="shapes", image_size=16, num_images=32, max_count=3)
    training = in_memory_arrays(data)["image"]
    held = held_out_arrays(data, 8)
    assert held["image"].shape == (8, 1, 16, 16) and held["counts"].shape == (8, 1)
    assert not any((image == training).all(axis=(1, 2, 3)).any() for image in held["image"])   # never trained on
    np.testing.assert_array_equal(held_out_arrays(data, 8)["image"], held["image"])


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
    with pytest.raises(ValueError, match="exactly one of a load function .* and an index function"):
        register_source("bad", Source(None, f"{__name__}:check_stripes"))
