"""Benchmarks of the latent families (docs/latent.md): step times, guidance cost and, for trained checkpoints,
the quality figures the issue targets.

Run:  python bench/latent.py [--size 32] [--batch 16] [--repeat 7]
      python bench/latent.py --ldm CKPT --controlnet CKPT --masks-from pretrained:adm_t_shapes32 [--per-count 32]

Timing (one torch thread, the production `train_step`, candidates interleaved round-robin, ratios in one run):

* LDM step (frozen-autoencoder encode + UNet on 4 x S/4 x S/4 latents) vs the pixel-space ADM step at the same
  image size with a similar parameter count;
* ControlNet step (frozen LDM under autograd + ControlNet) vs the LDM step;
* sampling time per image with classifier-free guidance (one batched [cond; uncond] call per step) vs without,
  as a ratio to two unguided calls (target <= 1.15).

Quality (with checkpoints): the ldm's ``class_agreement`` (target >= 0.8) beside its classifier's held-out
accuracy; the controlnet's ``mask_iou`` (target >= 0.7) and topology agreement; the pipeline's image / mask count
accuracy ratio (target >= 0.8).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _steps import training_step  # noqa: E402
from _timing import interleaved_medians, print_table  # noqa: E402


def run_config(family: str, model: dict, data: dict, batch: int):
    from raytopo.train.config import parse_run_config

    return parse_run_config({"family": family, "model": model, "data": data,
                             "train": {"steps": 1000, "batch_size": batch},
                             "ray": {"num_workers": 0, "persistence_actors": 0}})


def parameters(module: torch.nn.Module, trainable: bool = False) -> float:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable) / 1e6


def timing(args: argparse.Namespace) -> None:
    import tempfile

    from raytopo.checkpoint import save_checkpoint
    from raytopo.families.sampling import SamplerSettings
    from raytopo.models.ema import make_ema
    from raytopo.registry import get_family

    data = {"source": "objects", "channels": 3, "image_size": args.size, "num_images": max(64, args.batch),
            "max_count": 3}
    ldm_run = run_config("ldm", {"autoencoder": {"steps": 1}}, data, args.batch)
    adm_run = run_config("adm", {"unet": {"model_channels": 64, "num_res_blocks": 2, "channel_mult": [1, 2],
                                          "attention_resolutions": []}, "diffusion": {"steps": 1000}},
                         data, args.batch)
    ldm_step, ldm = training_step(ldm_run)
    adm_step, adm = training_step(adm_run)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "ldm", ldm, make_ema(ldm), None, 1, ldm_run.to_plain(), 1,
                               get_family("ldm").structure(ldm))
        control_run = run_config("controlnet", {"ldm": str(path)}, data, args.batch)
        control_step, controlnet = training_step(control_run)
    adm_ms, ldm_ms, control_ms = interleaved_medians([adm_step, ldm_step, control_step], repeat=args.repeat)
    print_table(f"Training step, batch {args.batch}, {args.size} px RGB, 1 thread (ms, median of {args.repeat})",
                ["step", "trainable M params", "ms", "ratio"],
                [["ADM (pixel space)", parameters(adm, True), adm_ms, 1.0],
                 ["LDM (frozen-AE encode + UNet)", parameters(ldm.unet), ldm_ms, ldm_ms / adm_ms],
                 ["ControlNet (frozen LDM)", parameters(controlnet.controlnet), control_ms, control_ms / ldm_ms]])
    print("(the ControlNet ratio is against the LDM step)")

    family = get_family("ldm")
    n = args.batch
    cond = {"label": torch.arange(n) % 4}
    guided = SamplerSettings(steps=args.sample_steps, guidance=3.0)
    unguided = replace(guided, guidance=1.0)
    guided_ms, unguided_ms = interleaved_medians(
        [lambda: family.sample(ldm, ldm_run, n, cond, guided), lambda: family.sample(ldm, ldm_run, n, cond, unguided)],
        repeat=max(3, args.repeat // 2))
    print_table(f"Sampling, DDIM-{args.sample_steps}, {n} images, incl. decoding (ms per image)",
                ["sampling", "ms/image", "ratio to two unguided"],
                [["guided (s = 3, one batched call)", guided_ms / n, guided_ms / (2 * unguided_ms)],
                 ["unguided (s = 1)", unguided_ms / n, 0.5]])
    print("target: guided <= 1.15 x two unguided calls")


def quality(args: argparse.Namespace) -> None:
    from raytopo.commands.pipeline import PipelineArgs, generate_masks, load_stage, pipeline_report, render, \
        resize_nearest
    from raytopo.families.sampling import SamplerSettings

    settings = SamplerSettings(steps=50)
    rows = []
    if args.ldm:
        family, run, model = load_stage(args.ldm, "classes", "--ldm", "an ldm checkpoint")
        scores = family.evaluate_model(model, run, settings, args.per_count, 64)
        rows += [["ldm class agreement", scores["class_agreement"], ">= 0.8"],
                 ["ldm classifier held-out accuracy", scores["classifier_accuracy"], "(ceiling)"],
                 ["ldm mmd / swd", f"{scores['mmd']:.4f} / {scores['swd']:.4f}", ""]]
    if args.controlnet:
        stage = load_stage(args.controlnet, "masks", "--controlnet", "a controlnet checkpoint")
        family, run, model = stage
        scores = family.evaluate_model(model, run, settings, args.per_count, 64)
        rows += [["controlnet mask IoU", scores["mask_iou"], ">= 0.7"],
                 ["controlnet segmenter held-out IoU", scores["segmenter_iou"], "(ceiling)"],
                 ["controlnet topology agreement", scores["topology_agreement"], ""],
                 ["real images' topology agreement", scores["real_topology_agreement"], "(ceiling)"],
                 ["controlnet class agreement", scores["class_agreement"], ""]]
        if args.masks_from:
            mask_stage = load_stage(args.masks_from, "counts", "--masks-from", "a count model")
            low, high = mask_stage[1].data.min_count, mask_stage[1].data.max_count
            pipeline = PipelineArgs(args.masks_from, args.controlnet, ",".join(map(str, range(low, high + 1))),
                                    args.per_count, Path("."), None, settings, 64)
            masks, cond = generate_masks(mask_stage, pipeline)
            labels = torch.arange(len(masks)) % max(1, len(family.class_names(run)))
            images = render(stage, resize_nearest(masks, run.data.image_size), labels, pipeline)
            report = pipeline_report(mask_stage, stage, masks, images, cond["counts"])
            rows += [["pipeline mask count accuracy", report["mask_accuracy"], ""],
                     ["pipeline image count accuracy", report["image_accuracy"], ""],
                     ["pipeline image / mask accuracy", report["image_to_mask_ratio"], ">= 0.8"],
                     ["pipeline image-mask topology agreement", report["image_mask_agreement"], ""]]
    print_table(f"Quality ({args.per_count} per class / mask / count, DDIM-50)", ["figure", "value", "target"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--ldm", type=Path, default=None)
    parser.add_argument("--controlnet", type=Path, default=None)
    parser.add_argument("--masks-from", type=Path, default=None)
    parser.add_argument("--per-count", type=int, default=32)
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_timing:
        timing(args)
    if args.ldm or args.controlnet:
        quality(args)


if __name__ == "__main__":
    main()
