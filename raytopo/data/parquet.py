"""Pack an image folder into parquet shards for Ray Data, and decode those rows for training.

Shards are ``part-00000.parquet``, ``part-00001.parquet``, ... with one row per image:

| column        | type           | content                                                            |
|---------------|----------------|--------------------------------------------------------------------|
| ``image``     | binary         | PNG bytes: copied if the file is a PNG, else re-encoded losslessly  |
| ``counts``    | list<float32>  | the file-name counts (1, or 2 for ``two_counts``)                  |
| ``object_name``| string, null  | object name (``count_object`` only)                                |
| ``object``    | int64, null    | its index in the object index map (``count_object`` only)          |
| ``filename``  | string         | path relative to the packed folder (POSIX separators)              |

The schema metadata holds ``raytopo.convention``, ``raytopo.object_index`` (JSON) and
``raytopo.format_version``; :func:`read_pack_info` reads them back. Packing is all-or-nothing: every
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytopo.data.folder import FolderIndex, decode_image, open_image, scan_folder
from raytopo.data.labels import LabelConvention, as_convention
from raytopo.errors import ConfigError, InputError
from raytopo.progress import progress

if TYPE_CHECKING:
    import ray.data

FORMAT_VERSION = "1"
SHARD_GLOB = "part-*.parquet"
_SHARD_NAME = re.compile(r"part-\d{5,}\.parquet")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_META_CONVENTION = b"raytopo.convention"
_META_OBJECT_INDEX = b"raytopo.object_index"
_META_VERSION = b"raytopo.format_version"
SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("counts", pa.list_(pa.float32())),
        ("object_name", pa.string()),
        ("object", pa.int64()),
        ("filename", pa.string()),
    ]
)


@dataclass(frozen=True)
class PackInfo:
    """What a packed directory holds: shard paths, row count, label convention and object index map."""

    shards: tuple[Path, ...]
    num_rows: int
    convention: LabelConvention
    object_index: dict[str, int]


def pack_folder(
    root: str | Path,
    out_dir: str | Path,
    convention: LabelConvention | str,
    rows_per_shard: int = 1024,
    overwrite: bool = False,
    recursive: bool = True,
    object_index: Mapping[str, int] | None = None,
) -> list[Path]:
    """Pack the labelled images under ``root`` into parquet shards in ``out_dir``; return the shard paths.

    Args:
        root: image folder (file-name labels, see :mod:`raytopo.data.labels`).
        out_dir: output directory; must be missing or empty unless ``overwrite``.
        convention: file-name label convention.
        rows_per_shard: images per shard.
        overwrite: replace an existing ``out_dir`` that holds only ``part-*.parquet`` shards.
        recursive: include sub-folders of ``root``.
        object_index: fixed object name -> index map (default: sorted names found under ``root``).

    Raises:
        ConfigError: ``rows_per_shard`` < 1.
        InputError: bad folder, file name or image (named), or an ``out_dir`` that may not be replaced.
    """
    if not isinstance(rows_per_shard, int) or isinstance(rows_per_shard, bool) or rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard: expected an int >= 1, got {rows_per_shard!r}")
    out = Path(out_dir)
    _check_replaceable(out, overwrite)
    index = scan_folder(root, convention, recursive, object_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = _write_shards(index, staging, rows_per_shard)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / name for name in names]


def read_pack_info(path: str | Path) -> PackInfo:
    """Shards, row count, convention and object index map of a packed directory (pyarrow only)."""
    path = Path(path)
    shards = tuple(sorted(path.glob(SHARD_GLOB))) if path.is_dir() else ()
    if not shards:
        raise InputError(f"{path}: expected a directory of '{SHARD_GLOB}' shards written by pack_folder")
    metadata = pq.read_schema(shards[0]).metadata or {}
    if _META_CONVENTION not in metadata or _META_OBJECT_INDEX not in metadata:
        raise InputError(f"{shards[0]}: expected raytopo pack metadata (raytopo.convention, raytopo.object_index)")
    num_rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    return PackInfo(
        shards=shards,
        num_rows=num_rows,
        convention=as_convention(metadata[_META_CONVENTION].decode()),
        object_index={str(k): int(v) for k, v in json.loads(metadata[_META_OBJECT_INDEX]).items()},
    )


def decode_rows(batch: Mapping[str, Any] | pa.Table, image_size: int, channels: int = 1) -> dict[str, np.ndarray]:
    """Decode a batch of packed rows: ``image`` float32 ``[N, C, S, S]`` in [-1, 1], ``counts`` float32 ``[N, k]``,
    and ``object`` int64 ``[N]`` when the rows carry object indices.

    ``batch`` is a pyarrow Table or a dict of column arrays (Ray Data's ``"numpy"`` batch format). Images are
    preprocessed exactly as :class:`~raytopo.data.folder.ImageFolderDataset` does.

    Raises:
        InputError: a missing column, an undecodable image (named by ``filename``), ragged counts, or an
            ``object`` column with only some values missing.
    """
    columns = _columns(batch)
    images, counts = columns["image"], columns["counts"]
    names = columns.get("filename") or [f"row {i}" for i in range(len(images))]
    decoded = [decode_image(_as_bytes(data), image_size, channels, str(name)) for data, name in zip(images, names)]
    out = {
        "image": np.stack(decoded) if decoded else np.zeros((0, channels, image_size, image_size), np.float32),
        "counts": _stack_counts(counts, names),
    }
    objects = _objects(columns.get("object"), names)
    if objects is not None:
        out["object"] = objects
    return out


def read_parquet_dataset(path: str | Path) -> ray.data.Dataset:
    """A Ray Dataset over the shards of a packed directory (undecoded rows; decode with ``map_batches``).

    Example: ``read_parquet_dataset(p).map_batches(decode_rows, fn_kwargs={"image_size": 64, "channels": 1},
    batch_format="numpy")``.
    """
    info = read_pack_info(path)
    import ray.data  # lazy: the rest of this module works without Ray

    return ray.data.read_parquet([str(shard) for shard in info.shards])


def training_dataset(data: Any) -> ray.data.Dataset:
    """The Ray Data dataset a ``parquet`` source trains from (``data``: a DataConfig), decoded on the Ray Data
    workers with `decode_rows`."""
    return read_parquet_dataset(data.path).map_batches(
        decode_rows, fn_kwargs={"image_size": data.image_size, "channels": data.channels}, batch_format="pyarrow"
    )


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


def _write_shards(index: FolderIndex, staging: Path, rows_per_shard: int) -> list[str]:
    metadata = {
        _META_CONVENTION: index.convention.value.encode(),
        _META_OBJECT_INDEX: json.dumps(index.object_index, sort_keys=True).encode(),
        _META_VERSION: FORMAT_VERSION.encode(),
    }
    schema = SCHEMA.with_metadata(metadata)
    names = []
    for start in progress(range(0, len(index.files), rows_per_shard), f"packing {index.root}", "shard"):
        rows = range(start, min(start + rows_per_shard, len(index.files)))
        name = f"part-{len(names):05d}.parquet"
        pq.write_table(_shard_table(index, rows, schema), staging / name)
        names.append(name)
    return names


def _shard_table(index: FolderIndex, rows: Sequence[int], schema: pa.Schema) -> pa.Table:
    labels = [index.labels[i] for i in rows]
    object_names = [label.object_name for label in labels]
    return pa.table(
        {
            "image": [_png_bytes(index.files[i]) for i in rows],
            "counts": [list(label.counts) for label in labels],
            "object_name": object_names,
            "object": [None if n is None else index.object_index[n] for n in object_names],
            "filename": [index.files[i].relative_to(index.root).as_posix() for i in rows],
        },
        schema=schema,
    )


def _png_bytes(path: Path) -> bytes:
    """The file's bytes if it is a PNG, else its pixels re-encoded as PNG (lossless); decoded either way."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: expected a readable image file ({error.strerror})") from None
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
    for required in ("image", "counts"):
        if required not in columns:
            raise InputError(
                f"batch: expected an {required!r} column (rows written by pack_folder), got {sorted(columns)}"
            )
    return columns


def _as_bytes(data: Any) -> bytes:
    return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)


def _stack_counts(counts: list, names: list) -> np.ndarray:
    rows = [np.asarray(c, dtype=np.float32).reshape(-1) for c in counts]
    lengths = {row.shape[0] for row in rows}
    if len(lengths) > 1:
        raise InputError(f"{names[0]}: expected the same number of counts in every row, got lengths {sorted(lengths)}")
    return np.stack(rows) if rows else np.zeros((0, 1), np.float32)


def _objects(values: list | None, names: list) -> np.ndarray | None:
    if values is None:
        return None
    missing = [v is None or (isinstance(v, float) and np.isnan(v)) for v in values]
    if all(missing):
        return None
    if any(missing):
        first = names[missing.index(True)]
        raise InputError(f"{first}: expected an object index in every row of the batch, found none")
    return np.asarray(values, dtype=np.int64)
