"""Training batches on a worker: an endless, resumable stream of dicts of tensors (docs/data.md).

Every batch has ``image`` float32 ``[B, C, H, W]`` in [-1, 1]; ``counts`` float32 ``[B, k]`` when the data is
count-labelled (`DataConfig.has_counts`), ``object`` for the ``count_object`` convention, ``label`` int64
``[B]`` when class labels exist and ``mask`` float32 ``[B, 1, H, W]`` in {-1, 1} for image + mask data.

Which rows a batch holds is decided by a `RowSchedule` (`raytopo.data.order`): each rank owns its share of
the training split and takes it in a new seeded order every epoch; the stream's `position` after each batch is
saved in checkpoints, so a resumed run continues the epoch without repeating a row. The pixels come from one
of two places:

* **in memory**: generated sources and file sets below ``data.in_memory_max_bytes``, decoded once per worker;
* **a stream of Ray tasks** (`StreamedRows`): larger file sets (folders, arrays, parquet packs on any pyarrow
  filesystem). Each epoch, the worker cuts the read items of its remaining rows, in order, into tasks that
  Ray runs on any node's CPUs (`raytopo.data.rows.read_rows`: read, decode, resize, crop); the worker keeps a
  few in flight and only reorders and batches what comes back, so it never holds the whole set. Plain tasks
  rather than a Ray Data pipeline: on 2 CPUs the same reads ran at 2.0x the rate (bench/ingest.py prints
  both, with a torch DataLoader as the baseline).

Flips and quarter turns (``data.augment``) are applied to each row with its own seeded draw, identically in
both paths. An unreadable file met in a stream stops the run with one line naming it, or, with
``data.max_bad_files: N``, is replaced in its batch by a good row of that batch and counted, up to N.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from raytopo.data.augment import augment_rows
from raytopo.data.config import DataConfig
from raytopo.data.order import DataPosition, RowSchedule
from raytopo.data.rows import ITEM_KEYS, RowIndex, model_arrays, read_items, read_rows
from raytopo.data.source_registry import get_source
from raytopo.data.sources import file_data, labels_of, read_spec, streams, training_arrays
from raytopo.errors import InputError

Batch = dict[str, torch.Tensor]
MODEL_KEYS = ("image", "counts", "object", "label", "mask")
TASK_BYTES = 8 * 2**20
"""About how many decoded bytes one read task makes: 128 rows of 256 px grey, 2048 (the most) of 32 px, so that
a task carries ~100 ms of decoding against Ray's ~1 ms per task (bench/ingest.py)."""
TASK_ROWS_RANGE = (16, 2048)

log = logging.getLogger(__name__)


def check_batch_fits(data: DataConfig, images: int | None, batch_size: int, workers: int) -> None:
    """A batch must hold distinct images: fail on the driver when a worker's share of the training ``images``
    (the count `check_data_source` returns) is smaller than ``batch_size`` (TreeVAE's growth rule, which skips
    leaves holding fewer confident samples than a batch, would never grow on repeated rows).

    Raises:
        InputError: one line naming the sizes.
    """
    if images is None:
        return
    share = images // max(1, workers)
    if share < batch_size:
        where = (f"data.num_images {images}" if get_source(data.source).generated
                 else f"data.path {data.path}: {images} images in the training split")
        raise InputError(f"{where} give {share} per worker ({max(1, workers)} workers), fewer than "
                         f"train.batch_size {batch_size}; lower the batch size or add images")


def training_schedule(data: DataConfig, seed: int, world: int) -> tuple[RowSchedule, RowIndex | None]:
    """The schedule of ``data``'s training rows for ``world`` ranks, and the file index they number (None for a
    generated source, whose rows are its array rows). A streamed pack is scheduled by row group."""
    if get_source(data.source).generated:
        return RowSchedule(np.arange(data.num_images), seed, world), None
    index, rows = file_data(data).rows("train")
    blocks = index.layout == "pack" and streams(data)
    return RowSchedule(rows, seed, world, units=index.units[rows] if blocks else None,
                       buffer=data.shuffle_buffer), index


