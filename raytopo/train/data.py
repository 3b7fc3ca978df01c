"""Training batches on a worker: an endless iterator of ``{"image", "counts"[, "object"]}`` tensors.

* ``shapes``: the synthetic Shapes set generated in memory (deterministic in the seed; every worker builds
  the same set and takes its own rows), so a run needs no files at all.
* ``folder``: an image folder with TDN filename labels, read by every worker (fine on one machine or with
  shared storage; use ``parquet`` on a cluster).
* ``parquet``: shards written by ``raytopo data pack``, streamed by Ray Data to workers on any node
  (``ray.train.get_dataset_shard("train")``).

Rows are split across workers by rank (shapes/folder) or by Ray Data (parquet); each worker reshuffles
every epoch with a seed derived from (seed, epoch, rank), so a resumed run draws the same batches.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from raytopo.errors import ConfigError
from raytopo.train.config import DataConfig

Batch = dict[str, torch.Tensor]


def in_memory_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """The whole (small) training set as arrays: image float32 [N, C, H, W] in [-1, 1], counts [N, k]."""
    if data.source == "shapes":
        return _shapes_arrays(data)
    if data.source == "folder":
        return _folder_arrays(data)
    raise ConfigError(f"data.source: {data.source!r} is streamed with Ray Data, not loaded in memory")


def batch_iterator(data: DataConfig, batch_size: int, rank: int, world: int, seed: int,
                   start_step: int, device: torch.device) -> Iterator[Batch]:
    """Endless batches for one worker, positioned at ``start_step`` (so a resume does not repeat data)."""
    if data.source == "parquet":
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


def _shapes_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.shapes import ShapesConfig, shape_example

    config = ShapesConfig(dim=data.shapes_dim, size=data.image_size, max_count=data.max_count,
                          min_count=data.min_count, seed=data.seed)
    masks, counts = [], []
    for index in range(data.num_images):
        mask, label, _ = shape_example(config, index)
        masks.append(mask)
        counts.append(label)
    images = np.stack(masks).astype(np.float32)[:, None] / 127.5 - 1.0
    if data.channels == 3:
        images = np.repeat(images, 3, axis=1)
    return {"image": images, "counts": np.asarray(counts, dtype=np.float32)}


def _folder_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(data.path, data.convention, data.image_size, channels=data.channels)
    items = [dataset[i] for i in range(len(dataset))]
    arrays = {"image": np.stack([item["image"].numpy() for item in items]),
              "counts": np.stack([item["counts"].numpy() for item in items])}
    if "object" in items[0]:
        arrays["object"] = np.stack([item["object"].numpy() for item in items])
    return arrays


def _ray_data_batches(data: DataConfig, batch_size: int, device: torch.device) -> Iterator[Batch]:
    import ray.train

    shard: Any = ray.train.get_dataset_shard("train")
    if shard is None:
        raise ConfigError("data.source 'parquet': the trainer was started without a 'train' dataset")
    while True:
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device):
            yield {key: value for key, value in batch.items() if key in ("image", "counts", "object")}


def ray_dataset(data: DataConfig) -> Any:
    """The Ray Data dataset for ``parquet`` sources, decoded to arrays on the Ray Data workers."""
    from raytopo.data.parquet import decode_rows, read_parquet_dataset

    return read_parquet_dataset(data.path).map_batches(
        decode_rows, fn_kwargs={"image_size": data.image_size, "channels": data.channels}, batch_format="pyarrow"
    )
