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

from raytopo.errors import ConfigError
from raytopo.train.config import DataConfig

Batch = dict[str, torch.Tensor]


def in_memory_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """The whole (small) training set as arrays: ``image`` float32 [N, C, H, W] in [-1, 1] plus its labels."""
    loaders = {"shapes": _shapes_arrays, "glyphs": _glyph_arrays, "garments": _garment_arrays,
               "folder": _folder_arrays, "npy": _npy_arrays}
    if data.source not in loaders:
        raise ConfigError(f"data.source: {data.source!r} is streamed with Ray Data, not loaded in memory")
    return loaders[data.source](data)


def check_data_source(data: DataConfig) -> None:
    """Check the whole source on the driver (streaming) so bad data fails before any Ray worker starts.

    Raises `InputError`/`ConfigError` with one line naming the file and what was expected.
    """
    from raytopo.data import validate

    if data.source == "shapes":
        from raytopo.data.shapes import check_capacity

        try:
            check_capacity(_shapes_config(data))
        except ConfigError as error:
            raise ConfigError(f"data (source shapes, image_size {data.image_size}): {error}") from None
    elif data.source == "folder":
        validate.check_image_folder(data.path, data.convention, data.count_limit)
    elif data.source == "npy":
        validate.check_npy_images(data.path, data.labels_path)
    elif data.source == "parquet":
        validate.check_parquet_pack(data.path, data.convention, data.count_limit)


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


def _shapes_config(data: DataConfig):
    from raytopo.data.shapes import ShapesConfig

    return ShapesConfig(dim=data.shapes_dim, size=data.image_size, max_count=data.max_count,
                        min_count=data.min_count, seed=data.seed)


def _shapes_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.shapes import shape_example

    config = _shapes_config(data)
    masks, counts = [], []
    for index in range(data.num_images):
        mask, label, _ = shape_example(config, index)
        masks.append(mask)
        counts.append(label)
    return {"image": _scaled(np.stack(masks), data.channels), "counts": np.asarray(counts, dtype=np.float32)}


def _glyph_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.glyphs import glyph_images

    images = glyph_images(data.num_images, data.image_size, group=data.group, seed=data.seed)
    return {"image": _scaled(images, data.channels)}


def _garment_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.garments import garment_images

    images, labels = garment_images(data.num_images, data.image_size, seed=data.seed)
    return {"image": _scaled(images, data.channels), "label": labels.astype(np.int64)}


def _scaled(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, channels, H, W] in [-1, 1]."""
    scaled = images.astype(np.float32)[:, None] / 127.5 - 1.0
    return np.repeat(scaled, channels, axis=1) if channels == 3 else scaled


def _folder_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(data.path, data.convention, data.image_size, channels=data.channels,
                                 count_limit=data.count_limit)
    items = [dataset[i] for i in range(len(dataset))]
    return {key: np.stack([item[key].numpy() for item in items]) for key in items[0]}


def _npy_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.arrays import load_image_array, load_labels

    arrays = {"image": load_image_array(data.path, data.image_size, data.channels)}
    if data.labels_path:
        arrays["label"] = load_labels(data.labels_path, len(arrays["image"]))
    return arrays


def _ray_data_batches(data: DataConfig, batch_size: int, device: torch.device) -> Iterator[Batch]:
    import ray.train

    shard: Any = ray.train.get_dataset_shard("train")
    if shard is None:
        raise ConfigError("data.source 'parquet': the trainer was started without a 'train' dataset")
    while True:
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device):
            yield {key: value for key, value in batch.items()
                   if key in ("image", "object") or (key == "counts" and value.shape[-1] > 0)}


def ray_dataset(data: DataConfig) -> Any:
    """The Ray Data dataset for ``parquet`` sources, decoded to arrays on the Ray Data workers."""
    from raytopo.data.parquet import decode_rows, read_parquet_dataset

    return read_parquet_dataset(data.path).map_batches(
        decode_rows, fn_kwargs={"image_size": data.image_size, "channels": data.channels}, batch_format="pyarrow"
    )
