"""`raytopo pipeline`: counts -> mask -> image. A count model (``tdn`` or ``adm_t``) generates masks with the
requested number of objects (or holes) and a ``controlnet`` renders an image that follows each mask.

Writes ``OUT/masks/`` (the generated masks, named by target count as `raytopo sample` names them),
``OUT/images/`` (the rendered images, same names), ``OUT/grid/grid.png`` (each mask beside its image) and
``OUT/report.json``, and prints the topology of both stages:

* ``mask_accuracy``: masks whose count (components with 4-connectivity, or holes) is the target;
* ``image_accuracy``: images whose foreground, found by the segmenter raytopo trains on the ControlNet's data
  (`raytopo.eval.judges`), has the target count; ``image_to_mask_ratio`` = image / mask accuracy (how much of
  the masks' topology survives rendering);
* ``image_mask_agreement``: images whose foreground has exactly their mask's components and holes, and
  ``mask_iou`` between foreground and mask; ``segmenter_iou``: the segmenter's held-out IoU (their ceiling).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytopo.errors import InputError


@dataclass(frozen=True)
class PipelineArgs:
    masks_from: Path
    controlnet: Path
    counts: str
    per_count: int
    out: Path
    class_name: str | None
    settings: Any           # SamplerSettings of both stages
    batch_size: int = 16
    overwrite: bool = False
    sampler_flags: frozenset[str] = frozenset()   # the sampler flags given (checked against both families)


def run_pipeline(args: PipelineArgs) -> int:
    from raytopo.commands.sample import check_output_folder, check_sampler_flags, parse_counts
    from raytopo.parallel.cpus import use_free_cpus

    check_output_folder(args.out, args.overwrite, (args.masks_from, args.controlnet))
    stages = [stage_run(args.masks_from, "counts", "--masks-from", "a count model (tdn or adm_t)"),
              stage_run(args.controlnet, "masks", "--controlnet", "a controlnet checkpoint")]
    check_sampler_flags(args.sampler_flags, *stages)            # every refusal before a weight is loaded
    parse_counts(args.counts, 2 if stages[0][1].data.convention == "two_counts" else 1)
    check_class(stages[1], args.class_name)
    use_free_cpus()
    mask_stage = load_stage(args.masks_from)
    image_stage = load_stage(args.controlnet)
    masks, cond = generate_masks(mask_stage, args)
    image_size = image_stage[1].data.image_size
    label = class_label(image_stage, args.class_name, len(masks))
    images = render(image_stage, resize_nearest(masks, image_size), label, args)
    report = pipeline_report(mask_stage, image_stage, masks, images, cond["counts"])
    write_outputs(args.out, masks, images, cond["counts"], report, args.overwrite)
    for key, value in report.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(f"wrote {len(images)} masks and images to {args.out} (grid: {args.out / 'grid' / 'grid.png'})")
    return 0


def stage_run(checkpoint: Path, conditions: str, flag: str, expected: str) -> tuple[Any, Any]:
    """(family, run) of a checkpoint whose family samples under ``conditions`` (its config only)."""
    from raytopo.train.loading import checkpoint_run

    family, run = checkpoint_run(checkpoint)
    if family.sampling_conditions(run) != conditions:
        raise InputError(f"{flag} {checkpoint}: expected {expected}, got a checkpoint of family {run.family!r}")
    return family, run


def load_stage(checkpoint: Path) -> tuple[Any, Any, torch.nn.Module]:
    """(family, run, EMA model) of a checkpoint already checked by `stage_run`."""
    from raytopo.train.loading import load_model_for_sampling

    return load_model_for_sampling(checkpoint)


def check_class(stage: tuple[Any, Any], name: str | None) -> None:
    """``--class`` names one of the ControlNet's classes, or ``any``."""
    family, run = stage
    names = family.class_names(run)
    if name not in (None, "any") and name not in names:
        raise InputError(f"--class: unknown class {name!r}; known: {', '.join(names) or 'none (unconditional)'}, "
                         "or any")


