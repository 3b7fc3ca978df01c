"""Pack an image folder into parquet shards for Ray Data, and decode those rows for training.

Three folder layouts can be packed (``layout``): file-name labels (``names``, with a ``convention``), class
folders (``class_folder``: ``root/<class>/*``) and image + mask pairs (``image_mask``: ``root/images``,
``root/masks``; `raytopo.data.layouts`). Shards are ``part-00000.parquet``, ``part-00001.parquet``, ... with one
row per image; a column a layout does not fill is empty (null, or ``[]`` for counts):

| column        | type           | content                                                            |
|---------------|----------------|--------------------------------------------------------------------|
| ``image``     | binary         | PNG bytes: copied if the file is a PNG, else re-encoded losslessly  |
| ``counts``    | list<float32>  | the file-name counts (1, or 2 for ``two_counts``); ``[]`` without   |
| ``object_name``| string, null  | object name (``count_object`` only)                                |
| ``object``    | int64, null    | its index in the object index map (``count_object`` only)          |
| ``label``     | int64, null    | class index, sorted class-folder names (``class_folder`` only)     |
| ``mask``      | binary, null   | the paired mask as PNG bytes (``image_mask`` only)                 |
| ``filename``  | string         | path relative to the packed folder (POSIX separators)              |

The schema metadata holds ``raytopo.convention``, ``raytopo.object_index`` (JSON), ``raytopo.class_names``
(JSON) and ``raytopo.format_version``; :func:`read_pack_info` reads them back. Packs of format 1 (no
``label``/``mask`` columns) still read and decode. Packing is all-or-nothing: every
label is parsed and every image decoded before anything becomes visible, shards are written into a
temporary sibling directory that is renamed into place, and an existing non-empty ``out_dir`` is only
replaced with ``overwrite=True`` and only if it holds nothing but shards.

:func:`decode_rows` is a pure function (no Ray) usable as a ``map_batches`` function; it shares
:func:`~raytopo.data.folder.decode_image` with :class:`~raytopo.data.folder.ImageFolderDataset`, so both
give identical tensors. Ray is imported lazily, only by :func:`read_parquet_dataset`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytopo.data.files import open_store
from raytopo.data.folder import decode_image, open_image, read_image_bytes, scan_folder
from raytopo.data.labels import LabelConvention, as_convention
from raytopo.errors import ConfigError, InputError
from raytopo.outputs import check_output
from raytopo.progress import progress

if TYPE_CHECKING:
    import ray.data

FORMAT_VERSION = "2"
ROWS_PER_GROUP = 16
LAYOUTS = ("names", "class_folder", "image_mask")
SHARD_GLOB = "part-*.parquet"
_SHARD_NAME = re.compile(r"part-\d{5,}\.parquet")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_META_CONVENTION = b"raytopo.convention"
_META_OBJECT_INDEX = b"raytopo.object_index"
_META_VERSION = b"raytopo.format_version"
_META_CLASS_NAMES = b"raytopo.class_names"
SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("counts", pa.list_(pa.float32())),
        ("object_name", pa.string()),
        ("object", pa.int64()),
        ("label", pa.int64()),
        ("mask", pa.binary()),
        ("filename", pa.string()),
    ]
)


@dataclass(frozen=True)
class PackInfo:
    """What a packed directory holds: its shards (names under ``root``, a path or URI), row count, label
    convention, object index map and class names."""

    root: str
    names: tuple[str, ...]
    num_rows: int
    convention: LabelConvention
    object_index: dict[str, int]
    class_names: tuple[str, ...] = ()

    @property
    def shards(self) -> tuple[str, ...]:
        """Every shard's location (``root/part-00000.parquet``, ...), as the user's ``root`` spells it."""
        return tuple(f"{self.root.rstrip('/')}/{name}" for name in self.names)

    @property
    def columns(self) -> frozenset[str]:
        """The columns of the first shard."""
        return frozenset(self.open(0).schema_arrow.names)

    def open(self, shard: int) -> pq.ParquetFile:
        """Shard number ``shard`` as a `pyarrow.parquet.ParquetFile` (any pyarrow filesystem); InputError naming
        a shard that is not readable parquet (truncated, overwritten)."""
        try:
            return pq.ParquetFile(open_store(self.root).open(self.names[shard]))
        except (OSError, ValueError) as error:
            raise InputError(f"{self.shards[shard]}: expected a parquet shard written by pack_folder, could not "
                             f"read it ({error})") from None


def pack_folder(
    root: str | Path,
    out_dir: str | Path,
    convention: LabelConvention | str,
    rows_per_shard: int = 1024,
    overwrite: bool = False,
    recursive: bool = True,
    object_index: Mapping[str, int] | None = None,
    layout: str = "names",
    rows_per_group: int = ROWS_PER_GROUP,
) -> list[Path]:
    """Pack the labelled images under ``root`` into parquet shards in ``out_dir``; return the shard paths.

    Args:
        root: image folder (file-name labels, see :mod:`raytopo.data.labels`; or a ``layout`` below).
        out_dir: output directory; must be missing or empty unless ``overwrite``.
        convention: file-name label convention (``names`` layout; the others use ``none``).
        rows_per_shard: images per shard.
        overwrite: replace an existing ``out_dir`` that holds only ``part-*.parquet`` shards.
        recursive: include sub-folders of ``root``.
        object_index: fixed object name -> index map (default: sorted names found under ``root``).
        layout: ``names`` (file-name labels), ``class_folder`` or ``image_mask`` (module docstring).
        rows_per_group: rows per parquet row group, the unit a training stream reads and shuffles by
            (small groups let the block shuffle mix a pack written in label order; docs/data.md).

    Raises:
        ConfigError: ``rows_per_shard`` or ``rows_per_group`` < 1.
        InputError: bad folder, file name or image (named), or an ``out_dir`` that may not be replaced.
    """
    for name, value in (("rows_per_shard", rows_per_shard), ("rows_per_group", rows_per_group)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}: expected an int >= 1, got {value!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(out_dir)
    check_output(out, "--out", folder=True, inputs=[root])    # a pack inside its folder would be packed next time
    _check_replaceable(out, overwrite)
    rows, metadata = _layout_rows(Path(root), layout, convention, recursive, object_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = _write_shards(rows, metadata, Path(root), staging, rows_per_shard, rows_per_group)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / name for name in names]


def read_pack_info(path: str | Path) -> PackInfo:
    """Shards, row count, convention and object index map of a packed directory on any pyarrow filesystem."""
    root = str(path)
    store = open_store(root)
    names = ()
    if store.kind() == "dir":
        names = tuple(entry.path for entry in store.entries(recursive=False)
                      if not entry.is_dir and _SHARD_NAME.fullmatch(entry.path))
    if not names:
        raise InputError(f"{root}: expected a directory of '{SHARD_GLOB}' shards written by pack_folder")
    info = PackInfo(root=root, names=names, num_rows=0, convention=LabelConvention.NONE, object_index={})
    metadata = info.open(0).schema_arrow.metadata or {}
    if _META_CONVENTION not in metadata or _META_OBJECT_INDEX not in metadata:
        raise InputError(f"{info.shards[0]}: expected raytopo pack metadata (raytopo.convention, raytopo.object_index)")
    return replace(
        info,
        num_rows=sum(info.open(i).metadata.num_rows for i in range(len(names))),
        convention=as_convention(metadata[_META_CONVENTION].decode()),
        object_index={str(k): int(v) for k, v in json.loads(metadata[_META_OBJECT_INDEX]).items()},
        class_names=tuple(json.loads(metadata.get(_META_CLASS_NAMES, b"[]"))),
    )


def decode_rows(batch: Mapping[str, Any] | pa.Table, image_size: int, channels: int = 1) -> dict[str, np.ndarray]:
    """Decode a batch of packed rows: ``image`` float32 ``[N, C, S, S]`` in [-1, 1], and whichever labels the
    rows carry: ``counts`` float32 ``[N, k]``, ``object`` int64 ``[N]``, ``label`` int64 ``[N]``, ``mask`` float32
    ``[N, 1, S, S]`` in {-1, 1}.

    ``batch`` is a pyarrow Table or a dict of column arrays (Ray Data's ``"numpy"`` batch format). Images are
    preprocessed exactly as :class:`~raytopo.data.folder.ImageFolderDataset` does.

    Raises:
        InputError: a missing column, an undecodable image (named by ``filename``), ragged counts, or an
            ``object`` column with only some values missing.
    """
    from raytopo.data.layouts import decode_mask

    columns = _columns(batch)
    images = columns["image"]
    names = columns.get("filename") or [f"row {i}" for i in range(len(images))]
    decoded = [decode_image(_as_bytes(data), image_size, channels, str(name)) for data, name in zip(images, names)]
    out = {"image": np.stack(decoded) if decoded else np.zeros((0, channels, image_size, image_size), np.float32)}
    out.update(_labels(columns, names))
    masks = columns.get("mask")
    if masks is not None and _filled(masks, names, "mask"):
        out["mask"] = np.stack([decode_mask(_as_bytes(data), image_size, f"{name} (mask)")
                                for data, name in zip(masks, names)])
    return out


def _labels(columns: Mapping[str, list], names: list) -> dict[str, np.ndarray]:
    """The label columns a batch of rows carries: ``counts`` float32 [N, k], ``object`` / ``label`` int64 [N]."""
    out = {}
    counts = columns.get("counts")
    if counts is not None and any(len(c) for c in counts if c is not None):
        out["counts"] = _stack_counts(counts, names)
    for key in ("object", "label"):
        values = _indices(columns.get(key), names, key)
        if values is not None:
            out[key] = values
    return out


def pack_layout(info: PackInfo) -> tuple[list[tuple[str, list[int]]], dict[str, np.ndarray], bool]:
    """Without decoding an image: every shard's row-group sizes, every row's labels and whether rows carry
    masks (the mask column is filled in every row or in none). Reads the label columns only."""
    groups, parts = [], []
    for number, name in enumerate(info.names):
        shard = info.open(number)
        metadata = shard.metadata
        groups.append((name, [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]))
        wanted = [c for c in ("counts", "object", "label", "filename") if c in shard.schema_arrow.names]
        table = shard.read(columns=wanted)
        columns = {column: table.column(column).to_pylist() for column in wanted}
        parts.append(_labels({**columns, "image": []}, [f"{info.shards[number]} ({n})" for n in columns["filename"]]))
    keys = set.intersection(*(set(part) for part in parts)) if parts else set()
    labels = {key: np.concatenate([part[key] for part in parts]) for key in keys}
    return groups, labels, pack_has_masks(info)


def pack_has_masks(info: PackInfo) -> bool:
    """Whether a pack's rows carry masks (``--layout image_mask``): its first row has a ``mask`` value."""
    if "mask" not in info.columns:   # format 1 packs have no mask column
        return False
    shard = info.open(0)
    if shard.metadata.num_row_groups == 0:
        return False
    first = shard.read_row_group(0, columns=["mask"]).column("mask")
    return len(first) > 0 and first[0].is_valid


def read_parquet_dataset(path: str | Path) -> ray.data.Dataset:
    """A Ray Dataset over the shards of a packed directory (undecoded rows; decode with ``map_batches``).

    Example: ``read_parquet_dataset(p).map_batches(decode_rows, fn_kwargs={"image_size": 64, "channels": 1},
    batch_format="numpy")``.
    """
    info = read_pack_info(path)
    import ray.data  # lazy: the rest of this module works without Ray

    return ray.data.read_parquet(list(info.shards))


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: expected a directory for parquet shards, found a file")
    if not out.is_dir():
        return
    entries = sorted(out.iterdir())
    if entries and not overwrite:
        raise InputError(f"{out}: expected a missing or empty directory (pass --overwrite to replace its shards)")
    foreign = [e.name for e in entries if not (e.is_file() and _SHARD_NAME.fullmatch(e.name))]
    if foreign:
        raise InputError(
            f"{out}: expected only '{SHARD_GLOB}' shards in a directory to overwrite, found {foreign[0]!r}; "
            "refusing to delete it"
        )


def _layout_rows(root: Path, layout: str, convention: LabelConvention | str, recursive: bool,
                 object_index: Mapping[str, int] | None) -> tuple[list[dict[str, Any]], dict[bytes, bytes]]:
    """Every row's sources (``image`` path, and ``counts``/``object_name``/``object``/``label``/``mask``), and the
    pack metadata, for one folder layout. Labels are parsed and pairs matched here, before anything is written."""
    from raytopo.data.layouts import pair_images_and_masks, scan_class_folders

    class_names: tuple[str, ...] = ()
    if layout == "names":
        index = scan_folder(root, convention, recursive, object_index)
        rows = [{"image": path, "counts": list(label.counts), "object_name": label.object_name,
                 "object": None if label.object_name is None else index.object_index[label.object_name]}
                for path, label in zip(index.files, index.labels)]
        convention, objects = index.convention, index.object_index
    elif layout == "class_folder":
        classes = scan_class_folders(root)
        rows = [{"image": path, "label": label} for path, label in zip(classes.files, classes.labels)]
        convention, objects, class_names = LabelConvention.NONE, {}, classes.class_names
    else:
        pairs = pair_images_and_masks(root)
        _check_pair_sizes(pairs)
        rows = [{"image": image, "mask": mask} for image, mask in pairs]
        convention, objects = LabelConvention.NONE, {}
    metadata = {
        _META_CONVENTION: as_convention(convention).value.encode(),
        _META_OBJECT_INDEX: json.dumps(objects, sort_keys=True).encode(),
        _META_CLASS_NAMES: json.dumps(list(class_names)).encode(),
        _META_VERSION: FORMAT_VERSION.encode(),
    }
    return rows, metadata


def _check_pair_sizes(pairs: list[tuple[Path, Path]]) -> None:
    """Every mask has its image's size (read from the file headers), so a pack never holds a pair training
    would refuse."""
    from PIL import Image

    for image, mask in pairs:
        try:
            with Image.open(image) as first, Image.open(mask) as second:
                size, mask_size = first.size, second.size
        except (OSError, ValueError) as error:
            raise InputError(f"{image}: expected a readable image and mask pair ({error})") from None
        if size != mask_size:
            raise InputError(f"{mask}: the mask is {mask_size[0]}x{mask_size[1]} but its image {image.name} is "
                             f"{size[0]}x{size[1]}; expected the same size")


def _write_shards(rows: list[dict[str, Any]], metadata: dict[bytes, bytes], root: Path, staging: Path,
                  rows_per_shard: int, rows_per_group: int) -> list[str]:
    schema = SCHEMA.with_metadata(metadata)
    names = []
    for start in progress(range(0, len(rows), rows_per_shard), f"packing {root}", "shard"):
        name = f"part-{len(names):05d}.parquet"
        pq.write_table(_shard_table(rows[start:start + rows_per_shard], root, schema), staging / name,
                       row_group_size=rows_per_group)
        names.append(name)
    return names


def _shard_table(rows: list[dict[str, Any]], root: Path, schema: pa.Schema) -> pa.Table:
    return pa.table(
        {
            "image": [_png_bytes(row["image"]) for row in rows],
            "counts": [row.get("counts", []) for row in rows],
            "object_name": [row.get("object_name") for row in rows],
            "object": [row.get("object") for row in rows],
            "label": [row.get("label") for row in rows],
            "mask": [_png_bytes(row["mask"]) if "mask" in row else None for row in rows],
            "filename": [row["image"].relative_to(root).as_posix() for row in rows],
        },
        schema=schema,
    )


def _png_bytes(path: Path) -> bytes:
    """The file's bytes if it is a PNG, else its pixels re-encoded as PNG (lossless); decoded either way."""
    data = read_image_bytes(path)
    image = open_image(data, str(path))
    if data.startswith(_PNG_SIGNATURE) and image.format == "PNG":
        return data
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB" if len(image.getbands()) >= 3 else "L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` (already checked) is moved aside, then deleted."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _columns(batch: Mapping[str, Any] | pa.Table) -> dict[str, list]:
    if isinstance(batch, pa.Table):
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
    else:
        columns = {name: list(values) for name, values in batch.items()}
    if "image" not in columns:
        raise InputError(f"batch: expected an 'image' column (rows written by pack_folder), got {sorted(columns)}")
    return columns


def _as_bytes(data: Any) -> bytes:
    return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)


def _stack_counts(counts: list, names: list) -> np.ndarray:
    rows = [np.asarray(c, dtype=np.float32).reshape(-1) for c in counts]
    lengths = {row.shape[0] for row in rows}
    if len(lengths) > 1:
        raise InputError(f"{names[0]}: expected the same number of counts in every row, got lengths {sorted(lengths)}")
    return np.stack(rows) if rows else np.zeros((0, 1), np.float32)


def _filled(values: list, names: list, key: str) -> bool:
    """True when every row has a value, False when none has; InputError naming the first gap otherwise."""
    missing = [v is None or (isinstance(v, float) and np.isnan(v)) for v in values]
    if all(missing):
        return False
    if any(missing):
        raise InputError(f"{names[missing.index(True)]}: expected a {key!r} value in every row of the batch, found none")
    return True


def _indices(values: list | None, names: list, key: str) -> np.ndarray | None:
    """An int64 column (``object``, ``label``) when the rows carry it, else None."""
    if values is None or not _filled(values, names, key):
        return None
    return np.asarray(values, dtype=np.int64)
