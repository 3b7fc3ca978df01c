"""`raytopo export CHECKPOINT --diffusers DIR`: a latent-family checkpoint as diffusers directories.

``DIR/vae`` (``AutoencoderKL``, its ``scaling_factor`` set to the trained latent scale), ``DIR/unet``
(``UNet2DConditionModel``, class ``K`` is the null class), ``DIR/controlnet`` (``ControlNetModel``, controlnet
checkpoints only), ``DIR/scheduler`` (the ``DDIMScheduler`` raytopo samples with by default: linear betas
1e-4..0.02, 1000 steps, steps_offset 1) and ``DIR/raytopo.json`` (family, class names, null class, guidance
scale). Each loads with diffusers' own ``from_pretrained(DIR/<part>)``; EMA weights are exported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from raytopo.errors import InputError

LATENT_FAMILIES = ("ldm", "controlnet")


@dataclass(frozen=True)
class ExportArgs:
    checkpoint: Path
    diffusers: Path


def run_export(args: ExportArgs) -> int:
    from raytopo.train.loading import checkpoint_run, load_model_for_sampling

    from raytopo.outputs import check_output
    from raytopo.pretrained import resolve

    check_output(args.diffusers, "--diffusers", folder=True, inputs=[resolve(str(args.checkpoint))])
    if args.diffusers.exists() and any(args.diffusers.iterdir()):
        raise InputError(f"--diffusers {args.diffusers}: expected a new or empty folder (nothing is overwritten)")
    family, run = checkpoint_run(args.checkpoint)          # config only: refuse before loading weights
    if run.family not in LATENT_FAMILIES:
        raise InputError(f"{args.checkpoint}: diffusers export is for the latent families "
                         f"({', '.join(LATENT_FAMILIES)}), got family {run.family!r}")
    family, run, model = load_model_for_sampling(args.checkpoint)
    written = export_diffusers(family, run, model, args.diffusers)
    print(f"wrote {', '.join(written)} to {args.diffusers}")
    return 0


def export_diffusers(family, run, model, out: Path) -> list[str]:
    """Write the model's parts as diffusers directories under ``out``; returns their names."""
    from diffusers import DDIMScheduler

    ldm = model.ldm if run.family == "controlnet" else model
    parts = {"vae": ldm.vae, "unet": ldm.unet}
    if run.family == "controlnet":
        parts["controlnet"] = model.controlnet
    ldm.vae.register_to_config(scaling_factor=float(ldm.latent_scale))
    for name, module in parts.items():
        module.save_pretrained(out / name)
    DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(out / "scheduler")
    parsed = family.parse(run)
    guidance = parsed.guidance
    info = {"family": run.family, "class_names": list(family.class_names(run)), "null_class": ldm.null_class,
            "guidance": guidance, "latent_scale": float(ldm.latent_scale)}
    (out / "raytopo.json").write_text(json.dumps(info, indent=2))
    return [*parts, "scheduler", "raytopo.json"]
