"""Three disjoint splits (train / eval / judge) for every file source, checked by the rows' ids and against an
independent decoder of the files; generated sources draw their held-out and judge images from other seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytopo.commands.data import ShapesArgs, run_shapes
from raytopo.data.config import DataConfig
from raytopo.data.folder import decode_image
from raytopo.data.parquet import pack_folder
from raytopo.data.sources import file_data, held_out_arrays, in_memory_arrays, judge_arrays
from raytopo.data.splits import split_units
from raytopo.errors import ConfigError, InputError

SIZE = 16


def _shapes(folder: Path, n: int = 40, seed: int = 0) -> Path:
    run_shapes(ShapesArgs(dim="0", n=n, size=SIZE, max_count=3, min_count=1, objects=False, seed=seed, out=folder))
    return folder


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _sources(tmp_path: Path) -> dict[str, DataConfig]:
    """One small data set per file source, 40 rows each (parquet: 10 row groups of 4)."""
    masks = _shapes(tmp_path / "masks")
    pack_folder(masks, tmp_path / "pack", "count", rows_per_shard=20, rows_per_group=4)
    rng = np.random.default_rng(0)
    for k in range(40):
        _png(tmp_path / "classes" / f"c{k % 3}" / f"{k}.png", rng.integers(0, 255, (SIZE, SIZE)))
        _png(tmp_path / "pairs" / "images" / f"{k}.png", rng.integers(0, 255, (SIZE, SIZE)))
        _png(tmp_path / "pairs" / "masks" / f"{k}.png", rng.integers(0, 2, (SIZE, SIZE)) * 255)
    np.save(tmp_path / "images.npy", rng.integers(0, 255, (40, SIZE, SIZE)).astype(np.uint8))
    common = {"image_size": SIZE, "eval_fraction": 0.2, "judge_fraction": 0.1}
    return {"folder": DataConfig(source="folder", path=str(masks), **common),
            "parquet": DataConfig(source="parquet", path=str(tmp_path / "pack"), **common),
            "class_folder": DataConfig(source="class_folder", path=str(tmp_path / "classes"), **common),
            "image_mask": DataConfig(source="image_mask", path=str(tmp_path / "pairs"), **common),
            "npy": DataConfig(source="npy", path=str(tmp_path / "images.npy"), **common)}


@pytest.mark.parametrize("source", ["folder", "parquet", "class_folder", "image_mask", "npy"])
def test_every_file_source_splits_into_three_disjoint_parts(tmp_path, source):
    data = _sources(tmp_path)[source]
    files = file_data(data)
    ids = {name: {files.index.ids[r] for r in files.rows(name)[1]} for name in ("train", "eval", "judge")}
    assert not ids["train"] & ids["eval"] and not ids["train"] & ids["judge"] and not ids["eval"] & ids["judge"]
    assert len(ids["train"] | ids["eval"] | ids["judge"]) == len(files.index) == 40
    units = files.index.num_units
    assert len({files.index.units[r] for r in files.rows("eval")[1]}) == int(np.ceil(0.2 * units))
    assert len({files.index.units[r] for r in files.rows("judge")[1]}) == int(np.ceil(0.1 * units))
    if source == "parquet":   # whole row groups move together
        for name in ("train", "eval", "judge"):
            rows = files.rows(name)[1]
            assert len(rows) % 4 == 0


def test_held_out_and_judge_images_are_their_splits_decoded_like_the_files(tmp_path):
    data = _sources(tmp_path)["folder"]
    files = file_data(data)
    index, eval_rows = files.rows("eval")
    root = Path(data.path)
    expected = np.stack([decode_image((root / index.ids[r]).read_bytes(), SIZE, 1, index.ids[r]) for r in eval_rows])
    held = held_out_arrays(data, len(eval_rows))
    np.testing.assert_array_equal(held["image"], expected)     # an independent decoder of the same files
    assert held["counts"][:, 0].tolist() == [float(index.ids[r].split("_")[0]) for r in eval_rows]
    judge_rows = files.rows("judge")[1]
    judged = judge_arrays(data, 1000)
    expected = np.stack([decode_image((root / index.ids[r]).read_bytes(), SIZE, 1, index.ids[r]) for r in judge_rows])
    np.testing.assert_array_equal(judged["image"], expected)   # every judge row, not one more
    assert len(in_memory_arrays(data)["image"]) == len(files.rows("train")[1])


def test_a_pack_row_decodes_to_exactly_its_folder_file(tmp_path):
    sources = _sources(tmp_path)
    pack = file_data(sources["parquet"])
    arrays = held_out_arrays(sources["parquet"], 8)
    index, rows = pack.rows("eval")
    import pyarrow.parquet as pq

    names = []
    for r in rows[:8]:
        shard, row = index.ids[r].split(":")
        names.append(pq.read_table(Path(sources["parquet"].path) / shard).column("filename")[int(row)].as_py())
    root = Path(sources["folder"].path)
    expected = np.stack([decode_image((root / name).read_bytes(), SIZE, 1, name) for name in names])
    np.testing.assert_array_equal(arrays["image"], expected)


def test_eval_path_is_the_evaluation_split_and_data_path_trains_on_the_rest(tmp_path):
    train = _shapes(tmp_path / "train", n=30, seed=1)
    test = _shapes(tmp_path / "test", n=12, seed=2)
    data = DataConfig(source="folder", path=str(train), eval_path=str(test), image_size=SIZE, judge_fraction=0.1)
    files = file_data(data)
    assert files.sizes() == {"train": 27, "eval": 12, "judge": 3}
    held = held_out_arrays(data, 12)
    expected = np.stack([decode_image(path.read_bytes(), SIZE, 1, path.name) for path in sorted(test.glob("*.png"))])
    np.testing.assert_array_equal(held["image"], expected)
    with pytest.raises(InputError, match="expected at least 13 images for evaluation"):
        held_out_arrays(data, 13)
    with pytest.raises(ConfigError, match="data.eval_fraction: expected 0 or null with data.eval_path"):
        DataConfig(source="folder", path=str(train), eval_path=str(test), eval_fraction=0.1)


def test_without_a_split_the_evaluation_says_it_reads_training_rows(tmp_path, capsys):
    data = DataConfig(source="folder", path=str(_shapes(tmp_path / "masks", n=10)), image_size=SIZE,
                      eval_fraction=0, judge_fraction=0)
    held = held_out_arrays(data, 4)
    np.testing.assert_array_equal(held["image"], in_memory_arrays(data)["image"][:4])
    assert "no eval split" in capsys.readouterr().err


def test_a_unit_keeps_its_split_when_the_data_set_grows():
    keys = [f"img_{i:05d}.png" for i in range(1000)]
    before = split_units(keys, 0, 0.1, 0.1)
    after = split_units(keys + [f"new_{i}.png" for i in range(100)], 0, 0.1, 0.1)[:1000]
    assert (before == after).mean() > 0.95          # only units near the split boundaries move
    assert not (split_units(keys, 1, 0.1, 0.1) == before).all()   # the seed decides


def test_fractions_that_leave_nothing_to_train_are_refused():
    with pytest.raises(InputError, match="cannot give 2 to evaluation .* and 1 to the judges"):
        split_units(["a", "b", "c"], 0, 0.5, 0.2)


def test_generated_sources_draw_held_out_and_judge_images_from_their_own_seeds():
    data = DataConfig(source="shapes", image_size=16, num_images=32, max_count=3)
    training, held, judged = in_memory_arrays(data)["image"], held_out_arrays(data, 8)["image"], judge_arrays(data, 8)["image"]
    for images in (held, judged):
        assert not any((image == training).all(axis=(1, 2, 3)).any() for image in images)
    assert not any((image == held).all(axis=(1, 2, 3)).any() for image in judged)
    np.testing.assert_array_equal(judge_arrays(data, 8)["image"], judged)
