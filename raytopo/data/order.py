"""Which training rows each worker consumes, epoch by epoch: a pure function of the seed (no Ray, no pixels).

A `RowSchedule` holds the training rows of a data set and the number of workers (``world``). Each rank owns a
fixed share and draws it in a new order every epoch, seeded by ``(seed, epoch, rank)``:

* **full** (in-memory sets, streamed folders and arrays): rank r owns rows ``r, r + world, ...`` and takes them
  in a fresh random permutation each epoch (reading one file is as cheap as reading the next);
* **blocks** (streamed parquet packs, where rows are read a row group at a time): rank r owns row groups
  ``r, r + world, ...`` of the groups holding training rows, takes them in a fresh random order, and passes
  their rows through a seeded shuffle buffer of ``buffer`` rows (the local shuffle of Ray Data, made
  deterministic so that it can be replayed). Rows of a group only wait in the buffer, so a reader holds at most
  ``buffer`` + one group of decoded rows.

Every rank's epoch is cut to the same length (the smallest share), so all ranks change epoch at the same step.
A batch is the next ``batch_size`` rows of the epoch; a `DataPosition` (epoch, rows consumed per rank, world)
says where the next batch starts, is saved in every checkpoint, and is all a resumed run needs to continue the
epoch with the rows not yet seen. ``raytopo data inspect`` prints these rows without reading an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from raytopo.errors import InputError


@dataclass(frozen=True)
class DataPosition:
    """Where the next batch starts: ``consumed`` rows of ``epoch`` are done on every one of ``world`` ranks."""

    epoch: int = 0
    consumed: int = 0
    world: int = 1

    def to_plain(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "world": self.world}

    @classmethod
    def from_plain(cls, plain: Any) -> "DataPosition":
        """A position from a checkpoint's ``state.json``; InputError on a malformed record."""
        try:
            values = {key: int(plain[key]) for key in ("epoch", "consumed", "world")}
        except (TypeError, KeyError, ValueError):
            raise InputError(f"state.json data: expected {{epoch, consumed, world}} integers, got {plain!r}") from None
        return cls(**values)


class RowSchedule:
    """The rows every rank consumes (module docstring). ``rows``: training row numbers; ``units``: the read
    unit of each (block mode, with ``buffer``); None for full mode."""

    def __init__(self, rows: np.ndarray, seed: int, world: int, units: np.ndarray | None = None,
                 buffer: int = 0) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seed = seed
        self.world = max(1, world)
        self.units = None if units is None else np.asarray(units, dtype=np.int64)
        self.buffer = buffer
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        if self.units is None:
            self.length = len(self.rows) // self.world
        else:
            blocks, sizes = np.unique(self.units, return_counts=True)
            self._blocks = {int(b): self.rows[self.units == b] for b in blocks}
            self.length = min((int(sizes[r::self.world].sum()) for r in range(self.world)), default=0)

    @property
    def mode(self) -> str:
        return "full" if self.units is None else "blocks"

    def epoch_rows(self, epoch: int, rank: int) -> np.ndarray:
        """The rows ``rank`` consumes in ``epoch``, in order (`length` of them)."""
        key = (epoch, rank)
        if key not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[key] = self._full(epoch, rank) if self.units is None else self._blocked(epoch, rank)
        return self._cache[key]

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.length // batch_size

    def position_at_step(self, step: int, batch_size: int) -> DataPosition:
        """Where step ``step`` starts when every step so far took ``batch_size`` rows (checkpoints that predate
        recorded positions, and a stage's own stream)."""
        epoch, batch = divmod(step, self._checked_steps(batch_size))
        return DataPosition(epoch, batch * batch_size, self.world)

    def batches(self, rank: int, batch_size: int, position: DataPosition) -> Iterator[tuple[DataPosition, np.ndarray]]:
        """Endless ``(position after the batch, its rows)`` for ``rank`` from ``position``."""
        self._checked_steps(batch_size)
        epoch, consumed = position.epoch, position.consumed
        while True:
            if consumed + batch_size > self.length:
                epoch, consumed = epoch + 1, 0
            rows = self.epoch_rows(epoch, rank)[consumed:consumed + batch_size]
            consumed += batch_size
            yield DataPosition(epoch, consumed, self.world), rows

    def _checked_steps(self, batch_size: int) -> int:
        steps = self.steps_per_epoch(batch_size)
        if steps < 1:
            raise InputError(f"data: {len(self.rows)} training rows give each of {self.world} workers {self.length}, "
                             f"fewer than a batch of {batch_size}; lower train.batch_size or add images")
        return steps

    def _full(self, epoch: int, rank: int) -> np.ndarray:
        own = self.rows[rank::self.world]
        order = own[np.random.default_rng((self.seed, epoch, rank)).permutation(len(own))]
        return order[:self.length]

    def _blocked(self, epoch: int, rank: int) -> np.ndarray:
        own = list(self._blocks)[rank::self.world]
        order = np.random.default_rng((self.seed, epoch, rank)).permutation(len(own))
        stream = np.concatenate([self._blocks[own[i]] for i in order]) if own else np.zeros(0, np.int64)
        shuffled = shuffle_buffer(stream, self.buffer, np.random.default_rng((self.seed, epoch, rank, 1)))
        return shuffled[:self.length]


def shuffle_buffer(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``stream`` through a shuffle buffer of ``size``: fill it, then emit a uniformly chosen element and put the
    next incoming one in its place; drain the rest in random order (``size`` <= 1: the stream unchanged)."""
    if size <= 1 or len(stream) == 0:
        return stream
    buffer = stream[:size].copy()
    incoming = stream[size:]
    out = np.empty(len(stream), dtype=stream.dtype)
    for k, (slot, row) in enumerate(zip(rng.integers(0, len(buffer), len(incoming)), incoming)):
        out[k] = buffer[slot]
        buffer[slot] = row
    out[len(incoming):] = buffer[rng.permutation(len(buffer))]
    return out
