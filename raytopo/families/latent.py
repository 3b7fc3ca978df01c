"""``ldm``: class-conditional latent diffusion with classifier-free guidance (docs/latent.md).

Reference: Diffusion-Model-SOTA ``ldm/`` (docs/references.md, LDM). Two stages in one run:

1. ``autoencoder`` (``model.autoencoder.steps``): a small KL autoencoder trained on the run's images
   (per-sample reconstruction MSE + beta * KL(q(z|x) || N(0, I)), Rombach et al. 2022, sec. 3 / app. G);
   nothing can be downloaded, so raytopo trains its own. At the stage boundary the latent scale is set to
   1 / std of the training latents (averaged over every rank, so all ranks agree) and stored in the model.
   With ``model.vae_path`` (a local diffusers ``AutoencoderKL`` directory) this stage is skipped and the scale
   is the directory's ``scaling_factor``.
2. ``diffusion`` (the remaining ``train.steps``): the autoencoder is frozen; the UNet learns eps-prediction on
   scaled latents (Ho et al. 2020, eq. 14; linear betas 1e-4..0.02 over 1000 steps as the reference), with the
   class label replaced by the null class K with probability ``label_drop`` per sample.

Sampling runs through raytopo's sampler library (any sampler; DDIM-50 on the reference's steps_offset-1 grid by
default) with guidance eps_u + s (eps_c - eps_u) in one batched call, then decodes. The ``model:`` section:

```yaml
model:
  autoencoder: {steps: 500, block_out_channels: [32, 32], latent_channels: 4, beta: 1.0e-6, lr_scale: 1.0}
  vae_path: null            # or a local diffusers AutoencoderKL directory (stage 1 skipped)
  unet: {block_out_channels: [64, 128], layers_per_block: 2}
  label_drop: 0.1
  guidance: 3.0             # s at sampling and evaluation
  flip: true                # random horizontal flips
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from raytopo.config import Checked, from_dict
from raytopo.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from raytopo.diffusion.guidance import drop_labels
from raytopo.errors import ConfigError
from raytopo.families.base import FamilyDefaults, ParamGroup, Stage, StepContext, eval_mode, stage_index_at
from raytopo.models.latent.model import LatentDiffusion
from raytopo.models.latent.networks import AutoencoderSettings, UNetSettings

# The reference's noise process (DDPMScheduler(1000, linear 1e-4..0.02, epsilon)); fixed variance: the latent
# families use only the mean prediction.
LATENT_DIFFUSION = {"steps": 1000, "schedule": "linear", "mean_type": "epsilon", "var_type": "fixed_small"}
DDIM_OFFSET = 1   # diffusers' steps_offset=1: DDIM-50 visits 981, 961, ..., 1 as the reference


@dataclass(frozen=True)
class LatentModelConfig(Checked):
    autoencoder: dict[str, Any] = field(default_factory=dict)
    vae_path: str | None = None
    unet: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)
    label_drop: float = 0.1
    guidance: float = 3.0
    flip: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.label_drop <= 1:
            raise ConfigError(f"label_drop: expected a probability in [0, 1], got {self.label_drop}")
        if self.guidance < 0:
            raise ConfigError(f"guidance: expected >= 0, got {self.guidance}")


@dataclass(frozen=True)
class ParsedLatent:
    """The validated ``ldm`` settings plus what the data and autoencoder fix: classes and latent geometry."""

    autoencoder: AutoencoderSettings
    vae_path: str | None
    unet: UNetSettings
    diffusion: DiffusionConfig
    label_drop: float
    guidance: float
    flip: bool
    class_names: tuple[str, ...]
    latent_channels: int
    latent_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def parse_latent(run: Any) -> ParsedLatent:
    """The ``ldm`` model section of ``run`` validated against its data (ConfigError naming the field)."""
    from raytopo.data.sources import class_names

    model = from_dict(LatentModelConfig, run.model, "model")
    autoencoder = from_dict(AutoencoderSettings, model.autoencoder, "model.autoencoder")
    unet = from_dict(UNetSettings, model.unet, "model.unet")
    diffusion = from_dict(DiffusionConfig, {**LATENT_DIFFUSION, **model.diffusion}, "model.diffusion")
    if diffusion.mean_type != "epsilon":
        raise ConfigError(f"model.diffusion.mean_type: the latent families predict epsilon, got "
                          f"{diffusion.mean_type!r}")
    names = tuple(class_names(run.data) or ()) if run.data.has_classes else ()
    if model.vae_path:
        channels, latent_channels, factor = _directory_geometry(model.vae_path)
    else:
        channels, latent_channels, factor = run.data.channels, autoencoder.latent_channels, autoencoder.downsampling
    if channels != run.data.channels:
        raise ConfigError(f"model.vae_path: the autoencoder takes {channels}-channel images, data.channels is "
                          f"{run.data.channels}")
    if run.data.image_size % factor:
        raise ConfigError(f"model.autoencoder: it downsamples by {factor}, which does not divide data.image_size "
                          f"{run.data.image_size}")
    return ParsedLatent(autoencoder, model.vae_path, unet, diffusion, model.label_drop, model.guidance, model.flip,
                        names, latent_channels, run.data.image_size // factor)


@functools.lru_cache(maxsize=8)
def _directory_geometry(path: str) -> tuple[int, int, int]:
    """(image channels, latent channels, downsampling) of a ``vae_path`` directory, from its config alone."""
    from raytopo.models.latent.networks import autoencoder_geometry, read_autoencoder_config

    return autoencoder_geometry(read_autoencoder_config(path))


def latent_diffusion(parsed: ParsedLatent) -> GaussianDiffusion:
    from raytopo.diffusion.respace import build_diffusion

    return build_diffusion(parsed.diffusion, "")


def random_hflip(batch: Mapping[str, Tensor], keys: tuple[str, ...],
                 generator: torch.Generator | None) -> dict[str, Tensor]:
    """``batch`` with each sample's ``keys`` tensors mirrored together with probability 1/2 (one draw per
    sample, shared by its image and mask)."""
    some = batch[keys[0]]
    flip = torch.rand(some.shape[0], generator=generator, device=some.device) < 0.5
    out = dict(batch)
    for key in keys:
        if key in batch:
            value = batch[key]
            out[key] = torch.where(flip.view(-1, *[1] * (value.dim() - 1)), value.flip(-1), value)
    return out


def diffusion_mse(model: torch.nn.Module, diffusion: GaussianDiffusion, latents: Tensor, ctx: StepContext,
                  **conditions: Tensor) -> Tensor:
    """Per-sample eps-MSE of ``model(z_t, t, **conditions)`` at uniform t (Ho et al. 2020, eq. 14)."""
    t = torch.randint(0, diffusion.num_timesteps, (latents.shape[0],), device=latents.device,
                      generator=ctx.generator)
    noise = torch.randn(latents.shape, device=latents.device, generator=ctx.generator)
    z_t = diffusion.q_sample(latents, t, noise=noise)
    eps = diffusion.call_model(model, z_t, t, conditions)
    return ((eps.float() - noise) ** 2).mean(dim=tuple(range(1, eps.dim())))


def training_labels(batch: Mapping[str, Tensor], null_class: int, rate: float,
                    generator: torch.Generator | None) -> Tensor:
    """The batch's class labels with per-sample label drop; all null when the data has no classes."""
    image = batch["image"]
    if "label" not in batch or null_class == 0:
        return torch.full((image.shape[0],), null_class, dtype=torch.long, device=image.device)
    return drop_labels(batch["label"].long(), null_class, rate, generator)


