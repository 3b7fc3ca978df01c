"""Every data source's rows as arrays, its three splits, and the driver-side check of every source (no Ray).

* `training_arrays` / `in_memory_arrays`: the training rows of a set small enough to hold in memory:
  ``image`` ``[N, C, H, W]`` plus its labels (``counts``, ``object``, ``label``, ``mask``). Generated sources
  (``shapes``, ``glyphs``, ``garments``, ``objects``) are made from the seed; file sources decode their
  training split (`file_data`) with the same reader a stream uses.
* `held_out_arrays` / `judge_arrays`: the evaluation and judge splits (`raytopo.data.splits`); new seeded draws
  of a generated source.
* `check_data_source`: the whole check of a source before any Ray worker starts (`raytopo.data.validate`).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace

import numpy as np

from raytopo.data.config import DataConfig
from raytopo.data.rows import ReadSpec, RowIndex, model_arrays, read_all
from raytopo.data.source_registry import get_source, resolve
from raytopo.data.splits import EVAL, JUDGE, TRAIN, split_units
from raytopo.errors import ConfigError, InputError
from raytopo.progress import progress

HELD_OUT_SEED_OFFSET = 1_000_003
"""Held-out images of a generated source use ``data.seed + HELD_OUT_SEED_OFFSET`` (a seed training never uses)."""
JUDGE_SEED_OFFSET = 2_000_029
"""The judges' images of a generated source use ``data.seed + JUDGE_SEED_OFFSET``."""


# --- file data: the index and its splits -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FileData:
    """A file data set: the rows of ``data.path`` with the split of each, and the rows of ``data.eval_path``."""

    index: RowIndex
    split: np.ndarray                 # int8 per row of ``index``: TRAIN, EVAL or JUDGE
    eval_index: RowIndex | None = None

    def rows(self, name: str) -> tuple[RowIndex, np.ndarray]:
        """The index holding split ``name`` (``train``, ``eval``, ``judge``) and its row numbers, ascending."""
        if name == "eval" and self.eval_index is not None:
            return self.eval_index, np.arange(len(self.eval_index), dtype=np.int64)
        code = {"train": TRAIN, "eval": EVAL, "judge": JUDGE}[name]
        return self.index, np.flatnonzero(self.split == code).astype(np.int64)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.rows(name)[1]) for name in ("train", "eval", "judge")}


@functools.lru_cache(maxsize=8)
def file_data(data: DataConfig) -> FileData:
    """The index and splits of a file source (cached per process: listing a large folder costs seconds)."""
    source = get_source(data.source)
    if source.index is None:
        raise ConfigError(f"data.source: {data.source!r} is generated, it has no files to index")
    index = resolve(source.index)(data, data.path)
    eval_fraction, judge_fraction = data.held_out_fractions()
    split = split_units(index.unit_keys, data.seed, eval_fraction, judge_fraction, f"data.path {data.path}")
    eval_index = resolve(source.index)(data, data.eval_path) if data.eval_path else None
    return FileData(index, split[index.units], eval_index)


def read_spec(data: DataConfig, index: RowIndex, seed: int = 0, epoch: int = 0, crop: bool = False) -> ReadSpec:
    """How ``data``'s rows are decoded (a random resized crop only for training streams, ``crop``)."""
    return ReadSpec(layout=index.layout, root=index.root, image_size=data.image_size, channels=data.channels,
                    masks=index.has_masks, crop=data.augment.crop if crop else None, seed=seed, epoch=epoch)


def decoded_bytes(data: DataConfig, rows: int, masks: bool) -> int:
    """What ``rows`` rows take in memory as uint8 pixels (the streaming threshold's measure)."""
    return rows * data.image_size ** 2 * (data.channels + int(masks))


def streams(data: DataConfig) -> bool:
    """Whether training reads ``data`` as a Ray Data stream rather than decoding it into every worker: a file
    set whose training rows exceed ``data.in_memory_max_bytes``, or one asking for crops."""
    if get_source(data.source).generated:
        return False
    if data.augment.crop is not None:
        return True
    files = file_data(data)
    return decoded_bytes(data, files.sizes()["train"], files.index.has_masks) > data.in_memory_max_bytes


