"""`raytopo data shapes ...` (synthetic masks) and `raytopo data pack DIR --out PARQUET_DIR`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShapesArgs:
    dim: str
    n: int
    size: int
    max_count: int
    min_count: int
    objects: bool
    seed: int
    out: Path


@dataclass(frozen=True)
class PackArgs:
    folder: Path
    out: Path
    convention: str
    rows_per_shard: int
    overwrite: bool
    layout: str = "names"


def run_shapes(args: ShapesArgs) -> int:
    from raytopo.data.shapes import ShapesConfig, write_shapes_dataset

    config = ShapesConfig(dim=args.dim, size=args.size, max_count=args.max_count, min_count=args.min_count,
                          objects=args.objects, seed=args.seed)
    paths = write_shapes_dataset(config, args.n, args.out)
    print(f"wrote {len(paths)} masks to {args.out}")
    return 0


def run_pack(args: PackArgs) -> int:
    from raytopo.data.parquet import pack_folder

    shards = pack_folder(args.folder, args.out, args.convention, rows_per_shard=args.rows_per_shard,
                         overwrite=args.overwrite, layout=args.layout)
    print(f"wrote {len(shards)} parquet shard(s) to {args.out}")
    return 0
