"""The ``data:`` section of a run config: where training images come from (plain dataclass, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raytopo.data.source_registry import get_source
from raytopo.errors import ConfigError

COUNT_CONVENTIONS = ("count", "two_counts", "count_object")


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from. Generated sources need no files at all:

    * ``shapes``: masks with exact component/hole counts (TDN; ``shapes_dim``, ``min_count``, ``max_count``);
    * ``glyphs``: asymmetric glyphs whose distribution is invariant under ``group`` (equivariant diffusion);
    * ``garments``: FashionMNIST-like grey images in 10 classes (TopoVAE);
    * ``objects``: RGB textured objects on a textured background (``channels: 3``), with exact masks (the
      ``shapes`` masks of the same settings), their ``counts`` and 4 classes (latent diffusion, ControlNet);
    * ``folder``: an image folder, labelled by file name (``convention``; ``none`` = unlabelled);
    * ``class_folder``: ``path/<class>/*.png``, class labels from the sub-folders (sorted names);
    * ``image_mask``: ``path/images`` + ``path/masks`` pairs, masks resized nearest-neighbour, in {-1, 1};
    * ``npy``: one ``.npy`` array of images ``[N,H,W]``, ``[N,C,H,W]`` or ``[N,H,W,C]`` (uint8 0..255 or float
      in [0, 1]), with optional integer class labels in ``labels_path``;
    * ``parquet``: shards written by ``raytopo data pack``, streamed by Ray Data;
    * any source added with `raytopo.data.source_registry.register_source`.

    ``count_limit`` bounds the counts a label may carry (file names, parquet rows): a count of 1e20 in a file
    name is a typo, not a target, and is rejected naming the file.
    """

    source: str = "shapes"
    path: str | None = None
    convention: Literal["count", "two_counts", "count_object", "none"] = "count"
    labels_path: str | None = None
    image_size: int = 32
    channels: int = 1
    shapes_dim: Literal["0", "1", "both"] = "0"
    group: Literal["trivial", "Z2", "C4", "D4"] = "D4"
    num_images: int = 1024
    min_count: int = 1
    max_count: int = 5
    count_limit: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not get_source(self.source).generated and not self.path:
            raise ConfigError(f"data.path: required for source {self.source!r} (a folder, .npy file or parquet directory)")
        if self.labels_path and get_source(self.source).classes != "with_labels_path":
            raise ConfigError(f"data.labels_path: only used with source 'npy', got source {self.source!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels: expected 1 or 3, got {self.channels}")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size: expected >= 8, got {self.image_size}")
        if not 0 <= self.min_count <= self.max_count:
            raise ConfigError(
                f"data.min_count/max_count: expected 0 <= min_count <= max_count, got {self.min_count}, {self.max_count}"
            )
        if self.max_count > self.count_limit:
            raise ConfigError(f"data.max_count: expected <= data.count_limit ({self.count_limit}), got {self.max_count}")
        if self.num_images < 1:
            raise ConfigError(f"data.num_images: expected >= 1, got {self.num_images}")

    @property
    def has_classes(self) -> bool:
        """Whether batches carry integer class ``label`` s (what class-conditional families need)."""
        classes = get_source(self.source).classes
        if classes == "by_pack":  # a parquet pack of class folders names its classes in its metadata
            from raytopo.data.parquet import read_pack_info

            return bool(read_pack_info(self.path).class_names)
        return classes == "always" or (classes == "with_labels_path" and bool(self.labels_path))

    @property
    def has_masks(self) -> bool:
        """Whether batches carry a ``mask`` float32 ``[B, 1, S, S]`` in {-1, 1} (what mask-conditioned families
        need)."""
        masks = get_source(self.source).masks
        if masks == "by_pack":  # a pack of image + mask pairs fills its mask column
            return _pack_has_masks(self.path)
        return masks == "always"

    @property
    def has_counts(self) -> bool:
        """Whether batches carry topological ``counts`` (what count-conditioned families need)."""
        counts = get_source(self.source).counts
        return counts == "always" or (counts == "by_convention" and self.convention in COUNT_CONVENTIONS)


def _pack_has_masks(path: str | None) -> bool:
    """Whether a parquet pack's rows carry masks (``--layout image_mask``): its first row has a ``mask`` value
    (a layout fills a column in every row or in none)."""
    import pyarrow.parquet as pq

    from raytopo.data.parquet import read_pack_info

    info = read_pack_info(path)
    if "mask" not in info.columns:   # format 1 packs have no mask column
        return False
    shard = pq.ParquetFile(info.shards[0])
    if shard.metadata.num_row_groups == 0:
        return False
    first = shard.read_row_group(0, columns=["mask"]).column("mask")
    return len(first) > 0 and first[0].is_valid
