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