def labels_of(index: RowIndex, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in index.labels.items()}


def split_arrays(data: DataConfig, name: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """Split ``name`` of a file set decoded in this process (its first ``limit`` rows): uint8 ``image`` and
    ``mask`` in {0, 1}, with ``row`` (row numbers of the split's index) and the labels."""
    index, rows = file_data(data).rows(name)
    rows = rows[:limit]
    decoded = read_all(index, rows, read_spec(data, index),
                       progress=lambda chunks: progress(chunks, f"decoding {len(rows)} {name} rows", "chunk"))
    return {**decoded, **labels_of(index, rows)}


# --- arrays: training, held-out, judges --------------------------------------------------------------------------


def training_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """The training rows of a set held in memory: generated arrays (float32 in [-1, 1]) or a file set's training
    split (uint8 pixels, ``mask`` in {0, 1}, with ``row``: each row's number in the index); `model_arrays` makes
    them float."""
    source = get_source(data.source)
    if source.generated:
        return resolve(source.load)(data)
    return split_arrays(data, "train")


def in_memory_arrays(data: DataConfig) -> dict[str, np.ndarray]:
    """The whole (small) training set as model arrays: ``image`` float32 [N, C, H, W] in [-1, 1] plus its labels."""
    return model_arrays({k: v for k, v in training_arrays(data).items() if k != "row"})


def held_out_arrays(data: DataConfig, n: int) -> dict[str, np.ndarray]:
    """``n`` evaluation images (``image`` float32 [n, C, H, W] in [-1, 1], plus ``label`` / ``counts`` / ``mask``
    when the data has them): the evaluation split every family scores on, rows that trained nothing.

    Generated sources draw ``n`` *new* images from the training distribution (seed ``data.seed +
    HELD_OUT_SEED_OFFSET``). File sources give the first ``n`` rows of their evaluation split (``data.eval_path``,
    or ``data.eval_fraction`` of ``data.path``); with neither, the training rows, said on stderr.

    Raises:
        InputError: the evaluation split holds fewer than ``n`` images.
    """
    return _split_or_draw(data, n, "eval", HELD_OUT_SEED_OFFSET, exact=True)


def judge_arrays(data: DataConfig, n: int) -> dict[str, np.ndarray]:
    """Up to ``n`` images for raytopo's judges (the classifier and segmenter that score generations): the judge
    split of a file source (``data.judge_fraction``; the training rows when it is 0, said on stderr), ``n`` new
    seeded draws of a generated one (seed ``data.seed + JUDGE_SEED_OFFSET``). Never an evaluation row."""
    return _split_or_draw(data, n, "judge", JUDGE_SEED_OFFSET, exact=False)


def _split_or_draw(data: DataConfig, n: int, name: str, offset: int, exact: bool) -> dict[str, np.ndarray]:
    source = get_source(data.source)
    if source.generated:
        arrays = resolve(source.load)(replace(data, seed=data.seed + offset, num_images=n))
        return {key: value[:n] for key, value in arrays.items()}
    files = file_data(data)
    available = files.sizes()[name]
    if available == 0:
        _warn_once(f"data: no {name} split (data.{name}_fraction 0{', no data.eval_path' if name == 'eval' else ''}): "
                   f"the {'evaluation' if name == 'eval' else 'judges'} use training rows of {data.path}")
        name, available = "train", files.sizes()["train"]
    if exact and available < n:
        where = data.eval_path or data.path
        raise InputError(f"data.path {where}: expected at least {n} images for evaluation, the {name} split holds "
                         f"{available}; raise data.eval_fraction or give data.eval_path")
    arrays = split_arrays(data, name, n)
    return model_arrays({key: value for key, value in arrays.items() if key != "row"})


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    print(f"raytopo: warning: {message}", file=sys.stderr)


def check_data_source(data: DataConfig) -> int | None:
    """Check the source on the driver so bad data fails before any Ray worker starts; returns the number of
    training images (``data.num_images`` of a generated source; None when a registered source's check does not
    count).

    A file set held in memory is decoded completely here, one chunk at a time; a streamed one is listed and
    labelled completely and its first row decoded (a file that breaks later stops the stream naming it, or is
    skipped under ``data.max_bad_files``). Raises `InputError`/`ConfigError` with one line naming the file.
    """
    return resolve(get_source(data.source).check)(data)


def check_files(data: DataConfig) -> int:
    """The check of every file source: its index and splits, then its rows decoded (all of them when held in
    memory, the first of each split when streamed)."""
    files = file_data(data)
    limit = None if not streams(data) else 1
    for name, size in files.sizes().items():
        if size:
            split_arrays(data, name, limit)
    return files.sizes()["train"]


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
    from raytopo.data.files import open_store
    from raytopo.data.layouts import class_folder_layout

    return class_folder_layout(open_store(data.path))[2]


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


def check_npy(data: DataConfig) -> int:
    """The array's layout, dtype and values (memory-mapped, chunked) and its labels, then `check_files`."""
    from raytopo.data.validate import check_npy_images

    check_npy_images(data.path, data.labels_path)
    return check_files(data)


def check_parquet(data: DataConfig) -> int:
    """The pack's metadata, schema, convention and count bounds, then `check_files`."""
    from raytopo.data.validate import check_parquet_pack

    check_parquet_pack(data.path, data.convention, data.count_limit)
    return check_files(data)


# --- the built-in file indexes (registered in raytopo.data.source_registry) ------------------------------------


def folder_index(data: DataConfig, path: str) -> RowIndex:
    """Images labelled by file name (``data.convention``)."""
    from raytopo.data.files import open_store
    from raytopo.data.folder import label_folder
    from raytopo.data.rows import file_rows

    names, labels, objects = label_folder(open_store(path), data.convention, count_limit=data.count_limit)
    arrays = {}
    if labels and labels[0].counts:
        arrays["counts"] = np.asarray([label.counts for label in labels], dtype=np.float32)
    if objects:
        arrays["object"] = np.asarray([objects[label.object_name] for label in labels], dtype=np.int64)
    return file_rows(open_store(path).root, names, arrays)


def class_folder_index(data: DataConfig, path: str) -> RowIndex:
    """``path/<class>/*`` images, labelled by class folder (sorted names)."""
    from raytopo.data.files import open_store
    from raytopo.data.layouts import class_folder_layout
    from raytopo.data.rows import file_rows

    names, labels, _ = class_folder_layout(open_store(path))
    return file_rows(open_store(path).root, names, {"label": np.asarray(labels, dtype=np.int64)})


def image_mask_index(data: DataConfig, path: str) -> RowIndex:
    """``path/images`` + ``path/masks`` pairs."""
    from raytopo.data.files import open_store
    from raytopo.data.layouts import pair_layout
    from raytopo.data.rows import file_rows

    pairs = pair_layout(open_store(path))
    return file_rows(open_store(path).root, [image for image, _ in pairs], masks=[mask for _, mask in pairs])


def npy_index(data: DataConfig, path: str) -> RowIndex:
    """The rows of one ``.npy`` array (a local path: arrays are memory-mapped), with ``labels_path`` labels."""
    from raytopo.data.arrays import load_labels, load_npy
    from raytopo.data.files import absolute_location, is_uri
    from raytopo.data.rows import array_rows

    if is_uri(path):
        raise InputError(f"{path}: expected a local .npy file (arrays are memory-mapped); use a parquet pack for "
                         "remote storage")
    count = len(load_npy(path, "images", mmap=True))
    labels = {"label": load_labels(data.labels_path, count)} if data.labels_path and path == data.path else {}
    return array_rows(absolute_location(path), count, labels)


def parquet_index(data: DataConfig, path: str) -> RowIndex:
    """The rows of a pack by row group, with their label columns (no image is decoded)."""
    from raytopo.data.parquet import pack_layout, read_pack_info
    from raytopo.data.rows import pack_rows

    from raytopo.data.files import open_store

    groups, labels, masks = pack_layout(read_pack_info(path))
    return pack_rows(open_store(path).root, groups, labels, masks)


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
