"""The rows of a file data set, without their pixels, and the one function that reads and decodes them.

A `RowIndex` lists every row of a folder (``folder``: names layout; ``class_folder``; ``image_mask`` pairs), a
``.npy`` array or a parquet pack: an id a person can read (the file's relative path, ``part-00003.parquet:17``
for a pack row, the array row), where its pixels are, its labels (``counts``, ``object``, ``label``) and its
*unit*: what is read in one go and what the splits and the block shuffle move as a whole (the row itself, or
the parquet row group holding it). Building one reads names and label columns only, never an image.

`read_rows` reads and decodes a batch of *read items* (`read_items`) to uint8 pixels: Ray Data's tasks run
it on a stream, and the in-memory path of a small set calls it directly, so both give the same bytes. A file
that cannot be read or decoded becomes a row with an ``error`` (naming the file) instead of an exception, so a
stream can count and skip it (``data.max_bad_files``) or stop with one line. No Ray here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

from raytopo.data.files import open_store
from raytopo.errors import InputError

Layout = Literal["files", "pairs", "npy", "pack"]


@dataclass(frozen=True, eq=False)
class RowIndex:
    """Every row of one file data set (see the module docstring). Arrays are aligned by row."""

    layout: Layout
    root: str                                   # a folder, a .npy file or a pack directory (path or URI)
    ids: tuple[str, ...]
    paths: tuple[str, ...]                      # files/pairs: image; pack: shard name; npy: ""
    units: np.ndarray                           # int64 [N]: the read unit of each row (ascending)
    offsets: np.ndarray                         # int64 [N]: npy: array row; pack: row group in its shard
    labels: dict[str, np.ndarray] = field(default_factory=dict)   # counts [N, k], object [N], label [N]
    mask_paths: tuple[str, ...] | None = None   # pairs: the mask of each image
    has_masks: bool = False
    unit_keys: tuple[str, ...] = ()             # one stable name per unit (what the split hash reads)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_units(self) -> int:
        return len(self.unit_keys)

    def unit_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(first row, row count)`` of every unit (a unit's rows are consecutive)."""
        first = np.searchsorted(self.units, np.arange(self.num_units))
        return first, np.diff(np.append(first, len(self)))

    def label_of(self, row: int) -> Any:
        """What a person reads as the row's label: its count tuple, else its class, else None."""
        if "counts" in self.labels:
            return [float(c) if c != int(c) else int(c) for c in self.labels["counts"][row]]
        if "label" in self.labels:
            return int(self.labels["label"][row])
        return None


# --- building an index --------------------------------------------------------------------------------------------


def file_rows(root: str, names: Sequence[str], labels: dict[str, np.ndarray] | None = None,
              masks: Sequence[str] | None = None) -> RowIndex:
    """The index of a folder whose rows are single files (``names`` relative to ``root``; ``masks`` beside them
    for image + mask pairs). Each file is its own unit."""
    count = len(names)
    return RowIndex(layout="pairs" if masks is not None else "files", root=root, ids=tuple(names),
                    paths=tuple(names), units=np.arange(count, dtype=np.int64),
                    offsets=np.zeros(count, dtype=np.int64), labels=labels or {},
                    mask_paths=tuple(masks) if masks is not None else None, has_masks=masks is not None,
                    unit_keys=tuple(names))


def array_rows(root: str, count: int, labels: dict[str, np.ndarray] | None = None) -> RowIndex:
    """The index of a ``.npy`` image array of ``count`` images (each row its own unit)."""
    ids = tuple(str(i) for i in range(count))
    rows = np.arange(count, dtype=np.int64)
    return RowIndex(layout="npy", root=root, ids=ids, paths=("",) * count, units=rows, offsets=rows,
                    labels=labels or {}, unit_keys=ids)


def pack_rows(root: str, shard_groups: Sequence[tuple[str, Sequence[int]]], labels: dict[str, np.ndarray],
              has_masks: bool) -> RowIndex:
    """The index of a parquet pack: ``shard_groups`` lists each shard's name and the row counts of its row
    groups, in order. A row group is a unit."""
    ids: list[str] = []
    paths: list[str] = []
    units: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    keys: list[str] = []
    for shard, groups in shard_groups:
        start = 0
        for group, rows in enumerate(groups):
            ids += [f"{shard}:{start + i}" for i in range(rows)]
            paths += [shard] * rows
            units.append(np.full(rows, len(keys), dtype=np.int64))
            offsets.append(np.full(rows, group, dtype=np.int64))
            keys.append(f"{shard}#{group}")
            start += rows
    empty = np.zeros(0, dtype=np.int64)
    return RowIndex(layout="pack", root=root, ids=tuple(ids), paths=tuple(paths),
                    units=np.concatenate(units) if units else empty,
                    offsets=np.concatenate(offsets) if offsets else empty, labels=labels,
                    has_masks=has_masks, unit_keys=tuple(keys))


