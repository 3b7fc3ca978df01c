"""Data: synthetic Shapes masks, file-name labels, image folders and parquet shards for Ray Data.

Everything here but :func:`read_parquet_dataset` is Ray-free (numpy, PIL, torch, pyarrow).
"""

from raytopo.data.folder import FolderIndex, ImageFolderDataset, decode_image, preprocess_image, scan_folder
from raytopo.data.labels import Label, LabelConvention, as_convention, object_index_map, parse_label
from raytopo.data.parquet import PackInfo, decode_rows, pack_folder, read_pack_info, read_parquet_dataset
from raytopo.data.shapes import SHAPE_KINDS, ShapesConfig, generate_shape_mask, shape_example, write_shapes_dataset

__all__ = [
    "SHAPE_KINDS",
    "FolderIndex",
    "ImageFolderDataset",
    "Label",
    "LabelConvention",
    "PackInfo",
    "ShapesConfig",
    "as_convention",
    "decode_image",
    "decode_rows",
    "generate_shape_mask",
    "object_index_map",
    "pack_folder",
    "parse_label",
    "preprocess_image",
    "read_pack_info",
    "read_parquet_dataset",
    "scan_folder",
    "shape_example",
    "write_shapes_dataset",
]
