"""`raytopo sample CHECKPOINT --counts 1,2,3 --per-count N`: masks named by target count, plus ``grid/grid.png``."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from raytopo.errors import InputError
from raytopo.train.loading import load_model_for_sampling

if TYPE_CHECKING:
    from raytopo.families.sampling import SamplerSettings


@dataclass(frozen=True)
class SampleArgs:
    checkpoint: Path
    counts: str | None
    per_count: int
    out: Path
    sampler: str = "ddim"
    steps: int = 50
    eta: float | None = None  # None: the sampler's default (ddim 0, euler_ancestral 1)
    seed: int = 0
    batch_size: int = 16
    schedule: str = "default"
    rho: float = 7.0
    overwrite: bool = False


def sampler_settings(args: Any) -> "SamplerSettings":
    """SamplerSettings from parsed flags (``sampler``, ``steps``, ``eta``, ``seed``, ``schedule``, ``rho``)."""
    from raytopo.families.sampling import SamplerSettings

    return SamplerSettings(name=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed,
                           schedule=args.schedule, rho=args.rho)


def parse_counts(text: str, counts_per_image: int) -> list[tuple[float, ...]]:
    """``"1,2,3"`` (one count each) or ``"2:1,3:0"`` (components:holes) into count tuples."""
    targets = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        try:
            values = tuple(float(int(v)) for v in fields)
        except ValueError:
            raise InputError(f"--counts: expected whole numbers like 1,2,3 or 2:1,3:0, got {item!r}") from None
        if len(values) != counts_per_image or min(values) < 0:
            shape = "u:v (components:holes)" if counts_per_image == 2 else "c"
            raise InputError(f"--counts: expected non-negative {shape} per target, got {item!r}")
        targets.append(values)
    if not targets:
        raise InputError("--counts: expected at least one target count")
    return targets


def run_sample(args: SampleArgs) -> int:
    for name in ("per_count", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    from raytopo.parallel.cpus import use_free_cpus

    settings = sampler_settings(args)
    check_output_folder(args.out, args.overwrite)
    use_free_cpus()
    family, run, model = load_model_for_sampling(args.checkpoint)
    conditions = family.sampling_conditions(run)
    if conditions != "counts" and args.counts is not None:
        raise InputError(f"--counts: family {run.family!r} is not conditioned on counts (it samples "
                         f"{'per class' if conditions == 'classes' else 'unconditionally'}); leave --counts out")
    if conditions == "counts":
        if args.counts is None:
            raise InputError(f"--counts: required for a model trained on counts (family {run.family!r})")
        counts_per_image = 2 if run.data.convention == "two_counts" else 1
        requested = parse_counts(args.counts, counts_per_image)
        warn_outside_training_range(requested, run.data.min_count, run.data.max_count)
        targets = [t for t in requested for _ in range(args.per_count)]
        cond = {"counts": torch.tensor(targets, dtype=torch.float32)}
    else:
        cond = family.default_conditions(run, args.per_count)   # every class per_count times, or {}
        labels = cond.get("label")
        targets = [(int(c),) for c in labels.tolist()] if labels is not None else [()] * args.per_count
    images = generate(family, run, model, cond, len(targets), settings, args.batch_size)
    if args.overwrite:
        remove_earlier_samples(args.out)
    paths = write_samples(images, targets, args.out)
    grid_path = write_grid(images, args.out)
    print(f"wrote {len(paths)} samples to {args.out} and a grid to {grid_path}")
    return 0


SAMPLE_NAME = re.compile(r"(\d+_){0,2}\d{5}\.png")


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder without ``--overwrite`` (earlier samples are never replaced
    silently, and a mix of old and new samples would be evaluated as one set)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: expected a folder, found a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out}: the folder is not empty (earlier samples?); pass --overwrite to replace "
                         "them, or choose a new folder")


def remove_earlier_samples(out: Path) -> None:
    """With ``--overwrite``: delete the files an earlier `raytopo sample` wrote there (and nothing else)."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        if path.is_file() and SAMPLE_NAME.fullmatch(path.name):
            path.unlink()
    grid = out / "grid" / "grid.png"
    if grid.is_file():
        grid.unlink()


def warn_outside_training_range(targets: list[tuple[float, ...]], low: int, high: int) -> None:
    """A warning on stderr for target counts the model never saw (it still samples them)."""
    outside = sorted({c for target in targets for c in target if not low <= c <= high})
    if outside:
        values = ", ".join(f"{c:g}" for c in outside)
        print(f"raytopo sample: warning: --counts {values} outside the range the model was trained on "
              f"({low}..{high}); its samples may not follow them", file=sys.stderr)


def write_grid(images: torch.Tensor, out: Path) -> Path:
    """All samples in one image, in ``out/grid/`` so evaluating ``out`` sees only the named masks."""
    from PIL import Image

    from raytopo.train.logging import image_grid

    path = out / "grid" / "grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images)).save(path)
    return path


def generate(family, run, model, cond: dict[str, torch.Tensor], n: int, settings, batch_size: int) -> torch.Tensor:
    """``n`` samples under ``cond``, in batches with a progress bar (`raytopo.families.base.sample_in_batches`)."""
    from raytopo.families.base import sample_in_batches

    with torch.no_grad():
        return sample_in_batches(family, model, run, n, cond, settings, batch_size, progress="sampling")


def write_samples(images: torch.Tensor, targets: list[tuple[float, ...]], out: Path) -> list[Path]:
    """PNGs named in the TDN convention (``c_xxxx.png`` / ``u_v_xxxx.png``; ``xxxx.png`` without a target)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    paths = []
    for index, (image, target) in enumerate(zip(pixels, targets)):
        name = "".join(f"{int(c)}_" for c in target) + f"{index:05d}.png"
        array = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        Image.fromarray(array).save(out / name)
        paths.append(out / name)
    return paths
