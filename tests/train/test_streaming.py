"""File data streamed by Ray tasks: the same batches as in memory, the schedule's rows decoded like the files,
any pyarrow filesystem, augmentations that keep counts, bad files named or skipped, and resumes that continue
the epoch without repeating a row."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from raytopo.commands.data import ShapesArgs, run_shapes
from raytopo.data.augment import AugmentConfig
from raytopo.data.config import DataConfig
from raytopo.data.folder import decode_image
from raytopo.data.parquet import pack_folder
from raytopo.errors import InputError
from raytopo.train.data import batch_iterator, training_schedule

from train_helpers import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    run_shapes(ShapesArgs(dim="0", n=96, size=16, max_count=3, min_count=1, objects=False, seed=0,
                          out=root / "masks"))
    pack_folder(root / "masks", root / "pack", "count", rows_per_shard=40, rows_per_group=8)
    return {"masks": root / "masks", "pack": root / "pack", "root": root}


def _data(path: Path | str, **fields) -> DataConfig:
    source = "parquet" if str(path).rstrip("/").endswith("pack") else "folder"
    return DataConfig(**{"source": source, "path": str(path), "image_size": 16, "eval_fraction": 0.1,
                         "judge_fraction": 0.0, "reader_cpus": 0.5, **fields})


def _batches(data: DataConfig, count: int, rank: int = 0, world: int = 1, batch: int = 8):
    stream = batch_iterator(data, batch, rank, world, seed=3, device=CPU)
    try:
        return [(next(stream), list(stream.last_ids)) for _ in range(count)]
    finally:
        stream.close()


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_a_streamed_folder_gives_exactly_the_in_memory_batches(ray_local, folders, rank, world):
    augment = AugmentConfig(hflip=True, vflip=True, rot90=True)
    memory = _batches(_data(folders["masks"], augment=augment), 14, rank, world)
    streamed = _batches(_data(folders["masks"], augment=augment, in_memory_max_bytes=0), 14, rank, world)
    for (a, ids_a), (b, ids_b) in zip(memory, streamed):     # 14 batches: over an epoch boundary
        assert ids_a == ids_b and set(a) == set(b) == {"image", "counts"}
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["counts"], b["counts"], rtol=0, atol=0)


def test_a_streamed_pack_delivers_the_schedules_rows_decoded_like_their_files(ray_local, folders):
    import pyarrow.parquet as pq

    data = _data(folders["pack"], in_memory_max_bytes=0, shuffle_buffer=16)
    schedule, index = training_schedule(data, seed=3, world=1)
    assert schedule.mode == "blocks"
    got = _batches(data, 12)
    positions = schedule.batches(0, 8, schedule.position_at_step(0, 8))
    filenames = {}
    for shard in sorted(folders["pack"].glob("part-*.parquet")):
        names = pq.read_table(shard, columns=["filename"]).column("filename").to_pylist()
        filenames.update({f"{shard.name}:{i}": name for i, name in enumerate(names)})
    for batch, ids in got:
        _, rows = next(positions)
        assert ids == [index.ids[r] for r in rows]
        files = [folders["masks"] / filenames[i] for i in ids]
        pixels = np.stack([decode_image(f.read_bytes(), 16, 1, f.name) for f in files])
        np.testing.assert_array_equal(batch["image"].numpy(), pixels)    # an independent decoder
        assert batch["counts"][:, 0].tolist() == [float(f.name.split("_")[0]) for f in files]


def test_a_file_uri_streams_exactly_like_the_local_path(ray_local, folders):
    local = _batches(_data(folders["masks"], in_memory_max_bytes=0), 4)
    uri = _batches(_data(f"file://{folders['masks']}", in_memory_max_bytes=0), 4)
    for (a, ids_a), (b, ids_b) in zip(local, uri):
        assert ids_a == ids_b
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["counts"], b["counts"])


def test_flips_and_turns_keep_every_masks_component_count(ray_local, folders):
    plain = _batches(_data(folders["masks"], in_memory_max_bytes=0), 6)
    turned = _batches(_data(folders["masks"], in_memory_max_bytes=0,
                            augment=AugmentConfig(hflip=True, vflip=True, rot90=True)), 6)
    changed = 0
    for (before, _), (after, _) in zip(plain, turned):
        for image, counts, original in zip(after["image"].numpy(), after["counts"].numpy(), before["image"].numpy()):
            components = ndimage.label(image[0] > 0)[1]                   # 4-connected foreground
            assert components == int(counts[0])
            changed += int(not np.array_equal(image, original))
    assert changed > 20                                                   # the augmentation did act


def _corrupt_copy(folder: Path, target: Path, seed: int, step: int) -> Path:
    """A copy of ``folder`` whose file consumed first at 0-based ``step`` (train.seed ``seed``, one worker,
    batches of 8, no held-out rows) is a truncated PNG; returns that file."""
    import shutil

    shutil.copytree(folder, target)
    data = _data(target, in_memory_max_bytes=0, eval_fraction=0)
    schedule, index = training_schedule(data, seed=seed, world=1)
    rows = next(b for i, b in enumerate(schedule.batches(0, 8, schedule.position_at_step(0, 8))) if i == step)[1]
    victim = target / index.ids[rows[0]]
    victim.write_bytes(victim.read_bytes()[:30])
    return victim


def test_an_unreadable_file_mid_stream_stops_naming_it_or_is_skipped_and_counted(ray_local, folders, tmp_path):
    victim = _corrupt_copy(folders["masks"], tmp_path / "masks", seed=3, step=5)
    data = _data(victim.parent, in_memory_max_bytes=0, eval_fraction=0)
    stream = batch_iterator(data, 8, 0, 1, seed=3, device=CPU)
    for _ in range(5):
        next(stream)                                                      # the batches before it are whole
    with pytest.raises(InputError, match=rf"{victim.name}: expected a readable image file"):
        next(stream)
    stream.close()
    stream = batch_iterator(replace(data, max_bad_files=2), 8, 0, 1, seed=3, device=CPU)
    sizes = [len(next(stream)["image"]) for _ in range(24)]              # two epochs of 12 batches
    assert stream.bad_rows == 2 and set(sizes) == {8}                     # met once an epoch, batches kept whole
    stream.close()
    with pytest.raises(InputError, match=r"data.max_bad_files 1: 2 unreadable so far"):
        _batches(replace(data, max_bad_files=1), 24)


def test_a_damaged_shard_is_named(ray_local, folders, tmp_path):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(folders["pack"], pack)
    shard = pack / "part-00001.parquet"
    raw = bytearray(shard.read_bytes())
    raw[100:400] = bytes(300)                                             # data pages, the footer intact
    shard.write_bytes(bytes(raw))
    data = _data(pack, in_memory_max_bytes=0, eval_fraction=0)
    with pytest.raises(InputError, match=r"part-00001\.parquet"):
        _batches(data, 24)
    shard.write_bytes(bytes(raw[:-200]))                                  # truncated: no footer
    from raytopo.data.sources import check_data_source

    with pytest.raises(InputError, match=r"part-00001\.parquet"):
        check_data_source(replace(data, path=str(pack) + "/"))


def _trace(run) -> list[dict]:
    lines = (run.run_dir / "data_trace" / "rank-0.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _streamed_run(storage: Path, name: str, folder: Path, steps: int, **ray_fields) -> dict:
    return tiny_config(storage, name=name, family="adm_t",
                       data={"source": "folder", "path": str(folder), "image_size": 16, "in_memory_max_bytes": 0,
                             "trace_rows": True, "reader_cpus": 0.5},
                       train={"steps": steps, "checkpoint_every": 5, "log_every": 5},
                       ray={"persistence_actors": 1, "cpus_per_actor": 0.5, "num_to_keep": 10, **ray_fields})


def test_resume_continues_the_epoch_without_repeating_a_row(ray_local, folders, tmp_path):
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import run_training

    # 96 training rows (adm_t reads no eval split), batches of 8: 12 steps an epoch; stop inside epoch 1
    straight = parse_run_config(_streamed_run(tmp_path, "straight", folders["masks"], 25))
    run_training(straight)
    part = parse_run_config(_streamed_run(tmp_path, "part", folders["masks"], 15))
    run_training(part)
    resumed = parse_run_config(_streamed_run(tmp_path, "part", folders["masks"], 25))
    run_training(resumed, resume=True)
    steps = _trace(resumed)
    assert [s["step"] for s in steps] == list(range(1, 26))               # 15 steps, then 16..25 after the resume
    assert steps == _trace(straight)                                       # the rows an uninterrupted run took
    for epoch in (0, 1, 2):
        ids = [i for s in steps if s["epoch"] == epoch for i in s["ids"]]
        assert len(ids) == len(set(ids)) == (96 if epoch < 2 else 8)


def test_a_bad_file_on_a_worker_stops_the_run_in_one_line_and_keeps_the_checkpoint(ray_local, folders, tmp_path):
    from raytopo.train.config import parse_run_config
    from raytopo.train.storage import latest_checkpoint
    from raytopo.train.trainer import run_training

    victim = _corrupt_copy(folders["masks"], tmp_path / "masks", seed=0, step=7)    # met at step 8
    config = _streamed_run(tmp_path, "bad", victim.parent, 30, num_workers=1, cpus_per_worker=0.5)
    config["data"]["eval_fraction"] = 0
    run = parse_run_config(config)
    with pytest.raises(InputError, match=rf"{victim.name}: expected a readable image file") as raised:
        run_training(run)
    assert "\n" not in str(raised.value)
    checkpoint = latest_checkpoint(run.ray.storage_path, run.ray.name)
    assert checkpoint is not None and json.loads((Path(checkpoint) / "state.json").read_text())["step"] >= 5


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, dict]:
    """A class-folder tree, image + mask pairs and a labelled .npy array (40 rows each)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("layouts")
    rng = np.random.default_rng(0)
    for k in range(40):
        for folder in (root / "classes" / f"c{k % 3}", root / "pairs" / "images", root / "pairs" / "masks"):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24)).astype(np.uint8)).save(root / "classes" / f"c{k % 3}" / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (20, 24)).astype(np.uint8)).save(root / "pairs" / "images" / f"{k}.png")
        Image.fromarray((rng.integers(0, 2, (20, 24)) * 255).astype(np.uint8)).save(root / "pairs" / "masks" / f"{k}.png")
    np.save(root / "images.npy", rng.integers(0, 255, (40, 20, 20)).astype(np.uint8))
    np.save(root / "labels.npy", np.arange(40) % 4)
    return {"class_folder": {"path": str(root / "classes")}, "image_mask": {"path": str(root / "pairs")},
            "npy": {"path": str(root / "images.npy"), "labels_path": str(root / "labels.npy")}}


@pytest.mark.parametrize("source", ["class_folder", "image_mask", "npy"])
def test_every_layout_streams_exactly_its_in_memory_batches(ray_local, layouts, source):
    fields = {"source": source, **layouts[source], "augment": AugmentConfig(hflip=True, rot90=True)}
    path = fields.pop("path")
    memory = _batches(_data(path, **fields), 6)
    streamed = _batches(_data(path, **fields, in_memory_max_bytes=0), 6)
    keys = {"class_folder": {"image", "label"}, "image_mask": {"image", "mask"}, "npy": {"image", "label"}}[source]
    for (a, ids_a), (b, ids_b) in zip(memory, streamed):
        assert ids_a == ids_b and set(a) == set(b) == keys
        for key in keys:
            assert torch.equal(a[key], b[key])
