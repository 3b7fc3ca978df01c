"""Parquet packing: round trip against ImageFolderDataset, metadata, overwrite safety, Ray Data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raytopo.data.folder import ImageFolderDataset
from raytopo.data.parquet import decode_rows, pack_folder, read_pack_info, read_parquet_dataset
from raytopo.data.shapes import ShapesConfig, write_shapes_dataset
from raytopo.errors import ConfigError, InputError

SIZE = 32


@pytest.fixture
def object_folder(tmp_path: Path) -> Path:
    """Generated count_object masks plus a JPEG, an RGB PNG and a palette PNG in a sub-folder."""
    root = tmp_path / "images"
    write_shapes_dataset(ShapesConfig(dim="0", size=48, max_count=3, objects=True, seed=5), 7, root)
    rng = np.random.default_rng(0)
    extra = root / "extra"
    extra.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(extra / "2_circle_jpg.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(extra / "1_star_rgb.png")
    Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8)).convert("P").save(extra / "4_star_pal.png")
    return root


def _folder_arrays(dataset: ImageFolderDataset) -> dict[str, np.ndarray]:
    items = [dataset[i] for i in range(len(dataset))]
    return {key: torch.stack([item[key] for item in items]).numpy() for key in items[0]}


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_equals_folder_dataset(object_folder: Path, tmp_path: Path, channels: int) -> None:
    shards = pack_folder(object_folder, tmp_path / "packed", "count_object", rows_per_shard=4)
    assert [s.name for s in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(shards)  # shards in order == sorted file order
    dataset = ImageFolderDataset(object_folder, "count_object", image_size=SIZE, channels=channels)
    assert table.column("filename").to_pylist() == [p.relative_to(object_folder).as_posix() for p in dataset.files]
    decoded, expected = decode_rows(table, SIZE, channels), _folder_arrays(dataset)
    assert decoded.keys() == expected.keys() == {"image", "counts", "object"}
    assert decoded["image"].dtype == np.float32 and decoded["image"].shape == (10, channels, SIZE, SIZE)
    assert decoded["counts"].dtype == np.float32 and decoded["object"].dtype == np.int64
    for key in expected:
        assert np.array_equal(decoded[key], expected[key]), key
    names = table.column("object_name").to_pylist()
    assert [dataset.object_index[n] for n in names] == table.column("object").to_pylist()


def test_png_copied_and_others_reencoded_losslessly(object_folder: Path, tmp_path: Path) -> None:
    pack_folder(object_folder, tmp_path / "packed", "count_object")
    rows = pq.read_table(tmp_path / "packed").to_pylist()
    by_name = {row["filename"]: row["image"] for row in rows}
    for name, data in by_name.items():
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        if name.endswith(".png"):
            assert data == (object_folder / name).read_bytes()
    packed = io.BytesIO(by_name["extra/2_circle_jpg.jpg"])
    with Image.open(object_folder / "extra/2_circle_jpg.jpg") as jpeg, Image.open(packed) as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(jpeg), np.asarray(png))


def test_metadata_round_trip(object_folder: Path, tmp_path: Path) -> None:
    shards = pack_folder(object_folder, tmp_path / "packed", "count_object", rows_per_shard=100)
    info = read_pack_info(tmp_path / "packed")
    assert info.shards == tuple(str(s) for s in shards) and info.num_rows == 10
    assert info.convention.value == "count_object"
    names = sorted(set(pq.read_table(shards).column("object_name").to_pylist()))
    assert {"circle", "star"} <= set(names)
    assert info.object_index == {name: position for position, name in enumerate(names)}
    assert pq.read_schema(shards[0]).metadata[b"raytopo.format_version"] == b"2"  # format 2 added the label and mask columns


def test_given_object_index_is_stored(object_folder: Path, tmp_path: Path) -> None:
    fixed = {"circle": 3, "rectangle": 4, "star": 5, "triangle": 6, "dog": 0}
    pack_folder(object_folder, tmp_path / "packed", "count_object", object_index=fixed)
    assert read_pack_info(tmp_path / "packed").object_index == fixed
    table = pq.read_table(tmp_path / "packed")
    assert decode_rows(table, 8)["object"].tolist() == [fixed[n] for n in table.column("object_name").to_pylist()]


def test_two_counts_without_objects(tmp_path: Path) -> None:
    root = tmp_path / "both"
    write_shapes_dataset(ShapesConfig(dim="both", size=32, max_count=3), 5, root)
    pack_folder(root, tmp_path / "packed", "two_counts")
    table = pq.read_table(tmp_path / "packed")
    assert table.column("object_name").null_count == 5
    decoded = decode_rows(table, 32)
    assert "object" not in decoded
    expected = _folder_arrays(ImageFolderDataset(root, "two_counts", image_size=32))
    assert decoded["counts"].shape == (5, 2)
    assert np.array_equal(decoded["counts"], expected["counts"])
    assert np.array_equal(decoded["image"], expected["image"])
    assert read_pack_info(tmp_path / "packed").object_index == {}


def test_numpy_batch_format_like_ray(object_folder: Path, tmp_path: Path) -> None:
    pack_folder(object_folder, tmp_path / "packed", "count_object")
    table = pq.read_table(tmp_path / "packed")
    counts = np.empty(table.num_rows, dtype=object)  # a ragged-style column: an object array of arrays
    counts[:] = [np.asarray(c, np.float32) for c in table.column("counts").to_pylist()]
    batch = {
        "image": np.array(table.column("image").to_pylist(), dtype=object),
        "counts": counts,
        "object": np.asarray(table.column("object").to_pylist(), dtype=np.int64),
        "filename": np.asarray(table.column("filename").to_pylist()),
    }
    from_numpy, from_table = decode_rows(batch, SIZE, 1), decode_rows(table, SIZE, 1)
    for key in from_table:
        assert np.array_equal(from_numpy[key], from_table[key])


def test_overwrite_protection(object_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    pack_folder(object_folder, out, "count_object", rows_per_shard=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match="--overwrite"):
        pack_folder(object_folder, out, "count_object", rows_per_shard=100)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    shards = pack_folder(object_folder, out, "count_object", rows_per_shard=100, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"] == [s.name for s in shards]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "packed"]  # no staging left behind


def test_overwrite_refuses_foreign_files(object_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(InputError, match="thesis.tex"):
        pack_folder(object_folder, out, "count_object", overwrite=True)
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_failed_pack_leaves_existing_output_intact(object_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    pack_folder(object_folder, out, "count_object")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (object_folder / "9_circle_bad.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="9_circle_bad.png"):
        pack_folder(object_folder, out, "count_object", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "packed"]


def test_bad_names_fail_before_writing(object_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="<count>_<id>|<components>_<holes>"):
        pack_folder(object_folder, tmp_path / "packed", "two_counts")
    assert not (tmp_path / "packed").exists()


def test_bad_arguments(object_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rows_per_shard"):
        pack_folder(object_folder, tmp_path / "packed", "count_object", rows_per_shard=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="found a file"):
        pack_folder(object_folder, tmp_path / "file", "count_object")
    with pytest.raises(InputError, match="shards"):
        read_pack_info(tmp_path)
    with pytest.raises(InputError, match="'image'"):
        decode_rows({"counts": np.zeros((1, 1))}, 8)


def test_decode_rows_reports_corrupt_bytes_by_filename() -> None:
    batch = {
        "image": np.array([b"junk"], dtype=object),
        "counts": np.zeros((1, 1), np.float32),
        "filename": np.array(["a/1_x.png"]),
    }
    with pytest.raises(InputError, match="a/1_x.png"):
        decode_rows(batch, 8)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_data_reads_and_decodes(ray_local, object_folder: Path, tmp_path: Path) -> None:
    pack_folder(object_folder, tmp_path / "packed", "count_object", rows_per_shard=4)
    options = ray_local.data.DataContext.get_current().execution_options
    previous, options.preserve_order = options.preserve_order, True
    try:
        dataset = read_parquet_dataset(tmp_path / "packed").map_batches(
            decode_rows, fn_kwargs={"image_size": SIZE, "channels": 1}, batch_format="numpy", batch_size=3
        )
        rows = dataset.take_all()
    finally:
        options.preserve_order = previous
    expected = _folder_arrays(ImageFolderDataset(object_folder, "count_object", image_size=SIZE))
    assert len(rows) == 10
    assert np.array_equal(np.stack([r["image"] for r in rows]), expected["image"])
    assert np.array_equal(np.stack([r["counts"] for r in rows]), expected["counts"])
    assert np.array_equal(np.array([r["object"] for r in rows]), expected["object"])