def generate_masks(stage: tuple[Any, Any, torch.nn.Module], args: PipelineArgs) -> tuple[torch.Tensor, dict]:
    """``per_count`` binary masks ({-1, 1}) for every requested count, and the counts they were asked for."""
    from raytopo.commands.sample import count_conditions, generate

    family, run, model = stage
    cond, targets = count_conditions(run, args.counts, args.per_count)
    masks = generate(family, run, model, cond, len(targets), args.settings, args.batch_size)
    masks = masks[:, :1].float().cpu()
    return torch.where(masks > 0, 1.0, -1.0), cond


def resize_nearest(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Masks at the ControlNet's image size (nearest-neighbour keeps them binary)."""
    if masks.shape[-1] == size:
        return masks
    return torch.nn.functional.interpolate(masks, size=(size, size), mode="nearest")


def class_label(stage: tuple[Any, Any, torch.nn.Module], name: str | None, n: int) -> torch.Tensor:
    """The class of each rendered image: ``name`` (one of the ControlNet's classes) for all; ``any``: the null
    class (unconditional, no guidance); by default the classes in turn."""
    family, run, model = stage
    names = family.class_names(run)
    if name == "any" or (name is None and not names):
        return torch.full((n,), model.null_class)
    if name is None:
        return torch.arange(n) % len(names)
    return torch.full((n,), names.index(name))


def render(stage: tuple[Any, Any, torch.nn.Module], masks: torch.Tensor, labels: torch.Tensor,
           args: PipelineArgs) -> torch.Tensor:
    from raytopo.commands.sample import generate

    family, run, model = stage
    settings = replace(args.settings, seed=args.settings.seed + 1)   # not the masks' noise
    images = generate(family, run, model, {"mask": masks, "label": labels}, len(masks), settings, args.batch_size)
    return images.float().cpu()


def pipeline_report(mask_stage: tuple, image_stage: tuple, masks: torch.Tensor, images: torch.Tensor,
                    counts: torch.Tensor) -> dict[str, float]:
    """Topology of both stages (module docstring) for masks at the count model's size and images."""
    from raytopo.eval.judges import binarise, mean_iou, topology_agreement
    from raytopo.eval.topology_metrics import count_mask
    from raytopo.families.controlnet import trained_segmenter

    family, run, _ = mask_stage
    dims = family.count_dims(run)
    image_size = image_stage[1].data.image_size
    wanted = binarise(resize_nearest(masks, image_size))
    segmenter, held_out_iou = trained_segmenter(image_stage[1].data)
    found = segmenter.predict(images)
    targets = counts.numpy().reshape(len(masks), -1).round().astype(int)

    def accuracy(binary: torch.Tensor) -> float:
        pixels = binary.numpy().astype(np.uint8) * 255
        hits = [all(count_mask(p, dim) == target for dim, target in zip(dims, row))
                for p, row in zip(pixels, targets)]
        return float(np.mean(hits))

    mask_accuracy, image_accuracy = accuracy(binarise(masks)), accuracy(found)
    return {"n": len(masks), "mask_accuracy": mask_accuracy, "image_accuracy": image_accuracy,
            "image_to_mask_ratio": image_accuracy / mask_accuracy if mask_accuracy else 0.0,
            "image_mask_agreement": topology_agreement(found, wanted), "mask_iou": mean_iou(found, wanted),
            "segmenter_iou": held_out_iou}


def write_outputs(out: Path, masks: torch.Tensor, images: torch.Tensor, counts: torch.Tensor,
                  report: dict[str, float], overwrite: bool) -> None:
    from raytopo.commands.sample import remove_earlier_samples, write_pair_grid, write_samples

    if overwrite:
        remove_earlier_samples(out)
    targets = [tuple(row) for row in counts.tolist()]
    write_samples(masks, targets, out / "masks")
    write_samples(images, targets, out / "images")
    write_pair_grid(masks, images, out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
