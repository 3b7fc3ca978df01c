"""Data: synthetic Shapes masks, file-name labels, image folders, parquet packs, and the rows and splits that
training reads (Ray-free except :func:`read_parquet_dataset`).

Names are imported on first use, so a Ray Data read task that needs only `raytopo.data.rows` does not pay for
torch or the generators.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FolderIndex": "folder", "ImageFolderDataset": "folder", "decode_image": "folder", "preprocess_image": "folder",
    "scan_folder": "folder", "Label": "labels", "LabelConvention": "labels", "as_convention": "labels",
    "object_index_map": "labels", "parse_label": "labels", "PackInfo": "parquet", "decode_rows": "parquet",
    "pack_folder": "parquet", "read_pack_info": "parquet", "read_parquet_dataset": "parquet",
    "SHAPE_KINDS": "shapes", "ShapesConfig": "shapes", "generate_shape_mask": "shapes", "shape_example": "shapes",
    "write_shapes_dataset": "shapes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raytopo.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raytopo.data.{_EXPORTS[name]}"), name)
