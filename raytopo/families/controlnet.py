"""``controlnet``: a mask ControlNet (Zhang et al. 2023) on a trained ``ldm`` checkpoint (docs/latent.md).

Reference: Diffusion-Model-SOTA ``controlnet/`` (docs/references.md, ControlNet). The ControlNet is built with
``ControlNetModel.from_unet`` from the trained LDM's UNet: encoder, time and class embeddings are copies and
every output convolution starts at zero, so at initialisation UNet + ControlNet is the trained LDM exactly (the
reference replaced the class embedder with a random token and so started from a model the UNet never saw).
The LDM (autoencoder and UNet) is frozen; only the ControlNet trains (eps-MSE). Masks are one channel in
[-1, 1] at image resolution, flipped together with their image; class labels go to both nets, with the same
per-sample label drop as the LDM, so classifier-free guidance on the class still works under mask control.

The run's checkpoints hold the whole model (the frozen LDM is saved once), and its ``structure`` holds the LDM's
run config and a fingerprint of its weights: a ControlNet checkpoint samples on its own, and a run resumed with
``model.ldm`` pointing at another LDM is refused. The ``model:`` section:

```yaml
model:
  ldm: runs/ldm/checkpoint_002000     # a trained ldm checkpoint directory (required)
  conditioning_channels: null         # the mask encoder's channels; null: 16, 32, ... (log2(mask/latent) + 1)
  conditioning_scale: 1.0             # the residuals' factor at sampling (SamplerSettings.conditioning_scale)
  label_drop: 0.1
  guidance: null                      # null: the LDM's guidance scale
  flip: true
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from raytopo.config import Checked, from_dict
from raytopo.errors import ConfigError, InputError
from raytopo.families.base import FamilyDefaults, ParamGroup, Stage, StepContext
from raytopo.families.latent import (ParsedLatent, diffusion_mse, latent_diffusion, random_hflip,
                                     sample_latent_images, training_labels)
from raytopo.families.frozen_base import base_run, check_pairing, load_base, weights_fingerprint
from raytopo.models.latent.model import ControlledLatentDiffusion, LatentDiffusion


@dataclass(frozen=True)
class ControlNetModelConfig(Checked):
    ldm: str | None = None
    conditioning_channels: tuple[int, ...] | None = None
    conditioning_scale: float = 1.0
    label_drop: float = 0.1
    guidance: float | None = None
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.ldm:
            raise ConfigError("ldm: required, the trained ldm checkpoint directory the ControlNet is built on")
        if not 0 <= self.label_drop <= 1:
            raise ConfigError(f"label_drop: expected a probability in [0, 1], got {self.label_drop}")
        if self.conditioning_scale < 0 or (self.guidance is not None and self.guidance < 0):
            raise ConfigError("conditioning_scale/guidance: expected >= 0")


@dataclass(frozen=True)
class ParsedControlNet:
    ldm_path: str
    ldm_run: Any                   # the LDM's BaseRunView
    ldm: ParsedLatent
    conditioning_channels: tuple[int, ...]
    conditioning_scale: float
    label_drop: float
    guidance: float
    flip: bool


def parse_controlnet(run: Any) -> ParsedControlNet:
    """The ``controlnet`` model section validated against its LDM checkpoint and data (one-line errors)."""
    from raytopo.registry import get_family

    model = from_dict(ControlNetModelConfig, run.model, "model")
    ldm_run = base_run(model.ldm, "ldm", "model.ldm")
    ldm = get_family("ldm").parse(ldm_run)
    data = run.data
    if not data.has_masks:
        raise ConfigError(f"data.source: the controlnet trains on image + mask pairs (image_mask, objects, or a "
                          f"parquet pack with masks), got {data.source!r}")
    if (data.image_size, data.channels) != (ldm_run.data.image_size, ldm_run.data.channels):
        raise ConfigError(f"data.image_size/channels: the LDM was trained on {ldm_run.data.channels}x"
                          f"{ldm_run.data.image_size}^2 images, got {data.channels}x{data.image_size}^2")
    _check_classes(run, ldm)
    ratio = data.image_size // ldm.latent_size
    channels = model.conditioning_channels or tuple(16 * 2 ** i for i in range(ratio.bit_length()))
    from raytopo.models.latent.networks import check_conditioning

    check_conditioning(tuple(channels), data.image_size, ldm.latent_size)
    guidance = ldm.guidance if model.guidance is None else model.guidance
    return ParsedControlNet(model.ldm, ldm_run, ldm, tuple(channels), model.conditioning_scale, model.label_drop,
                            guidance, model.flip)


def _check_classes(run: Any, ldm: ParsedLatent) -> None:
    """Labelled mask data must name the LDM's classes (same names, same order)."""
    if not run.data.has_classes:
        return
    from raytopo.data.sources import class_names

    names = tuple(class_names(run.data) or ())
    if names != ldm.class_names:
        raise ConfigError(f"data: its classes ({', '.join(names) or 'none'}) are not the LDM's "
                          f"({', '.join(ldm.class_names) or 'none'}); expected the same classes in the same order")