def sample_latent_images(model: torch.nn.Module, ldm: LatentDiffusion, diffusion: GaussianDiffusion, n: int,
                         conditions: Mapping[str, Tensor], settings: Any, guidance: float,
                         latent_shape: tuple[int, int, int]) -> Tensor:
    """``n`` images in [-1, 1]: latents sampled by ``settings``' sampler from ``model`` under classifier-free
    guidance ``guidance`` (one batched call per step), decoded by ``ldm``'s autoencoder. Latents are never
    clipped (they are not in [-1, 1]); the decoded images are."""
    from raytopo.diffusion.denoisers import DiscreteVPDenoiser
    from raytopo.diffusion.guidance import GuidedModel
    from raytopo.families.sampling import sample_with

    parameter = next(model.parameters())
    kwargs = {key: value.to(parameter.device) for key, value in conditions.items()}
    guided = GuidedModel(model, ldm.null_class, guidance)
    denoiser = DiscreteVPDenoiser(guided, diffusion, kwargs, clip=False, offset=DDIM_OFFSET)
    with eval_mode(model), torch.no_grad():
        latents = sample_with(denoiser, (n, *latent_shape), settings, parameter.device, parameter.dtype)
        return ldm.decode(latents).clamp(-1.0, 1.0)


def latent_scale_of(ldm: LatentDiffusion, batches: Any, images: int = 512) -> float:
    """1 / std of the (unscaled) posterior samples of about ``images`` training images, the same on every rank
    (the sums are all-reduced when a process group runs)."""
    import torch.distributed as dist

    total = torch.zeros(3, dtype=torch.float64)
    seen = 0
    with torch.no_grad():
        while seen < images:
            batch = next(batches)
            latents = ldm.vae.encode(batch["image"]).latent_dist.sample().double().cpu()
            total += torch.stack([latents.sum(), (latents ** 2).sum(), torch.tensor(latents.numel())])
            seen += len(latents)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    mean = total[0] / total[2]
    variance = total[1] / total[2] - mean ** 2
    return float(1.0 / variance.clamp(min=1e-12).sqrt())


