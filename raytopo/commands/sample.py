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

if TYPE_CHECKING:
    from raytopo.families.sampling import SamplerSettings


@dataclass(frozen=True)
class SampleArgs:
    checkpoint: Path
    counts: str | None
    per_count: int
    out: Path
    sampler: str | None = None          # None: a flag not given (its default applies: ddim)
    steps: int | None = None            # None: 50
    eta: float | None = None            # None: the sampler's default (ddim 0, euler_ancestral 1)
    seed: int = 0
    batch_size: int = 16
    schedule: str | None = None         # None: default
    rho: float | None = None            # None: 7 (karras only)
    overwrite: bool = False
    classes: str | None = None          # class families: names (or indices) to sample, default all
    masks: Path | None = None           # mask families: a folder of masks to follow, default held-out masks
    guidance: float | None = None       # classifier-free guidance scale (default: the model's)
    conditioning_scale: float | None = None


SAMPLER_FLAGS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "schedule": "--schedule",
                 "rho": "--rho", "guidance": "--guidance", "conditioning_scale": "--conditioning-scale"}
"""SamplerSettings fields set by a flag; a flag left out is None and takes the settings' default."""


def given_sampler_flags(args: Any) -> frozenset[str]:
    """The SamplerSettings fields whose flag was given (not None)."""
    return frozenset(name for name in SAMPLER_FLAGS if getattr(args, name, None) is not None)


def sampler_settings(args: Any) -> "SamplerSettings":
    """SamplerSettings from parsed flags (``sampler``, ``steps``, ``eta``, ``seed``, ``schedule``, ``rho``,
    ``guidance``, ``conditioning_scale``; a flag left out takes the settings' default). A flag the chosen
    sampler or schedule would ignore is refused in one line."""
    from raytopo.diffusion.samplers import USES_ETA
    from raytopo.families.sampling import SamplerSettings

    given = {name: getattr(args, name) for name in given_sampler_flags(args)}
    settings = SamplerSettings(**{"name" if key == "sampler" else key: value for key, value in given.items()},
                               seed=args.seed)
    if "eta" in given and settings.name not in USES_ETA:
        raise InputError(f"--eta: sampler {settings.name!r} takes no eta (only {', '.join(sorted(USES_ETA))}); "
                         "leave it out")
    if "rho" in given and settings.schedule != "karras":
        raise InputError("--rho: only the karras schedule takes rho; add --schedule karras or leave --rho out")
    return settings


