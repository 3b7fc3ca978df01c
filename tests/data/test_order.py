"""The seeded schedule of training rows (`RowSchedule`): epochs are permutations of each rank's share, a resume
continues an epoch without repeating a row, and a pack written in label order is mixed (chi-square)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2_contingency, chisquare

from raytopo.data.config import DataConfig
from raytopo.data.order import DataPosition, RowSchedule, shuffle_buffer
from raytopo.data.parquet import pack_folder
from raytopo.errors import InputError
from raytopo.train.data import training_schedule


def _take(schedule: RowSchedule, rank: int, batch: int, count: int, position: DataPosition | None = None):
    batches = schedule.batches(rank, batch, position or DataPosition(world=schedule.world))
    return [next(batches) for _ in range(count)]


def test_each_epoch_is_a_fresh_permutation_of_each_ranks_own_rows():
    schedule = RowSchedule(np.arange(103), seed=7, world=2)
    assert schedule.length == 51
    for epoch in range(3):
        ranks = [schedule.epoch_rows(epoch, rank) for rank in range(2)]
        assert all(len(rows) == 51 == len(set(rows.tolist())) for rows in ranks)
        assert not set(ranks[0]) & set(ranks[1])
        assert set(ranks[0]) <= set(range(0, 103, 2)) and set(ranks[1]) <= set(range(1, 103, 2))
    assert not np.array_equal(schedule.epoch_rows(0, 0), schedule.epoch_rows(1, 0))
    np.testing.assert_array_equal(RowSchedule(np.arange(103), 7, 2).epoch_rows(2, 1), schedule.epoch_rows(2, 1))


@pytest.mark.parametrize("blocks", [False, True])
def test_a_run_resumed_at_any_position_continues_with_the_rows_not_yet_seen(blocks):
    rows = np.arange(200)
    schedule = RowSchedule(rows, seed=3, world=1, units=rows // 8 if blocks else None, buffer=32)
    straight = _take(schedule, 0, 16, 30)
    for cut in (1, 7, 12, 13):               # 12 batches fill epoch 0 (200 // 16)
        resumed = _take(RowSchedule(rows, 3, 1, units=rows // 8 if blocks else None, buffer=32), 0, 16,
                        30 - cut, straight[cut - 1][0])
        for (position, got), (expected_position, expected) in zip(resumed, straight[cut:]):
            np.testing.assert_array_equal(got, expected)
            assert position == expected_position
    epoch_zero = np.concatenate([got for position, got in straight if position.epoch == 0])
    assert len(epoch_zero) == 192 == len(set(epoch_zero.tolist()))   # no row twice within the epoch


def test_a_new_batch_size_continues_from_the_rows_consumed():
    schedule = RowSchedule(np.arange(64), seed=0, world=1)
    first = _take(schedule, 0, 8, 3)                       # 24 rows of epoch 0
    rest = _take(schedule, 0, 5, 9, first[-1][0])          # 8 batches of 5 finish epoch 0, the 9th opens epoch 1
    seen = np.concatenate([rows for _, rows in first] + [rows for position, rows in rest if position.epoch == 0])
    assert len(seen) == 24 + 40 == len(set(seen.tolist()))
    assert rest[-1][0].epoch == 1


def test_position_at_step_is_where_that_step_starts():
    schedule = RowSchedule(np.arange(50), seed=1, world=2)      # 25 rows each: 3 batches of 8 per epoch
    batches = _take(schedule, 1, 8, 7)
    for step in range(7):
        drawn = _take(schedule, 1, 8, 1, schedule.position_at_step(step, 8))[0]
        np.testing.assert_array_equal(drawn[1], batches[step][1])
        assert drawn[0] == batches[step][0]
    with pytest.raises(InputError, match="fewer than a batch of 32"):
        schedule.position_at_step(0, 32)


def test_block_mode_reads_each_block_once_and_holds_at_most_a_buffer_and_a_block():
    rows = np.arange(1000)
    units = rows // 10
    schedule = RowSchedule(rows, seed=5, world=3, units=units, buffer=64)
    for rank in range(3):
        order = schedule.epoch_rows(0, rank)
        own = set(np.unique(units)[rank::3].tolist())
        assert set(units[order].tolist()) <= own and len(order) == len(set(order.tolist())) == schedule.length
        read, waiting, peak = set(), set(), 0            # a reader that loads a block when its first row is due
        for row in order:
            if units[row] not in read:
                read.add(units[row])
                waiting |= set(rows[units == units[row]].tolist())
            waiting.discard(row)
            peak = max(peak, len(waiting))
        assert peak <= 64 + 10


def test_shuffle_buffer_is_a_permutation_and_a_full_shuffle_when_it_holds_everything():
    stream = np.arange(500)
    out = shuffle_buffer(stream, 64, np.random.default_rng(0))
    assert sorted(out.tolist()) == stream.tolist() and not np.array_equal(out, stream)
    np.testing.assert_array_equal(shuffle_buffer(stream, 0, np.random.default_rng(0)), stream)
    firsts = [shuffle_buffer(np.arange(5), 10, np.random.default_rng(seed))[0] for seed in range(2000)]
    assert chisquare(np.bincount(firsts, minlength=5)).pvalue > 0.01       # uniform over the stream


@pytest.fixture(scope="module")
def sorted_pack(tmp_path_factory) -> Path:
    """6000 8 px masks named by count (``c_1_*`` ... ``c_5_*``), packed in that sorted order, 16 rows a group."""
    root = tmp_path_factory.mktemp("sorted")
    folder = root / "masks"
    folder.mkdir()
    for count in range(1, 6):
        for i in range(1200):
            Image.fromarray(np.full((8, 8), 40 * count, np.uint8)).save(folder / f"{count}_{i:05d}.png")
    pack_folder(folder, root / "pack", "count", rows_per_shard=1000)
    return root / "pack"


def _label_table(pack: Path, buffer: int, batches: int = 200, batch: int = 16) -> np.ndarray:
    data = DataConfig(source="parquet", path=str(pack), image_size=8, eval_fraction=0, judge_fraction=0,
                      in_memory_max_bytes=0, shuffle_buffer=buffer)
    schedule, index = training_schedule(data, seed=0, world=1)
    assert schedule.mode == "blocks"
    labels = index.labels["counts"][:, 0].astype(int) - 1
    return np.array([np.bincount(labels[rows], minlength=5) for _, rows in _take(schedule, 0, batch, batches)])


def test_a_pack_written_in_label_order_gives_batches_indistinguishable_from_random(sorted_pack):
    table = _label_table(sorted_pack, buffer=2048)
    assert chi2_contingency(table).pvalue > 0.01                 # every batch's histogram fits one distribution
    assert chisquare(table.sum(axis=0)).pvalue > 0.01            # ... and that distribution is the data's
    random = np.random.default_rng(0)                            # the same statistic on truly random batches
    reference = np.array([np.bincount(random.integers(0, 5, 16), minlength=5) for _ in range(200)])
    assert chi2_contingency(reference).pvalue > 0.01
    assert chi2_contingency(_label_table(sorted_pack, buffer=0)).pvalue < 1e-9   # no buffer: whole-count runs
