"""`raytopo data shapes ...` (synthetic masks), `raytopo data pack DIR --out PARQUET_DIR` and
`raytopo data inspect CONFIG` (what training will see, without training)."""

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
    rows_per_group: int = 16


@dataclass(frozen=True)
class InspectArgs:
    config: Path
    overrides: tuple[str, ...] = ()
    batches: int = 4
    rank: int = 0
    world: int | None = None
    resume_step: int = 0
    split: str | None = None
    json: bool = False


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
                         overwrite=args.overwrite, layout=args.layout, rows_per_group=args.rows_per_group)
    print(f"wrote {len(shards)} parquet shard(s) to {args.out}")
    return 0


def run_inspect(args: InspectArgs) -> int:
    """Print the split sizes and the first ``args.batches`` batches of one worker (ids and labels), or one
    split's row ids; computed from the data's index and the seeded schedule, no image is decoded and no Ray
    starts."""
    import json

    from raytopo.train.config import load_run_config

    run = load_run_config(args.config, args.overrides)
    world = args.world or max(1, run.ray.num_workers)
    if not 0 <= args.rank < world:
        from raytopo.errors import InputError

        raise InputError(f"--rank: expected 0 <= rank < {world} (--world), got {args.rank}")
    report = (split_report(run.data, args.split) if args.split else
              batch_report(run.data, run.train.batch_size, run.train.seed, args.rank, world, args.resume_step,
                           args.batches))
    print(json.dumps(report) if args.json else _text(run.data, report, args, world))
    return 0


def split_sizes(data) -> dict[str, int | None]:
    """Rows per split; None for a generated source's eval and judge images (fresh draws, made on demand)."""
    from raytopo.data.source_registry import get_source
    from raytopo.data.sources import file_data

    if get_source(data.source).generated:
        return {"train": data.num_images, "eval": None, "judge": None}
    return file_data(data).sizes()


def split_report(data, name: str) -> dict:
    """``{"split": name, "ids": [...]}``: the row ids of one split of a file data set."""
    from raytopo.data.source_registry import get_source
    from raytopo.data.sources import file_data
    from raytopo.errors import InputError

    if get_source(data.source).generated:
        raise InputError(f"--split {name}: source {data.source!r} has no rows to list; its eval and judge images "
                         "are drawn on demand from their own seeds (data.seed + an offset)")
    index, rows = file_data(data).rows(name)
    return {"split": name, "ids": [index.ids[r] for r in rows]}


def batch_report(data, batch_size: int, seed: int, rank: int, world: int, step: int, count: int) -> dict:
    """``{"splits": {...}, "batches": [{"step", "epoch", "ids", "labels"}, ...]}`` of rank ``rank``'s first
    ``count`` batches from step ``step`` (where a resume at that step starts)."""
    from raytopo.train.data import training_schedule

    schedule, index = training_schedule(data, seed, world)
    labels = _generated_labels(data) if index is None else None
    position = schedule.position_at_step(step, batch_size)
    batches = schedule.batches(rank, batch_size, position)
    out = []
    for number in range(count):
        after, rows = next(batches)
        if index is None:
            ids, names = [str(r) for r in rows], [labels(r) for r in rows]
        else:
            ids, names = [index.ids[r] for r in rows], [index.label_of(r) for r in rows]
        out.append({"step": step + number + 1, "epoch": after.epoch, "ids": ids, "labels": names})
    return {"splits": split_sizes(data), "order": schedule.mode, "batches": out}


def _generated_labels(data):
    from raytopo.data.sources import training_arrays

    arrays = training_arrays(data)
    if "counts" in arrays:
        return lambda row: [int(c) for c in arrays["counts"][row]]
    if "label" in arrays:
        return lambda row: int(arrays["label"][row])
    return lambda row: None


def _text(data, report: dict, args: InspectArgs, world: int) -> str:
    from collections import Counter

    if "split" in report:
        return "\n".join([f"{report['split']}: {len(report['ids'])} rows", *report["ids"]])
    sizes = report["splits"]
    shown = ", ".join(f"{name} {'drawn on demand' if size is None else size}" for name, size in sizes.items())
    order = {"full": "a fresh permutation every epoch",
             "blocks": f"row groups in a fresh order every epoch, through a buffer of {data.shuffle_buffer} rows"}
    lines = [f"data: {data.source} {data.path or ''} ({shown})".replace("  ", " "),
             f"order: {order[report['order']]} (train.seed); worker {args.rank} of {world}"]
    for batch in report["batches"]:
        histogram = Counter(str(label) for label in batch["labels"])
        counts = ", ".join(f"{label}: {n}" for label, n in sorted(histogram.items()))
        lines.append(f"step {batch['step']} (epoch {batch['epoch']}): labels {{{counts}}}")
        lines.append("  " + " ".join(batch["ids"]))
    return "\n".join(lines)