# --- reading rows -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadSpec:
    """How a stream's rows are decoded: the index's layout and root, the target size and channels, and the
    random-resized-crop range with the seed and epoch its windows are drawn from."""

    layout: Layout
    root: str
    image_size: int
    channels: int
    masks: bool = False
    crop: tuple[float, float] | None = None
    seed: int = 0
    epoch: int = 0


def read_items(index: RowIndex, rows: np.ndarray) -> list[dict[str, Any]]:
    """What to read for ``rows`` (in their order): one item per file or array row, one per pack row group
    (in the order its first row appears; the group's other rows come with it)."""
    if index.layout != "pack":
        masks = index.mask_paths
        return [{"row": int(r), "path": index.paths[r], "mask": masks[r] if masks else "",
                 "offset": int(index.offsets[r]), "rows": 1} for r in rows]
    first, counts = index.unit_rows()
    items, seen = [], set()
    for unit in index.units[rows]:
        if unit not in seen:
            seen.add(unit)
            start = int(first[unit])
            items.append({"row": start, "path": index.paths[start], "mask": "", "offset": int(index.offsets[start]),
                          "rows": int(counts[unit])})
    return items


def read_rows(items: dict[str, np.ndarray], spec: ReadSpec) -> dict[str, np.ndarray]:
    """Read and decode a batch of read items (columns ``row``, ``path``, ``mask``, ``offset``, ``rows``; a dict of
    arrays): ``row`` int64 [n], ``image`` uint8 [n, C, S, S], ``mask`` uint8 [n, 1, S, S] in
    {0, 1} (with ``spec.masks``) and ``error`` [n] (``""``, or one line naming the file that failed)."""
    decoded: list[tuple[int, np.ndarray, np.ndarray | None, str]] = []
    reader = _READERS[spec.layout]
    for row, path, mask, offset, rows in zip(*(items[key] for key in ITEM_KEYS)):
        decoded += reader(int(row), str(path), str(mask), int(offset), int(rows), spec)
    size, channels = spec.image_size, spec.channels
    out = {"row": np.array([d[0] for d in decoded], dtype=np.int64),
           "image": np.stack([d[1] for d in decoded]) if decoded else np.zeros((0, channels, size, size), np.uint8),
           "error": np.array([d[3] for d in decoded], dtype=object)}
    if spec.masks:
        out["mask"] = (np.stack([d[2] for d in decoded]) if decoded
                       else np.zeros((0, 1, size, size), np.uint8))
    return out


