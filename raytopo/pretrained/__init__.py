"""Small models that raytopo trained itself and ships inside the package.

A shipped model is a weights-only checkpoint directory (``raytopo.checkpoint``): ``ema.pt`` (the EMA
weights, stored as float16 to keep the package small; they load into float32 models), ``config.json`` (the run
config that trained it) and ``state.json`` (its step count). Anything that takes a checkpoint directory takes
``pretrained:<name>`` for one of them: ``init_from``, ``raytopo sample``, ``raytopo score``.

Shipped models, each with the command that regenerates it:

* ``adm_t_shapes32``: ADM-T on the 0-dim Shapes set (32 px, counts 1-5), the base of ``raytopo demo``;
  regenerate with ``raytopo demo --from-scratch --export-base DIR`` (see ``raytopo.commands.demo``).
* ``ldm_objects32``: the class-conditional latent diffusion model of ``configs/ldm.yaml`` (objects set, 32 px,
  4 classes; autoencoder 0.2 M + UNet 3.3 M parameters, 4 x 16 x 16 latents), the base of
  ``configs/controlnet.yaml``; regenerate with
  ``raytopo train configs/ldm.yaml`` and ``raytopo.checkpoint.export_weights(<last checkpoint>, DIR)``.
* ``treevae_garments28``: the TreeVAE of ``configs/treevae.yaml`` (garments, 28 px, grown to 10 leaves; 1.7 MB),
  the base of ``configs/diffuse_treevae.yaml``; regenerate with ``raytopo train configs/treevae.yaml`` (about
  7 minutes on 2 CPUs) and ``export_weights`` as above.
"""

from __future__ import annotations

from pathlib import Path

from raytopo.errors import InputError

PREFIX = "pretrained:"
ROOT = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.parent.name for p in ROOT.glob("*/config.json"))


def resolve(location: str | Path) -> Path:
    """``pretrained:<name>`` -> the shipped directory; any other path is returned unchanged."""
    text = str(location)
    if not text.startswith(PREFIX):
        return Path(location)
    name = text[len(PREFIX):]
    if name not in available():
        raise InputError(f"{text}: no such shipped model; expected one of {', '.join(PREFIX + n for n in available())}")
    return ROOT / name