class BatchStream(Iterator[Batch]):
    """Endless batches for one rank; `position` is where the next batch starts (what checkpoints record),
    `last_ids` the row ids of the batch just returned, `bad_rows` how many unreadable rows were skipped."""

    def __init__(self, data: DataConfig, schedule: RowSchedule, index: RowIndex | None, rows: Any, rank: int,
                 batch_size: int, position: DataPosition, device: torch.device) -> None:
        self.data, self.schedule, self.index, self.rows = data, schedule, index, rows
        self.rank, self.batch_size, self.device = rank, batch_size, device
        self.position = position
        self.last_ids: list[str] = []
        self.bad_rows = 0
        self._batches = schedule.batches(rank, batch_size, position)

    def __next__(self) -> Batch:
        start = self.position
        after, rows = next(self._batches)
        if after.consumed == self.batch_size:   # the batch opened a new epoch
            start = DataPosition(after.epoch, 0, after.world)
        rows = rows.copy()   # a bad row is replaced in place; the schedule's epoch order stays as it was
        arrays = self._replace_bad(self.rows.take(start, rows), rows)
        if self.index is not None:
            arrays.update(labels_of(self.index, rows))
            self.last_ids = [self.index.ids[r] for r in rows]
        else:
            self.last_ids = [str(r) for r in rows]
        arrays = augment_rows(arrays, rows, self.schedule.seed, after.epoch, self.data.augment)
        self.position = after
        return {key: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                for key, value in model_arrays(arrays).items() if key in MODEL_KEYS}

    def close(self) -> None:
        close = getattr(self.rows, "close", None)
        if close:
            close()

    def _replace_bad(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        errors = arrays.pop("error", None)
        bad = np.flatnonzero(errors != "") if errors is not None else np.zeros(0, np.int64)
        if not len(bad):
            return arrays
        self.bad_rows += len(bad)
        if self.bad_rows > self.data.max_bad_files or len(bad) == len(rows):
            raise InputError(f"{errors[bad[0]]} (data.max_bad_files {self.data.max_bad_files}: "
                             f"{self.bad_rows} unreadable so far)")
        log.warning("data: skipped %d unreadable row(s), %d so far: %s", len(bad), self.bad_rows, errors[bad[0]])
        good = np.flatnonzero(errors == "")
        source = good[np.arange(len(bad)) % len(good)]
        for key in ("image", "mask"):
            if key in arrays:
                arrays[key][bad] = arrays[key][source]
        rows[bad] = rows[source]
        return arrays


def batch_iterator(data: DataConfig, batch_size: int, rank: int, world: int, seed: int,
                   device: torch.device, position: DataPosition | None = None, start_step: int = 0) -> BatchStream:
    """Endless batches for one worker from ``position`` (default: where step ``start_step`` starts when every
    step took ``batch_size`` rows), so a resumed run neither repeats nor skips rows."""
    schedule, index = training_schedule(data, seed, world)
    if position is None:
        position = schedule.position_at_step(start_step, batch_size)
    elif position.world != schedule.world:
        print(f"[raytopo] data: the checkpoint's epoch {position.epoch} was split over {position.world} workers, "
              f"this run has {schedule.world}; its unseen rows are skipped and epoch {position.epoch + 1} starts now",
              flush=True)
        position = DataPosition(position.epoch + 1, 0, schedule.world)
    rows: Any
    if index is not None and streams(data):
        rows = StreamedRows(data, index, schedule, rank)
    else:
        rows = InMemoryRows(training_arrays(data), index)
    return BatchStream(data, schedule, index, rows, rank, batch_size, position, device)


class InMemoryRows:
    """A training set held in memory; ``take`` gathers a batch's rows (array rows for a generated source, index
    rows, via the ``row`` column, for a file set)."""

    def __init__(self, arrays: dict[str, np.ndarray], index: RowIndex | None) -> None:
        row_numbers = arrays.pop("row", None)
        self.arrays = {key: value for key, value in arrays.items() if key in ("image", "mask") or index is None}
        self.lookup = None
        if row_numbers is not None and index is not None:
            self.lookup = np.full(len(index), -1, dtype=np.int64)
            self.lookup[row_numbers] = np.arange(len(row_numbers))

    def take(self, start: DataPosition, rows: np.ndarray) -> dict[str, np.ndarray]:
        where = rows if self.lookup is None else self.lookup[rows]
        return {key: value[where] for key, value in self.arrays.items()}


class StreamedRows:
    """A rank's rows read by Ray tasks (module docstring): for each epoch, the read items of its remaining rows,
    in the order the schedule consumes them, cut into tasks of about `TASK_BYTES` of pixels, `READ_AHEAD` of
    them in flight at once (``data.reader_cpus`` CPUs each, on any node). Results are taken in submission order;
    rows that come back before their turn (the other rows of a parquet row group) wait here until asked for."""

    def __init__(self, data: DataConfig, index: RowIndex, schedule: RowSchedule, rank: int) -> None:
        self.data, self.index, self.schedule, self.rank = data, index, schedule, rank
        self.epoch: int | None = None
        self._pending: list[Any] = []
        self._chunks: Iterator[dict[str, np.ndarray]] = iter(())
        self._waiting: dict[int, tuple[Any, ...]] = {}
        self._wanted: set[int] = set()

    def take(self, start: DataPosition, rows: np.ndarray) -> dict[str, np.ndarray]:
        if start.epoch != self.epoch:
            self._open(start)
        found = [self._next_row(int(row)) for row in rows]
        out = {"image": np.stack([f[0] for f in found]), "error": np.array([f[2] for f in found], dtype=object)}
        if self.index.has_masks:
            out["mask"] = np.stack([f[1] for f in found])
        return out

    def close(self) -> None:
        if self._pending:
            import ray

            for reference in self._pending:
                ray.cancel(reference)
        self._pending, self._chunks, self._waiting, self.epoch = [], iter(()), {}, None

    def _open(self, start: DataPosition) -> None:
        import ray

        sequence = self.schedule.epoch_rows(start.epoch, self.rank)[start.consumed:]
        self.close()
        self.epoch = start.epoch
        self._wanted = set(sequence.tolist())
        items = read_items(self.index, sequence)
        per_task = max(1, round(task_rows(self.data, self.index.has_masks) / rows_per_item(self.index)))
        self._chunks = (_columns(items[i:i + per_task]) for i in range(0, len(items), per_task))
        self._spec = ray.put(read_spec(self.data, self.index, seed=self.schedule.seed, epoch=start.epoch, crop=True))
        self._reader = ray.remote(read_rows).options(num_cpus=self.data.reader_cpus)
        for _ in range(READ_AHEAD):
            self._submit()

    def _submit(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self._pending.append(self._reader.remote(chunk, self._spec))

    def _next_row(self, row: int) -> tuple[Any, ...]:
        import ray

        while row not in self._waiting:
            if not self._pending:
                raise RuntimeError(f"data stream ended before row {row} of epoch {self.epoch}")
            batch = ray.get(self._pending.pop(0))
            self._submit()
            masks = batch.get("mask")
            for i, got in enumerate(batch["row"].tolist()):
                if got in self._wanted:
                    self._waiting[got] = (batch["image"][i], None if masks is None else masks[i], batch["error"][i])
        self._wanted.discard(row)
        return self._waiting.pop(row)


READ_AHEAD = 4
"""Read tasks a worker keeps in flight: two decoding and two queued per reader CPU on a 2-core machine."""


def _columns(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {key: np.array([item[key] for item in items], dtype=object) for key in ITEM_KEYS}


def task_rows(data: DataConfig, masks: bool) -> int:
    """Rows one read task decodes: `TASK_BYTES` of uint8 pixels, within `TASK_ROWS_RANGE`."""
    row_bytes = data.image_size ** 2 * (data.channels + int(masks))
    return int(np.clip(TASK_BYTES // row_bytes, *TASK_ROWS_RANGE))


def rows_per_item(index: RowIndex) -> float:
    """Rows one read item brings: a parquet row group's mean size, else one."""
    if index.layout != "pack" or not index.num_units:
        return 1.0
    return len(index) / index.num_units


def stage_batches(data: DataConfig, batch_size: int, rank: int, world: int, seed: int, step: int,
                  device: torch.device) -> BatchStream:
    """A stream of its own for a stage transition (`raytopo.train.loop.enter_stage`), positioned at ``step``."""
    return batch_iterator(replace(data, trace_rows=False), batch_size, rank, world, seed, device, start_step=step)