def read_all(index: RowIndex, rows: np.ndarray, spec: ReadSpec, chunk: int = 256,
             progress: Callable[[Any], Any] = iter) -> dict[str, np.ndarray]:
    """`read_rows` of ``rows`` in this process (a small set, a held-out split), in ``rows`` order; the first
    unreadable file raises its `InputError`."""
    parts = []
    for start in progress(range(0, len(rows), chunk)):
        part = rows[start:start + chunk]
        items = read_items(index, part)
        batch = read_rows({key: np.array([item[key] for item in items], dtype=object) for key in ITEM_KEYS}, spec)
        bad = [error for error in batch["error"] if error]
        if bad:
            raise InputError(bad[0])
        order = {row: i for i, row in enumerate(batch["row"])}
        take = np.array([order[int(r)] for r in part], dtype=np.int64)
        parts.append({key: value[take] for key, value in batch.items() if key != "error"})
    if not parts:
        return read_rows({key: np.zeros(0, dtype=object) for key in ITEM_KEYS}, spec)
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def model_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 pixels as the models take them: ``image`` float32 in [-1, 1], ``mask`` float32 in {-1, 1}."""
    out = dict(arrays)
    if out.get("image") is not None and out["image"].dtype == np.uint8:
        out["image"] = out["image"].astype(np.float32) / 127.5 - 1
    if out.get("mask") is not None and out["mask"].dtype == np.uint8:
        out["mask"] = out["mask"].astype(np.float32) * 2 - 1
    return out


ITEM_KEYS = ("row", "path", "mask", "offset", "rows")
Decoded = list[tuple[int, np.ndarray, "np.ndarray | None", str]]


def _blank(spec: ReadSpec) -> tuple[np.ndarray, np.ndarray | None]:
    size = spec.image_size
    return (np.zeros((spec.channels, size, size), np.uint8),
            np.zeros((1, size, size), np.uint8) if spec.masks else None)


def _decode(row: int, load: Callable[[], tuple[Any, Any]], name: str, spec: ReadSpec,
            mask_name: str | None = None) -> tuple:
    """One row's pixels (and mask) from ``load() -> (PIL image, PIL mask or None)``; an error row when loading
    or decoding raises an `InputError`. ``name`` / ``mask_name`` name the files in messages."""
    from raytopo.data.augment import crop_generator
    from raytopo.data.folder import crop_window, preprocess_pixels

    try:
        image, mask_image = load()
        window = None
        if spec.crop is not None:
            window = crop_window(image.size, spec.image_size, spec.crop, crop_generator(spec.seed, spec.epoch, row))
        pixels = preprocess_pixels(image, spec.image_size, spec.channels, window=window)
        mask = None
        if spec.masks:
            if mask_image is None:
                raise InputError(f"{name}: expected a mask with the image, found none")
            if mask_image.size != image.size:
                raise InputError(f"{mask_name or name + ' (mask)'}: the mask is {mask_image.size[0]}x"
                                 f"{mask_image.size[1]} but its image {name.rsplit('/', 1)[-1]} is {image.size[0]}x"
                                 f"{image.size[1]}; expected the same size")
            grey = preprocess_pixels(mask_image, spec.image_size, 1, nearest=True, window=window)
            mask = (grey >= 128).astype(np.uint8)
        return row, pixels, mask, ""
    except InputError as error:
        return (row, *_blank(spec), str(error))


def _opened(data: bytes, mask_data: bytes | None, name: str) -> Callable[[], tuple[Any, Any]]:
    from raytopo.data.folder import open_image

    return lambda: (open_image(data, name), None if mask_data is None else open_image(mask_data, f"{name} (mask)"))


def _read_file(row: int, path: str, mask: str, offset: int, rows: int, spec: ReadSpec) -> Decoded:
    store = open_store(spec.root)
    name = store.location(path)

    def load() -> tuple[Any, Any]:
        return _opened(store.read(path), store.read(mask) if mask else None, name)()

    return [_decode(row, load, name, spec, store.location(mask) if mask else None)]


def _read_array_row(row: int, path: str, mask: str, offset: int, rows: int, spec: ReadSpec) -> Decoded:
    from PIL import Image

    from raytopo.data.arrays import as_uint8_hwc

    name = f"{spec.root} image {offset}"

    def load() -> tuple[Any, Any]:
        pixels = as_uint8_hwc(np.asarray(_memory_mapped(spec.root)[offset:offset + 1]), name)[0]
        grey = pixels.shape[-1] == 1
        return Image.fromarray(pixels[..., 0] if grey else pixels, "L" if grey else "RGB"), None

    return [_decode(row, load, name, spec)]


def _read_pack_group(row: int, path: str, mask: str, offset: int, rows: int, spec: ReadSpec) -> Decoded:
    """Every row (``rows`` of them) of one row group (``offset``) of shard ``path``, numbered from ``row``; all
    of them error rows naming the shard when the group cannot be read."""
    import pyarrow.parquet as pq

    store = open_store(spec.root)
    location = store.location(path)
    columns = ["image", "filename"] + (["mask"] if spec.masks else [])
    try:
        shard = pq.ParquetFile(store.open(path))
        table = shard.read_row_group(offset, columns=columns)
    except (OSError, ValueError) as error:
        message = f"{location}: unreadable parquet row group {offset} ({error})"
        return [(row + i, *_blank(spec), message) for i in range(rows)]
    except InputError as error:
        return [(row + i, *_blank(spec), str(error)) for i in range(rows)]
    first = sum(shard.metadata.row_group(g).num_rows for g in range(offset))
    images, names = table.column("image").to_pylist(), table.column("filename").to_pylist()
    masks = table.column("mask").to_pylist() if spec.masks else [None] * len(images)
    return [_decode(row + i, _opened(data, mask_data, f"{location} row {first + i} ({name})"),
                    f"{location} row {first + i} ({name})", spec)
            for i, (data, name, mask_data) in enumerate(zip(images, names, masks))]


@functools.lru_cache(maxsize=4)
def _memory_mapped(path: str) -> np.ndarray:
    from raytopo.data.arrays import load_npy

    return load_npy(path, "images", mmap=True)


_READERS: dict[str, Callable[..., Decoded]] = {"files": _read_file, "pairs": _read_file, "npy": _read_array_row,
                                                "pack": _read_pack_group}
