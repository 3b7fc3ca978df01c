"""Data sources by name: adding one is one `register_source` call, never an edit of the loaders or the trainer.

A source names, as ``"module:function"`` strings resolved on first use (so this module imports nothing heavy and
no import circle forms), how its rows are made and how it is checked on the driver before any Ray worker
starts. A *generated* source (``load``) makes a whole in-memory set from ``data.seed`` and needs no
``data.path``; a *file* source (``index``) lists its rows without reading their pixels
(`raytopo.data.rows.RowIndex`), which the trainer then decodes in memory or streams through Ray Data
(`raytopo.data.sources.streams`). What a source's batches carry (``counts``, class ``label`` s, ``mask`` s) is
declared here too, so the trainer asks the `DataConfig` (``has_counts``, ``has_classes``, ``has_masks``),
never a list of source names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from raytopo.errors import ConfigError


@dataclass(frozen=True)
class Source:
    load: str | None          # generated: "module:function": DataConfig -> {"image": [N, C, H, W] in [-1, 1], ...}
    check: str                # "module:function": DataConfig -> image count (None: unknown), raises on bad data
    generated: bool = False   # built from data.seed, no files
    description: str = ""
    index: str | None = None  # file sources: "module:function": (DataConfig, path) -> RowIndex
    counts: Literal["never", "always", "by_convention"] = "never"   # whether batches carry topological counts
    classes: Literal["never", "always", "with_labels_path", "by_pack"] = "never"  # whether batches carry labels
    masks: Literal["never", "always", "by_pack"] = "never"     # whether batches carry a mask [B, 1, S, S] in {-1, 1}
    class_names: str | None = None  # "module:function": DataConfig -> class names by label index (() if unnamed)


_SOURCES: dict[str, Source] = {}


def register_source(name: str, source: Source) -> None:
    """Make ``data.source: name`` valid; a source names exactly one of ``load`` (generated) and ``index`` (files)."""
    if (source.load is None) == (source.index is None):
        raise ValueError(f"source {name!r}: expected exactly one of a load function (generated sources) and an "
                         "index function (file sources)")
    _SOURCES[name] = source


def source_names() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> Source:
    """The source registered as ``name``; ConfigError listing the known ones otherwise."""
    if name not in _SOURCES:
        raise ConfigError(f"data.source: expected one of {', '.join(source_names())}, got {name!r}")
    return _SOURCES[name]


def resolve(reference: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` string names."""
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


_LOADERS = "raytopo.data.sources"
register_source("shapes", Source(f"{_LOADERS}:shapes_arrays", f"{_LOADERS}:check_shapes", generated=True,
                                 counts="always", description="masks with exact component/hole counts"))
register_source("glyphs", Source(f"{_LOADERS}:glyph_arrays", f"{_LOADERS}:check_nothing", generated=True,
                                 description="glyphs whose distribution is invariant under data.group"))
register_source("garments", Source(f"{_LOADERS}:garment_arrays", f"{_LOADERS}:check_nothing", generated=True,
                                   classes="always", class_names=f"{_LOADERS}:garment_class_names",
                                   description="FashionMNIST-like images in 10 classes"))
register_source("objects", Source(f"{_LOADERS}:objects_arrays", f"{_LOADERS}:check_objects", generated=True,
                                  counts="always", classes="always", masks="always",
                                  class_names=f"{_LOADERS}:object_class_names",
                                  description="RGB textured objects on a textured background, exact masks and classes"))
_FILES = {"load": None, "check": f"{_LOADERS}:check_files"}
register_source("folder", Source(**_FILES, index=f"{_LOADERS}:folder_index", counts="by_convention",
                                 description="images labelled by file name"))
register_source("class_folder", Source(**_FILES, index=f"{_LOADERS}:class_folder_index", classes="always",
                                       class_names=f"{_LOADERS}:class_folder_class_names",
                                       description="root/<class>/*.png, classes in sorted name order"))
register_source("image_mask", Source(**_FILES, index=f"{_LOADERS}:image_mask_index", masks="always",
                                     description="root/images + root/masks pairs (same stem or prefix_X)"))
register_source("npy", Source(None, f"{_LOADERS}:check_npy", index=f"{_LOADERS}:npy_index",
                              classes="with_labels_path", description="one .npy image array, optional labels_path"))
register_source("parquet", Source(None, f"{_LOADERS}:check_parquet", index=f"{_LOADERS}:parquet_index",
                                  counts="by_convention", classes="by_pack", masks="by_pack",
                                  class_names=f"{_LOADERS}:parquet_class_names",
                                  description="shards of raytopo data pack, read by row group"))