class ControlNetFamily(FamilyDefaults):
    """``controlnet``: a ControlNet trained on masks over a frozen ``ldm``."""

    sampler_fields = frozenset({"sampler", "steps", "eta", "schedule", "rho", "guidance", "conditioning_scale"})

    held_out_splits = ("eval", "judge")   # scored on held-out images by judges trained on their own split

    name = "controlnet"

    def parse(self, run: Any) -> ParsedControlNet:
        return parse_controlnet(run)

    def setup(self, run: Any) -> dict[str, Any]:
        parsed = self.parse(run)
        return {"parsed": parsed, "diffusion": latent_diffusion(parsed.ldm)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        return {"mse": 1.0}

    def needs_pool(self, run: Any) -> bool:
        return False

    # --- model ---------------------------------------------------------------------------------

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> ControlledLatentDiffusion:
        """A fresh ControlNet on the trained LDM of ``model.ldm``; with ``structure`` (a checkpoint of this
        family), the same architecture without reading ``model.ldm`` (the checkpoint holds every weight)."""
        from raytopo.models.latent.networks import build_controlnet
        from raytopo.registry import get_family

        parsed = self.parse(run)
        ldm_family = get_family("ldm")
        if structure:
            check_pairing(parsed.ldm_path, "ldm", "model.ldm", structure.get("ldm_fingerprint"))
            ldm = ldm_family.build(parsed.ldm_run, structure.get("ldm_structure") or None)
        else:
            ldm = load_ldm(parsed.ldm_path)
        controlnet = build_controlnet(ldm.unet, parsed.conditioning_channels, run.data.image_size,
                                      parsed.ldm.latent_size)
        model = ControlledLatentDiffusion(ldm, controlnet, parsed.conditioning_scale)
        model.ldm_fingerprint = (structure or {}).get("ldm_fingerprint") or weights_fingerprint(ldm.state_dict())
        return model

    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        from raytopo.registry import get_family

        return {"ldm_structure": get_family("ldm").structure(model.ldm), "ldm_fingerprint": model.ldm_fingerprint}

    def parameter_groups(self, model: ControlledLatentDiffusion, run: Any, stage: Stage) -> list[ParamGroup]:
        return [ParamGroup("controlnet", list(model.controlnet.parameters()))]

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: ControlledLatentDiffusion, batch: Mapping[str, Tensor], ctx: StepContext) -> dict:
        parsed: ParsedControlNet = ctx.extras["parsed"]
        if parsed.flip:
            batch = random_hflip(batch, ("image", "mask"), ctx.generator)
        with torch.no_grad():
            latents = model.ldm.encode(batch["image"], ctx.generator)
        labels = training_labels(batch, model.null_class, parsed.label_drop, ctx.generator)
        return {"mse": diffusion_mse(model, ctx.extras["diffusion"], latents, ctx, label=labels,
                                     mask=batch["mask"])}

    # --- sampling ------------------------------------------------------------------------------

    def sampling_conditions(self, run: Any) -> str:
        return "masks"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, Tensor]:
        """``per_count`` held-out masks per class (``per_count`` in all without classes), with their labels."""
        parsed = self.parse(run)
        return held_out_masks(run, per_count * max(1, parsed.ldm.num_classes), parsed.ldm.num_classes)

    def class_names(self, run: Any) -> tuple[str, ...]:
        return self.parse(run).ldm.class_names

    @torch.no_grad()
    def sample(self, model: ControlledLatentDiffusion, run: Any, n: int, cond: Mapping[str, Tensor],
               settings: Any) -> Tensor:
        """``n`` images following ``cond["mask"]`` [n, 1, S, S] in [-1, 1], of classes ``cond["label"]``
        (default: null, i.e. any class)."""
        parsed = self.parse(run)
        if "mask" not in cond:
            raise InputError("controlnet sampling: expected masks to follow (cond['mask'])")
        labels = cond.get("label", torch.full((n,), model.null_class)).long()
        guidance = parsed.guidance if settings.guidance is None else settings.guidance
        scale = parsed.conditioning_scale if settings.conditioning_scale is None else settings.conditioning_scale
        controlled = _Scaled(model, scale)
        geometry = (parsed.ldm.latent_channels, parsed.ldm.latent_size, parsed.ldm.latent_size)
        return sample_latent_images(controlled, model.ldm, latent_diffusion(parsed.ldm), n,
                                    {"label": labels, "mask": cond["mask"].float()}, settings, guidance, geometry)

    def preview(self, model: ControlledLatentDiffusion, run: Any) -> dict[str, tuple[Tensor, list[str] | None]]:
        """Eight held-out masks above the images sampled for them."""
        from raytopo.families.sampling import SamplerSettings

        cond = self.default_conditions(run, per_count=2)
        cond = {key: value[:8] for key, value in cond.items()}
        images = self.sample(model, run, len(cond["mask"]), cond, SamplerSettings(steps=run.train.sample_steps))
        return {"mask_to_image": (torch.cat([cond["mask"].expand_as(images), images.cpu()]), None)}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate_model(self, model: ControlledLatentDiffusion, run: Any, settings: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """Scores of images generated for ``per_count`` held-out masks per class. Keys:

        * ``mask_iou``: mean IoU between each input mask and the foreground a segmenter trained by raytopo on
          the training pairs finds in the generated image; ``segmenter_iou``: that segmenter's IoU on held-out
          real pairs (the ceiling of ``mask_iou``);
        * ``topology_agreement``: the fraction of images whose foreground has the mask's number of components
          and holes (``topology_agreement_dim0`` / ``_dim1`` each); ``real_topology_agreement``: the same for
          the held-out real images (the segmenter's own ceiling);
        * ``class_agreement`` / ``classifier_accuracy`` (0 without classes), ``mmd`` / ``swd``, ``n``.
        """
        from raytopo.eval.distribution import distribution_distances
        from raytopo.families.base import sample_in_batches
        from raytopo.families.latent import class_scores

        parsed = self.parse(run)
        cond = self.default_conditions(run, per_count)
        with torch.no_grad():
            generated = sample_in_batches(self, model, run, len(cond["mask"]), cond, settings, batch_size)
        generated = generated.float().cpu()
        metrics = {"n": float(len(generated)),
                   **distribution_distances(generated, cond["image"], seed=settings.seed),
                   **mask_scores(run.data, generated, cond["mask"], cond["image"])}
        labels = cond.get("label", torch.zeros(0))
        metrics.update(class_scores(run, generated, labels, parsed.ldm.num_classes if len(labels) else 0))
        return metrics

    def metric_names(self, run: Any) -> set[str]:
        return {"n", "mmd", "swd", "mask_iou", "segmenter_iou", "topology_agreement", "topology_agreement_dim0",
                "topology_agreement_dim1", "real_topology_agreement", "class_agreement", "classifier_accuracy"}


class _Scaled(torch.nn.Module):
    """A controlled model whose residuals use a given conditioning scale (the sampler's override)."""

    def __init__(self, model: ControlledLatentDiffusion, scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, z_t: Tensor, t: Tensor, label: Tensor, mask: Tensor) -> Tensor:
        return self.model(z_t, t, label, mask, self.scale)


def load_ldm(path: str) -> LatentDiffusion:
    """The trained LDM of a checkpoint directory, EMA weights, strict load."""
    return load_base(path, "ldm", "model.ldm")


def held_out_masks(run: Any, n: int, num_classes: int) -> dict[str, Tensor]:
    """``n`` held-out ``image``/``mask`` pairs (and ``label`` when the data and LDM have classes)."""
    from raytopo.data.sources import held_out_arrays

    arrays = held_out_arrays(run.data, n)
    cond = {"mask": torch.from_numpy(arrays["mask"]).float(), "image": torch.from_numpy(arrays["image"])}
    if num_classes and "label" in arrays:
        cond["label"] = torch.from_numpy(arrays["label"]).long()
    return cond


def mask_scores(data: Any, generated: Tensor, masks: Tensor, real: Tensor) -> dict[str, float]:
    """Mask adherence of generated images, judged by a segmenter raytopo trains on the training pairs."""
    from raytopo.eval.judges import binarise, mean_iou, topology_agreement_by_dim

    segmenter, held_out_iou = trained_segmenter(data)
    found, wanted = segmenter.predict(generated), binarise(masks)
    agreement = topology_agreement_by_dim(found, wanted)
    real_agreement = topology_agreement_by_dim(segmenter.predict(real), wanted)
    return {"mask_iou": mean_iou(found, wanted), "segmenter_iou": held_out_iou,
            "topology_agreement": agreement["all"], "topology_agreement_dim0": agreement["dim0"],
            "topology_agreement_dim1": agreement["dim1"], "real_topology_agreement": real_agreement["all"]}


@functools.lru_cache(maxsize=4)
def trained_segmenter(data: Any) -> tuple[Any, float]:
    """The foreground judge of a data config, trained once per process on (up to) JUDGE_IMAGES pairs of the
    judges' split (`raytopo.data.sources.judge_arrays`)."""
    from raytopo.data.sources import judge_arrays
    from raytopo.eval.judges import train_segmenter
    from raytopo.families.latent import JUDGE_IMAGES

    arrays = judge_arrays(data, JUDGE_IMAGES)
    return train_segmenter(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["mask"]).float())


