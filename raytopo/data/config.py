"""The ``data:`` section of a run config: where training images come from (plain dataclass, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from raytopo.config import AtLeastOne, Bounds, Checked, NonNegativeInt, Positive
from raytopo.data.augment import AugmentConfig
from raytopo.data.source_registry import get_source
from raytopo.errors import ConfigError

COUNT_CONVENTIONS = ("count", "two_counts", "count_object")
DEFAULT_HELD_OUT_FRACTION = 0.1
"""The eval and judge fraction of a file data set whose config gives none and whose family uses that split."""
IN_MEMORY_MAX_BYTES = 512 * 2**20
"""A file data set whose training rows decode to more bytes (uint8 pixels, masks included) streams."""
RESUMABLE_FIELDS = ("max_bad_files", "reader_cpus", "trace_rows")
"""``data`` settings a resumed run may change (they do not change which rows train or how)."""


@dataclass(frozen=True)
class DataConfig(Checked):
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

    File sources (docs/data.md):

    * **splits** (`raytopo.data.splits`): ``eval_path`` (a second data set of the same kind, all of it for
      evaluation) or ``eval_fraction`` of ``path``, and ``judge_fraction`` of ``path`` for the judges; disjoint
      by construction, seeded by ``seed``. ``None``: the family's default (0.1 of each split it uses, 0 else);
    * **streaming**: a set whose training rows decode to more than ``in_memory_max_bytes`` (uint8 pixels, masks
      included), or that asks for a crop, streams through Ray Data: each worker reads its own rows on Ray Data's
      CPU tasks (``reader_cpus`` each), never the whole set. Smaller sets are decoded once per worker;
    * **order**: every epoch is reshuffled from (``train.seed``, epoch): a full permutation, or for a streamed
      parquet pack its row groups in random order through a ``shuffle_buffer`` of rows;
    * ``augment``: flips, quarter turns, random resized crops (`raytopo.data.augment`), as the family allows;
    * ``max_bad_files``: unreadable files a stream skips (counted in the log) before it stops, naming the file;
    * ``trace_rows``: every rank appends the ids of each step's rows to ``<run>/data_trace/rank-<r>.jsonl``.
    """

    config_path = "data"

    source: str = "shapes"
    path: str | None = None
    convention: Literal["count", "two_counts", "count_object", "none"] = "count"
    labels_path: str | None = None
    image_size: Annotated[int, Bounds(ge=8)] = 32
    channels: int = 1
    shapes_dim: Literal["0", "1", "both"] = "0"
    group: Literal["trivial", "Z2", "C4", "D4"] = "D4"
    num_images: AtLeastOne = 1024
    min_count: NonNegativeInt = 1
    max_count: NonNegativeInt = 5
    count_limit: NonNegativeInt = 100
    seed: NonNegativeInt = 0
    eval_path: str | None = None
    eval_fraction: Annotated[float, Bounds(ge=0, lt=1)] | None = None
    judge_fraction: Annotated[float, Bounds(ge=0, lt=1)] | None = None
    in_memory_max_bytes: NonNegativeInt = IN_MEMORY_MAX_BYTES
    shuffle_buffer: NonNegativeInt = 4096
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_bad_files: NonNegativeInt = 0
    reader_cpus: Positive = 1.0
    trace_rows: bool = False

    def __post_init__(self) -> None:
        if not get_source(self.source).generated and not self.path:
            raise ConfigError(f"data.path: required for source {self.source!r} (a folder, .npy file or parquet directory)")
        if self.labels_path and get_source(self.source).classes != "with_labels_path":
            raise ConfigError(f"data.labels_path: only used with source 'npy', got source {self.source!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels: expected 1 or 3, got {self.channels}")
        if self.min_count > self.max_count:
            raise ConfigError(
                f"data.min_count/max_count: expected 0 <= min_count <= max_count, got {self.min_count}, {self.max_count}"
            )
        if self.max_count > self.count_limit:
            raise ConfigError(f"data.max_count: expected <= data.count_limit ({self.count_limit}), got {self.max_count}")
        if self.eval_path and self.eval_fraction:
            raise ConfigError("data.eval_fraction: expected 0 or null with data.eval_path (the evaluation rows "
                              f"are all of {self.eval_path}), got {self.eval_fraction}")
        if self.eval_path and get_source(self.source).generated:
            raise ConfigError(f"data.eval_path: only for file sources; source {self.source!r} draws its own "
                              "held-out images")
        if self.augment.crop is not None and get_source(self.source).generated:
            raise ConfigError(f"data.augment.crop: only for file sources; source {self.source!r} makes its "
                              "images at data.image_size, so there is nothing to crop")

    def held_out_fractions(self) -> tuple[float, float]:
        """``(eval_fraction, judge_fraction)`` with unset ones at `DEFAULT_HELD_OUT_FRACTION` (a run config sets
        them from its family, `raytopo.train.config.parse_run_config`)."""
        return tuple(DEFAULT_HELD_OUT_FRACTION if value is None else value  # type: ignore[return-value]
                     for value in (0.0 if self.eval_path else self.eval_fraction, self.judge_fraction))

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
    """Whether a parquet pack's rows carry masks (``--layout image_mask``)."""
    from raytopo.data.parquet import pack_has_masks, read_pack_info

    return pack_has_masks(read_pack_info(path))