def check_sampler_flags(given: frozenset[str], *stages: tuple[Any, Any]) -> None:
    """Refuse a sampler flag that no ``(family, run)`` of the command samples with (TreeVAE reads only the seed,
    only the latent families take --guidance): it would be ignored without a word."""
    used = frozenset().union(*(family.sampler_fields for family, _ in stages))
    for name in sorted(given - used, key=list(SAMPLER_FLAGS).index):
        names = " and ".join(repr(run.family) for _, run in stages)
        reads = ", ".join(SAMPLER_FLAGS[field] for field in SAMPLER_FLAGS if field in used) or "only --seed"
        raise InputError(f"{SAMPLER_FLAGS[name]}: family {names} does not sample with it (it reads {reads}); "
                         "leave it out")


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
    """Every argument is checked against the checkpoint's config before its weights load (a refusal takes
    seconds); then sample and write the images."""
    from raytopo.train.loading import checkpoint_run

    for name in ("per_count", "batch_size", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")
    settings = sampler_settings(args)
    check_output_folder(args.out, args.overwrite, (args.checkpoint, args.masks))
    family, run = checkpoint_run(args.checkpoint)          # config only: every check below before the weights
    conditions = family.sampling_conditions(run)
    _check_flags(args, conditions, run.family)
    check_sampler_flags(given_sampler_flags(args), (family, run))
    names = family.class_names(run) if conditions == "classes" else None
    requested = class_indices(args.classes, names) if conditions == "classes" and args.classes is not None else None
    from raytopo.parallel.cpus import use_free_cpus
    from raytopo.train.loading import load_model_for_sampling

    use_free_cpus()
    family, run, model = load_model_for_sampling(args.checkpoint)
    if conditions == "counts":
        cond, targets = count_conditions(run, args.counts, args.per_count)
    elif conditions == "classes":
        cond = class_conditions(family, run, args.per_count, requested)
        targets = [(int(c),) for c in cond["label"].tolist()]
    elif conditions == "masks":
        cond = mask_conditions(family, run, args.per_count, args.masks)
        targets = [()] * len(cond["mask"])
    else:
        cond, targets = {}, [()] * args.per_count
    images = generate(family, run, model, cond, len(targets), settings, args.batch_size)
    if args.overwrite:
        remove_earlier_samples(args.out)
    if conditions == "masks":
        paths = write_mask_pairs(cond["mask"], images, args.out)
        grid_path = write_pair_grid(cond["mask"], images, args.out)
    elif conditions == "classes" and names:
        paths = write_class_samples(images, cond["label"], names, args.out)
        grid_path = write_grid(images, args.out)
    else:
        paths = write_samples(images, targets, args.out)
        grid_path = write_grid(images, args.out)
    print(f"wrote {len(paths)} samples to {args.out} and a grid to {grid_path}")
    return 0


def count_conditions(run: Any, text: str, per_count: int) -> tuple[dict[str, torch.Tensor], list[tuple[float, ...]]]:
    """``{"counts": [N, k]}`` for ``--counts`` text (each target ``per_count`` times, a warning for counts outside
    the training range) and the targets as tuples, in order."""
    counts_per_image = 2 if run.data.convention == "two_counts" else 1
    requested = parse_counts(text, counts_per_image)
    warn_outside_training_range(requested, run.data.min_count, run.data.max_count)
    targets = [t for t in requested for _ in range(per_count)]
    return {"counts": torch.tensor(targets, dtype=torch.float32)}, targets


def _check_flags(args: SampleArgs, conditions: str, family: str) -> None:
    """Flags that do not fit the model's conditions are refused, naming what the model takes."""
    how = {"counts": "per target count", "classes": "per class", "masks": "per mask", "none": "unconditionally"}
    for flag, value, needed in (("--counts", args.counts, "counts"), ("--classes", args.classes, "classes"),
                                ("--masks", args.masks, "masks")):
        if value is not None and conditions != needed:
            raise InputError(f"{flag}: family {family!r} is not conditioned on {needed} (it samples "
                             f"{how[conditions]}); leave {flag} out")
    if conditions == "counts" and args.counts is None:
        raise InputError(f"--counts: required for a model trained on counts (family {family!r})")


def class_indices(requested: str, names: tuple[str, ...] | None) -> list[int]:
    """``--classes`` (names or indices) as class indices; InputError naming an unknown class or an empty list."""
    known = list(names or ())
    indices = []
    for item in filter(None, (part.strip() for part in requested.split(","))):
        if item in known:
            indices.append(known.index(item))
        elif item.isdigit() and (not known or int(item) < len(known)):
            indices.append(int(item))
        else:
            raise InputError(f"--classes: unknown class {item!r}; known: {', '.join(known) or 'indices only'}")
    if not indices:
        raise InputError("--classes: expected at least one class name")
    return indices


def class_conditions(family: Any, run: Any, per_count: int, indices: list[int] | None) -> dict[str, torch.Tensor]:
    """``per_count`` labels of each requested class index (default every class)."""
    if indices is None:
        return family.default_conditions(run, per_count)
    count = len(family.default_conditions(run, 1)["label"])
    unknown = [i for i in indices if i >= count]
    if unknown:
        raise InputError(f"--classes: unknown class {unknown[0]}; the model knows {count} classes (0..{count - 1})")
    return {"label": torch.tensor(indices).repeat_interleave(per_count)}


def mask_conditions(family: Any, run: Any, per_count: int, folder: Path | None) -> dict[str, torch.Tensor]:
    """Masks to follow: every image in ``folder`` (resized nearest-neighbour to the model's size, binarised),
    ``per_count`` samples each; without a folder, the family's held-out masks (with their classes)."""
    if folder is None:
        cond = family.default_conditions(run, per_count)
        return {key: value for key, value in cond.items() if key in ("mask", "label")}
    from raytopo.data.layouts import read_mask_folder

    masks = torch.from_numpy(read_mask_folder(folder, run.data.image_size))
    return {"mask": masks.repeat_interleave(per_count, dim=0)}


def write_mask_pairs(masks: torch.Tensor, images: torch.Tensor, out: Path) -> list[Path]:
    """``out/masks/NNNNN.png`` (the mask followed) and ``out/images/NNNNN.png`` (the image generated for it)."""
    write_samples(masks, [()] * len(masks), out / "masks")
    return write_samples(images, [()] * len(images), out / "images")


def write_class_samples(images: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...], out: Path) -> list[Path]:
    """``out/<class>/<class>_NNNN.png``, numbered within each class (the latent-diffusion reference's layout)."""
    from PIL import Image

    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    counters: dict[int, int] = {}
    paths = []
    for image, label in zip(pixels, labels.tolist()):
        name = names[label]
        index = counters[label] = counters.get(label, -1) + 1
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        array = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        Image.fromarray(array).save(folder / f"{name}_{index:04d}.png")
        paths.append(folder / f"{name}_{index:04d}.png")
    return paths


