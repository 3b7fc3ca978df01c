"""Every in-memory data source as arrays, and the driver-side check of every source (no Ray here).

`in_memory_arrays` builds a whole (small) training set: ``image`` float32 ``[N, C, H, W]`` in [-1, 1] plus its
labels (``counts``, ``object``, ``label``, ``mask``). Generated sources (``shapes``, ``glyphs``, ``garments``,
``objects``) are deterministic in the seed; ``folder`` and ``npy`` read files. `check_data_source` checks any source
completely before a Ray worker starts (`raytopo.data.validate`); `class_names` names a source's classes.
"""

from __future__ import annotations

import numpy as np

from raytopo.data.config import DataConfig
from raytopo.data.source_registry import get_source, resolve
from raytopo.errors import ConfigError, InputError


def in_memory_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """The whole (small) training set as arrays: ``image`` float32 [N, C, H, W] in [-1, 1] plus its labels."""
    source = get_source(data.source)
    if source.streamed:
        raise ConfigError(f"data.source: {data.source!r} is streamed with Ray Data, not loaded in memory")
    return resolve(source.load)(data)


HELD_OUT_SEED_OFFSET = 1_000_003
"""Held-out images of a generated source use ``data.seed + HELD_OUT_SEED_OFFSET`` (a seed training never uses)."""


def held_out_arrays(data: DataConfig, n: int) -> dict[str, np.ndarray]:
    """``n`` evaluation images (``image`` float32 [n, C, H, W] in [-1, 1], plus ``label`` / ``counts`` when the data
    has them): the one held-out split every family evaluates on.

    Generated sources (shapes, glyphs, garments) draw ``n`` *new* images from the training distribution (seed
    ``data.seed + HELD_OUT_SEED_OFFSET``). Files have no separate split: ``folder`` and ``npy`` give their last
    ``n`` images and ``parquet`` its last ``n`` rows, which are also trained on; point ``data.path`` at a test
    split (``--set data.path=...``) for an unbiased figure.

    Raises:
        InputError: fewer than ``n`` images.
    """
    from dataclasses import replace

    source = get_source(data.source)
    if source.generated:
        arrays = in_memory_arrays(replace(data, seed=data.seed + HELD_OUT_SEED_OFFSET, num_images=n))
    elif source.streamed:
        arrays = _last_parquet_rows(data, n)
    else:
        arrays = in_memory_arrays(data)
    if len(arrays["image"]) < n:
        raise InputError(f"data.path {data.path}: expected at least {n} images for evaluation, "
                         f"found {len(arrays['image'])}")
    return {key: value[-n:] for key, value in arrays.items()}


def _last_parquet_rows(data: DataConfig, n: int) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    from raytopo.data.parquet import decode_rows, read_pack_info

    chunks: list[dict[str, np.ndarray]] = []
    for shard in reversed(read_pack_info(data.path).shards):
        if sum(len(chunk["image"]) for chunk in chunks) >= n:
            break
        chunks.insert(0, decode_rows(pq.read_table(shard), data.image_size, data.channels))
    keys = [key for key in ("image", "counts", "object", "label", "mask") if chunks and key in chunks[0]]
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in keys} if chunks else {
        "image": np.zeros((0, data.channels, data.image_size, data.image_size), dtype=np.float32)}


def check_data_source(data: DataConfig) -> int | None:
    """Check the whole source on the driver (streaming) so bad data fails before any Ray worker starts; returns
    the number of images (rows of a parquet pack, ``data.num_images`` of a generated source; None when a
    registered source's check does not count).

    Raises `InputError`/`ConfigError` with one line naming the file and what was expected.
    """
    return resolve(get_source(data.source).check)(data)


def class_names(data: DataConfig) -> tuple[str, ...] | None:
    """The names of the classes, by ``label`` index, of a class-labelled source; None when it names none
    (no classes, or ``npy`` labels that are only integers)."""
    reference = get_source(data.source).class_names
    names = tuple(resolve(reference)(data)) if reference else ()
    return names or None


# --- the built-in sources' class names ---------------------------------------------------------------------------


def object_class_names(data: DataConfig) -> tuple[str, ...]:
    from raytopo.data.objects import OBJECT_CLASSES

    return OBJECT_CLASSES


def garment_class_names(data: DataConfig) -> tuple[str, ...]:
    from raytopo.data.garments import GARMENT_CLASSES

    return GARMENT_CLASSES


def class_folder_class_names(data: DataConfig) -> tuple[str, ...]:
    from raytopo.data.layouts import scan_class_folders

    return scan_class_folders(data.path).class_names


def parquet_class_names(data: DataConfig) -> tuple[str, ...]:
    from raytopo.data.parquet import read_pack_info

    return read_pack_info(data.path).class_names


