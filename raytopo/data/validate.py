"""Checks of ``.npy`` arrays and parquet packs, on the driver, before any Ray worker starts.

A bad file found inside a Ray worker costs a user a minute of start-up and a 100-line traceback; found here it
costs seconds and one line naming the file and what was expected (an `InputError`). Every check streams: a
folder is decoded one image at a time, an array is memory-mapped and scanned in chunks, parquet shards are read
one column at a time, so a large dataset is never held in memory.

The checks use the same functions the workers load with (`as_uint8_hwc`, `read_pack_info`), so what passes
here loads there; folders are checked by decoding their rows with the stream's own reader
(`raytopo.data.sources.check_files`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raytopo.data.arrays import check_image_array, load_labels, load_npy
from raytopo.data.folder import check_count_limit
from raytopo.data.labels import LabelConvention, as_convention
from raytopo.errors import InputError


def check_npy_images(path: str | Path, labels_path: str | Path | None = None) -> int:
    """The array's layout, dtype and values (memory-mapped, chunked) and its labels; returns the image count."""
    images = load_npy(path, "images", mmap=True)
    check_image_array(images, str(path))
    if labels_path:
        load_labels(labels_path, len(images))
    return len(images)


def check_parquet_pack(path: str | Path, convention: LabelConvention | str, count_limit: float) -> int:
    """The pack's metadata and schema, its convention against ``convention``, and every count's bound."""
    import pyarrow.compute as pc

    from raytopo.data.parquet import SCHEMA, read_pack_info

    info = read_pack_info(path)
    wanted = as_convention(convention)
    if wanted is not LabelConvention.NONE and info.convention is not wanted:
        raise InputError(f"{path}: expected a pack of {wanted.value!r} labels (data.convention), "
                         f"got {info.convention.value!r}")
    required = ("image", "counts") if wanted is not LabelConvention.NONE else ("image",)
    for number, shard in enumerate(info.shards):
        schema = info.open(number).schema_arrow
        for name in required + tuple(n for n in ("label", "mask") if n in schema.names):
            if schema.get_field_index(name) < 0 or schema.field(name).type != SCHEMA.field(name).type:
                raise InputError(f"{shard}: expected a column {name!r} of type {SCHEMA.field(name).type}")
        if "counts" not in schema.names:
            continue
        table = info.open(number).read(columns=["counts", "filename"])
        flat = pc.list_flatten(table.column("counts"))
        if len(flat) and pc.max(flat).as_py() > count_limit:
            row = int(np.argmax([max(c) if c else 0 for c in table.column("counts").to_pylist()]))
            check_count_limit(table.column("counts")[row].as_py(), count_limit,
                              f"{shard} row {row} ({table.column('filename')[row].as_py()})")
    return info.num_rows