class LatentDiffusionFamily(FamilyDefaults):
    """``ldm``: autoencoder stage, then class-conditional latent diffusion with classifier-free guidance."""

    sampler_fields = frozenset({"sampler", "steps", "eta", "schedule", "rho", "guidance"})

    held_out_splits = ("eval", "judge")   # scored on held-out images by judges trained on their own split

    name = "ldm"

    def parse(self, run: Any) -> ParsedLatent:
        return parse_latent(run)

    def setup(self, run: Any) -> dict[str, Any]:
        parsed = self.parse(run)
        return {"parsed": parsed, "diffusion": latent_diffusion(parsed), "stages": self.stages(run)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        return {"recon": 1.0, "kl": self.parse(run).autoencoder.beta, "mse": 1.0}

    def needs_pool(self, run: Any) -> bool:
        return False

    def stages(self, run: Any) -> list[Stage]:
        parsed = self.parse(run)
        if parsed.vae_path:
            return [Stage("diffusion", run.train.steps)]
        return [Stage("autoencoder", parsed.autoencoder.steps),
                Stage("diffusion", run.train.steps - parsed.autoencoder.steps)]

    # --- model ---------------------------------------------------------------------------------

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> LatentDiffusion:
        from raytopo.models.latent.networks import build_autoencoder, build_unet, load_autoencoder

        parsed = self.parse(run)
        if structure and "autoencoder" in structure:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_config(structure["autoencoder"])
        elif parsed.vae_path:
            vae = load_autoencoder(parsed.vae_path)
        else:
            vae = build_autoencoder(parsed.autoencoder, run.data.image_size, run.data.channels)
        unet = build_unet(parsed.unet, parsed.latent_size, parsed.latent_channels, parsed.num_classes)
        scale = float(vae.config.scaling_factor) if parsed.vae_path else 1.0
        return LatentDiffusion(vae, unet, parsed.num_classes, scale)

    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        """The autoencoder's diffusers config, so a checkpoint rebuilds it without ``vae_path``'s directory."""
        return {"autoencoder": _plain_config(model.vae.config)}

    def enter_stage(self, model: LatentDiffusion, run: Any, stage: Stage, batches: Any) -> LatentDiffusion:
        """Entering ``diffusion``: freeze the autoencoder's statistics into the latent scale (1 / std)."""
        if stage.name == "diffusion":
            model.latent_scale.fill_(latent_scale_of(model, batches))
        return model

    def parameter_groups(self, model: LatentDiffusion, run: Any, stage: Stage) -> list[ParamGroup]:
        if stage.name == "autoencoder":
            return [ParamGroup("autoencoder", list(model.vae.parameters()), self.parse(run).autoencoder.lr_scale)]
        return [ParamGroup("unet", list(model.unet.parameters()))]

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: LatentDiffusion, batch: Mapping[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        parsed: ParsedLatent = ctx.extras["parsed"]
        if parsed.flip:
            batch = random_hflip(batch, ("image",), ctx.generator)
        stages = ctx.extras["stages"]
        if stages[stage_index_at(stages, ctx.step)].name == "autoencoder":
            return autoencoder_losses(model.vae, batch["image"], ctx.generator)
        with torch.no_grad():
            latents = model.encode(batch["image"], ctx.generator)
        labels = training_labels(batch, model.null_class, parsed.label_drop, ctx.generator)
        return {"mse": diffusion_mse(model, ctx.extras["diffusion"], latents, ctx, label=labels)}

    # --- sampling ------------------------------------------------------------------------------

    def sampling_conditions(self, run: Any) -> str:
        return "classes" if self.parse(run).num_classes else "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, Tensor]:
        classes = self.parse(run).num_classes
        return {"label": torch.arange(classes).repeat_interleave(per_count)} if classes else {}

    def class_names(self, run: Any) -> tuple[str, ...]:
        return self.parse(run).class_names

    @torch.no_grad()
    def sample(self, model: LatentDiffusion, run: Any, n: int, cond: Mapping[str, Tensor], settings: Any) -> Tensor:
        """``n`` images in [-1, 1] of classes ``cond["label"]`` (default: the null class, i.e. unconditional),
        guided with ``settings.guidance`` (default ``model.guidance``)."""
        parsed = self.parse(run)
        labels = cond.get("label", torch.full((n,), model.null_class)).long()
        guidance = parsed.guidance if settings.guidance is None else settings.guidance
        return sample_latent_images(model, model, latent_diffusion(parsed), n, {"label": labels}, settings,
                                    guidance, (parsed.latent_channels, parsed.latent_size, parsed.latent_size))

    def preview(self, model: LatentDiffusion, run: Any) -> dict[str, tuple[Tensor, list[str] | None]]:
        """Two samples per class (captioned) and held-out images above their reconstructions."""
        from raytopo.families.sampling import SamplerSettings

        parsed = self.parse(run)
        settings = SamplerSettings(steps=run.train.sample_steps)
        cond = self.default_conditions(run, per_count=2) or {"label": torch.full((8,), model.null_class)}
        images = self.sample(model, run, len(cond["label"]), cond, settings)
        captions = [parsed.class_names[int(c)] if int(c) < parsed.num_classes else "any" for c in cond["label"]]
        return {"samples": (images, captions), "reconstructions": (reconstruction_grid(model, run), None)}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate_model(self, model: LatentDiffusion, run: Any, settings: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """Scores of ``per_count`` samples per class (the total when unconditional). Keys:

        * ``class_agreement``: the fraction of samples a classifier trained by raytopo on the training images
          (`raytopo.eval.judges`) assigns to the class they were generated for; ``classifier_accuracy`` is that
          classifier's held-out accuracy, the ceiling of the agreement (both 0 without classes);
        * ``mmd`` / ``swd``: pixel-space MMD^2 and sliced W2 against as many held-out images;
        * ``recon_mse``: the autoencoder's mean squared reconstruction error on held-out images;
        * ``n``: the number of samples.
        """
        from raytopo.data.sources import held_out_arrays
        from raytopo.eval.distribution import distribution_distances
        from raytopo.families.base import sample_in_batches

        parsed = self.parse(run)
        cond = self.default_conditions(run, per_count) or {"label": torch.full((per_count,), model.null_class)}
        with torch.no_grad():
            generated = sample_in_batches(self, model, run, len(cond["label"]), cond, settings, batch_size).float()
        held_out = held_out_arrays(run.data, len(generated))
        real = torch.from_numpy(held_out["image"])
        metrics = {"n": float(len(generated)), **distribution_distances(generated, real, seed=settings.seed),
                   "recon_mse": reconstruction_mse(model, real)}
        metrics.update(class_scores(run, generated, cond["label"], parsed.num_classes))
        return metrics

    def metric_names(self, run: Any) -> set[str]:
        return {"n", "mmd", "swd", "recon_mse", "class_agreement", "classifier_accuracy"}


def autoencoder_losses(vae: torch.nn.Module, images: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Stage 1, per sample: ``recon`` = mean squared error of the decoded posterior sample, ``kl`` =
    KL(q(z|x) || N(0, I)) summed over latent elements (weighted by ``beta`` in `loss_weights`)."""
    posterior = vae.encode(images).latent_dist
    decoded = vae.decode(posterior.sample(generator)).sample
    recon = ((decoded.float() - images) ** 2).mean(dim=(1, 2, 3))
    return {"recon": recon, "kl": posterior.kl().float()}


@torch.no_grad()
def reconstruction_mse(ldm: LatentDiffusion, images: Tensor) -> float:
    parameter = next(ldm.parameters())
    images = images.to(parameter.device, parameter.dtype)
    decoded = ldm.decode(ldm.encode(images, sample=False)).clamp(-1, 1)
    return float(((decoded - images) ** 2).mean())


@torch.no_grad()
def reconstruction_grid(ldm: LatentDiffusion, run: Any, n: int = 8) -> Tensor:
    """``n`` held-out images followed by their reconstructions (a two-row preview)."""
    from raytopo.data.sources import held_out_arrays

    images = torch.from_numpy(held_out_arrays(run.data, n)["image"])
    parameter = next(ldm.parameters())
    images = images.to(parameter.device, parameter.dtype)
    return torch.cat([images, ldm.decode(ldm.encode(images, sample=False)).clamp(-1, 1)])


def class_scores(run: Any, generated: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """``class_agreement`` of generated images with their labels and the judge's held-out accuracy."""
    if not num_classes:
        return {"class_agreement": 0.0, "classifier_accuracy": 0.0}
    from raytopo.eval.judges import class_agreement

    classifier, accuracy = trained_classifier(run.data, num_classes)
    return {"class_agreement": class_agreement(classifier, generated.cpu(), labels.cpu()),
            "classifier_accuracy": accuracy}


JUDGE_IMAGES = 1024


@functools.lru_cache(maxsize=4)
def trained_classifier(data: Any, num_classes: int) -> tuple[Any, float]:
    """The class judge of a data config, trained once per process on (up to) JUDGE_IMAGES images of the judges'
    split (`raytopo.data.sources.judge_arrays`: never a row that is evaluated or trained on)."""
    from raytopo.data.sources import judge_arrays
    from raytopo.eval.judges import train_classifier

    arrays = judge_arrays(data, JUDGE_IMAGES)
    return train_classifier(torch.from_numpy(arrays["image"]), torch.from_numpy(arrays["label"]).long(),
                            num_classes)


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config as JSON-able plain values (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in dict(config).items()}