SAMPLE_NAME = re.compile(r"(\d+_){0,2}\d{5}\.png")


def check_output_folder(out: Path, overwrite: bool, inputs: tuple[Path | str | None, ...] = ()) -> None:
    """Refuse a file, a folder inside one of the ``inputs`` (the checkpoints sampled from, a folder of masks), a
    place that cannot be written, or a non-empty folder without ``--overwrite`` (earlier samples are never
    replaced silently, and a mix of old and new samples would be evaluated as one set)."""
    from raytopo.outputs import check_output
    from raytopo.pretrained import resolve

    check_output(out, "--out", folder=True, inputs=[resolve(str(path)) for path in inputs if path is not None])
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out}: the folder is not empty (earlier samples?); pass --overwrite to replace "
                         "them, or choose a new folder")


def remove_earlier_samples(out: Path) -> None:
    """With ``--overwrite``: delete the files an earlier `raytopo sample` wrote there (and nothing else): named
    samples, ``images/`` and ``masks/`` of mask families, ``<class>/<class>_NNNN.png`` of class families."""
    if not out.is_dir():
        return
    for path in out.iterdir():
        if path.is_file() and SAMPLE_NAME.fullmatch(path.name):
            path.unlink()
        elif path.is_dir() and path.name != "grid":
            pattern = SAMPLE_NAME if path.name in ("images", "masks") else re.compile(
                re.escape(path.name) + r"_\d{4}\.png")
            for inner in path.iterdir():
                if inner.is_file() and pattern.fullmatch(inner.name):
                    inner.unlink()
            if not any(path.iterdir()):
                path.rmdir()
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


def write_grid(images: torch.Tensor, out: Path, columns: int | None = None) -> Path:
    """All samples in one image, in ``out/grid/`` so evaluating ``out`` sees only the named masks."""
    from PIL import Image

    from raytopo.train.logging import image_grid

    path = out / "grid" / "grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, columns)).save(path)
    return path


def write_pair_grid(masks: torch.Tensor, images: torch.Tensor, out: Path) -> Path:
    """Each mask beside the image made for it: mask, image, mask, image, ... in an even number of columns."""
    shown = masks.float().cpu()
    if shown.shape[-1] != images.shape[-1]:
        shown = torch.nn.functional.interpolate(shown, size=images.shape[-2:], mode="nearest")
    pairs = torch.stack([shown.expand(-1, images.shape[1], -1, -1), images.float().cpu()], dim=1).flatten(0, 1)
    return write_grid(pairs, out, columns=2 * int(np.ceil(np.sqrt(len(images)))))


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