# --- the built-in sources' checks (registered in raytopo.data.source_registry) --------------------------------


def check_shapes(data: DataConfig) -> int:
    """The image can hold ``max_count`` shapes (one such mask is generated)."""
    from raytopo.data.shapes import check_capacity

    try:
        check_capacity(_shapes_config(data))
    except ConfigError as error:
        raise ConfigError(f"data (source {data.source}, image_size {data.image_size}): {error}") from None
    return data.num_images


def check_objects(data: DataConfig) -> int:
    """RGB channels, and the image can hold ``max_count`` objects (the Shapes capacity check)."""
    _check_rgb(data, "objects")
    return check_shapes(data)


def _check_rgb(data: DataConfig, source: str) -> None:
    if data.channels != 3:
        raise ConfigError(f"data.channels: source {source!r} is RGB; expected 3, got {data.channels}")


def check_nothing(data: DataConfig) -> int:
    """Generated sources other than shapes: nothing can be wrong that the config did not already reject."""
    return data.num_images


def check_folder(data: DataConfig) -> int:
    from raytopo.data.validate import check_image_folder

    return check_image_folder(data.path, data.convention, data.count_limit)


def check_npy(data: DataConfig) -> int:
    from raytopo.data.validate import check_npy_images

    return check_npy_images(data.path, data.labels_path)


def check_class_folder(data: DataConfig) -> int:
    from raytopo.data.layouts import check_class_folders

    return check_class_folders(data.path)


def check_image_mask(data: DataConfig) -> int:
    from raytopo.data.layouts import check_image_mask_pairs

    return check_image_mask_pairs(data.path)


def check_parquet(data: DataConfig) -> int:
    from raytopo.data.validate import check_parquet_pack

    return check_parquet_pack(data.path, data.convention, data.count_limit)


# --- the built-in in-memory loaders ----------------------------------------------------------------------------


def _shapes_config(data: DataConfig):
    from raytopo.data.shapes import ShapesConfig

    return ShapesConfig(dim=data.shapes_dim, size=data.image_size, max_count=data.max_count,
                        min_count=data.min_count, seed=data.seed)


def shapes_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.shapes import shape_example

    config = _shapes_config(data)
    masks, counts = [], []
    for index in range(data.num_images):
        mask, label, _ = shape_example(config, index)
        masks.append(mask)
        counts.append(label)
    return {"image": _scaled(np.stack(masks), data.channels), "counts": np.asarray(counts, dtype=np.float32)}


def objects_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """``image`` float32 [N, 3, S, S] in [-1, 1], ``label`` int64 [N], ``mask`` float32 [N, 1, S, S] in {-1, 1}
    (exactly the ``shapes`` source's masks) and ``counts`` float32 [N, k] (as ``shapes_arrays`` gives them)."""
    from raytopo.data.objects import object_images

    _check_rgb(data, "objects")
    made = object_images(_shapes_config(data), data.num_images)
    return {"image": made["image"].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0,
            "label": made["label"].astype(np.int64),
            "mask": np.where(made["mask"][:, None] > 0, 1.0, -1.0).astype(np.float32),
            "counts": made["counts"].astype(np.float32)}


def glyph_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.glyphs import glyph_images

    images = glyph_images(data.num_images, data.image_size, group=data.group, seed=data.seed)
    return {"image": _scaled(images, data.channels)}


def garment_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.garments import garment_images

    images, labels = garment_images(data.num_images, data.image_size, seed=data.seed)
    return {"image": _scaled(images, data.channels), "label": labels.astype(np.int64)}


def _scaled(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, channels, H, W] in [-1, 1]."""
    scaled = images.astype(np.float32)[:, None] / 127.5 - 1.0
    return np.repeat(scaled, channels, axis=1) if channels == 3 else scaled


def folder_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.folder import ImageFolderDataset

    dataset = ImageFolderDataset(data.path, data.convention, data.image_size, channels=data.channels,
                                 count_limit=data.count_limit)
    items = [dataset[i] for i in range(len(dataset))]
    return {key: np.stack([item[key].numpy() for item in items]) for key in items[0]}


def npy_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.arrays import load_image_array, load_labels

    arrays = {"image": load_image_array(data.path, data.image_size, data.channels)}
    if data.labels_path:
        arrays["label"] = load_labels(data.labels_path, len(arrays["image"]))
    return arrays


def class_folder_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.layouts import class_folder_arrays as load

    return load(data.path, data.image_size, data.channels)


def image_mask_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    from raytopo.data.layouts import image_mask_arrays as load

    return load(data.path, data.image_size, data.channels)
