"""Training batches on a worker: an endless iterator of dicts of tensors.

Every batch has ``image`` float32 ``[B, C, H, W]`` in [-1, 1]; ``counts`` float32 ``[B, k]`` when the source is
count-labelled (`DataConfig.has_counts`), ``object`` for the ``count_object`` convention, and ``label`` int64
``[B]`` when class labels exist (``garments``, ``npy`` with ``labels_path``).

* generated sources (``shapes``, ``glyphs``, ``garments``): built in memory, deterministic in the seed; every
  worker builds the same set and takes its own rows, so a run needs no files at all;
* ``folder`` / ``npy``: read by every worker (fine on one machine or with shared storage; use ``parquet`` on a
  cluster);
* ``parquet``: shards written by ``raytopo data pack``, streamed by Ray Data to workers on any node
  (``ray.train.get_dataset_shard("train")``).

Rows are split across workers by rank (in-memory sources) or by Ray Data (parquet); each worker reshuffles
every epoch with a seed derived from (seed, epoch, rank), so a resumed run draws the same batches.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from raytopo.data.config import DataConfig
from raytopo.data.source_registry import get_source
from raytopo.data.sources import in_memory_arrays
from raytopo.errors import ConfigError

Batch = dict[str, torch.Tensor]


def check_batch_fits(data: DataConfig, images: int | None, batch_size: int, workers: int) -> None:
    """A batch must hold distinct images: fail on the driver when a worker's share of the ``images`` of an
    in-memory data set (the count `check_data_source` returns) is smaller than ``batch_size`` (the iterator would
    repeat rows inside one batch, and TreeVAE's growth rule, which skips leaves holding fewer confident samples
    than a batch, would never grow the tree).

    Raises:
        InputError: one line naming the sizes.
    """
    from raytopo.errors import InputError

    source = get_source(data.source)
    if source.streamed or images is None:
        return
    share = images // max(1, workers)
    if share < batch_size:
        where = f"data.num_images {images}" if source.generated else f"data.path {data.path}: {images} images"
        raise InputError(f"{where} give {share} per worker ({max(1, workers)} workers), fewer than "
                         f"train.batch_size {batch_size}; lower the batch size or add images")


def batch_iterator(data: DataConfig, batch_size: int, rank: int, world: int, seed: int,
                   start_step: int, device: torch.device) -> Iterator[Batch]:
    """Endless batches for one worker, positioned at ``start_step`` (so a resume does not repeat data)."""
    if get_source(data.source).streamed:
        return _ray_data_batches(data, batch_size, device)
    arrays = in_memory_arrays(data)
    return _array_batches(arrays, batch_size, rank, world, seed, start_step, device)


def _array_batches(arrays: dict[str, np.ndarray], batch_size: int, rank: int, world: int, seed: int,
                   start_step: int, device: torch.device) -> Iterator[Batch]:
    own = np.arange(rank, len(arrays["image"]), world)
    if len(own) == 0:
        raise ConfigError(f"data.num_images: {len(arrays['image'])} images cannot feed {world} workers")
    per_epoch = max(1, len(own) // batch_size)
    step = start_step
    while True:
        epoch, position = divmod(step, per_epoch)
        order = own[np.random.default_rng((seed, epoch, rank)).permutation(len(own))]
        rows = np.resize(order, per_epoch * batch_size)[position * batch_size:(position + 1) * batch_size]
        yield {key: torch.from_numpy(value[rows]).to(device) for key, value in arrays.items()}
        step += 1


def _ray_data_batches(data: DataConfig, batch_size: int, device: torch.device) -> Iterator[Batch]:
    import ray.train

    shard: Any = ray.train.get_dataset_shard("train")
    if shard is None:
        raise ConfigError("data.source 'parquet': the trainer was started without a 'train' dataset")
    while True:
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device):
            yield {key: value for key, value in batch.items() if key in ("image", "object", "label", "mask", "counts")}
