"""``diffuse_treevae``: a DDPM that turns a frozen TreeVAE's blurry leaf images into sharp ones (Diffuse-TreeVAE,
Goncalves et al. 2024, "form 1"; docs/references.md and the brief ``treevae.md`` section 3).

The denoiser sees ``[x_t, c]`` where ``c`` is a TreeVAE reconstruction, and the leaf that made it through a
learned embedding with a **distinct null index** L (the reference used z = 0, the same as leaf 0). Training, per
sample: the frozen TreeVAE (``model.treevae``, a ``treevae`` checkpoint) reconstructs the image with every leaf
(posterior means), a leaf is drawn from its q-routing probabilities (Multinomial, vectorised), ``c`` is that
leaf's reconstruction in [-1, 1] (the reference trained on [0, 1] and clipped to [-1, 1]), and the leaf is
dropped to the null index with probability ``label_drop`` (per sample; the reference dropped per batch). The loss
is eps-MSE (Ho et al. 2020, eq. 14; linear betas 1e-4..0.02, 1000 steps).

Sampling starts where the reference's does, at x_T = sqrt(abar_T) c + sqrt(1 - abar_T) eps, and runs any raytopo
sampler (DDIM-50 with eta 1 by default, `DEFAULT_ETA`, instead of 1000 ancestral steps) with guidance eps_u + s (eps_c - eps_u) on the leaf
(the reference's (1 + w) eps_c - w eps_u with s = 1 + w). Modes: `refined_samples` (a root sample routed by p,
its most probable or a sampled leaf, refined), `refined_leaves` (every leaf of one root sample) and
`refined_reconstructions` (a real image's reconstructions; the reference noised the real image instead).

```yaml
model:
  treevae: runs/treevae_garments/<checkpoint_dir>
  unet: {block_out_channels: [32, 64], layers_per_block: 2}
  label_drop: 0.1
  guidance: 1.0
  leaf: argmax            # argmax | sample: the leaf of a generated root sample
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from raytopo.config import Checked, from_dict
from raytopo.diffusion.gaussian import DiffusionConfig
from raytopo.errors import ConfigError, InputError
from raytopo.families.base import FamilyDefaults, ParamGroup, Stage, StepContext, eval_mode
from raytopo.families.frozen_base import base_run, base_structure, check_pairing, load_base, weights_fingerprint
from raytopo.families.latent import LATENT_DIFFUSION, diffusion_mse
from raytopo.families.treevae import from_unit, generate, reconstruct, to_unit


@dataclass(frozen=True)
class RefinerUNet(Checked):
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 2
    norm_num_groups: int = 16
    dropout: float = 0.0


@dataclass(frozen=True)
class RefinerModelConfig(Checked):
    treevae: str | None = None
    unet: RefinerUNet = field(default_factory=RefinerUNet)
    diffusion: dict[str, Any] = field(default_factory=dict)
    label_drop: float = 0.1
    guidance: float = 1.0
    leaf: Literal["argmax", "sample"] = "argmax"

    def __post_init__(self) -> None:
        if not self.treevae:
            raise ConfigError("treevae: required, the trained treevae checkpoint directory the refiner is built on")
        if not 0 <= self.label_drop <= 1 or self.guidance < 0:
            raise ConfigError("label_drop/guidance: expected a probability in [0, 1] and a scale >= 0")


@dataclass(frozen=True)
class ParsedRefiner:
    config: RefinerModelConfig
    tree_run: Any
    leaves: int
    diffusion: DiffusionConfig


class RefinerModel(nn.Module):
    """A frozen TreeVAE and a UNet on ``[x_t, c]`` with leaf embeddings 0..L-1 and the null index L. Images of a
    side that is not a multiple of 4 (28 px) are padded for the UNet and cropped after, as the reference."""

    def __init__(self, treevae: nn.Module, unet: nn.Module, leaves: int, image_size: int) -> None:
        super().__init__()
        self.treevae = treevae
        self.unet = unet
        self.leaves = leaves
        self.pad = (-image_size) % 4

    @property
    def null_class(self) -> int:
        return self.leaves

    def forward(self, x_t: Tensor, t: Tensor, label: Tensor, cond: Tensor) -> Tensor:
        inputs = nn.functional.pad(torch.cat([x_t, cond], dim=1), (0, self.pad, 0, self.pad))
        eps = self.unet(inputs, t, class_labels=label).sample
        return eps[..., :x_t.shape[-2], :x_t.shape[-1]]

    @torch.no_grad()
    def reconstructions(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(every leaf's reconstruction [B, L, C, H, W] in [-1, 1], q-routing leaf probabilities [B, L]) of
        images in [-1, 1], posterior means, the TreeVAE in eval mode."""
        self.treevae.eval()
        terms = self.treevae(to_unit(images), sample=False)
        return from_unit(terms["reconstructions"]), terms["leaf_probabilities"]


def sample_leaves(probabilities: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One leaf per row drawn from its probabilities (vectorised Multinomial)."""
    return torch.multinomial(probabilities.float().clamp(min=0), 1, generator=generator)[:, 0]


class RefinerFamily(FamilyDefaults):
    """``diffuse_treevae``: the TreeVAE refiner (module docstring)."""

    name = "diffuse_treevae"

    def parse(self, run: Any) -> ParsedRefiner:
        config = from_dict(RefinerModelConfig, run.model, "model")
        tree_run = base_run(config.treevae, "treevae", "model.treevae")
        if (tree_run.data.image_size, tree_run.data.channels) != (run.data.image_size, run.data.channels):
            raise ConfigError(f"data.image_size/channels: the TreeVAE was trained on {tree_run.data.channels}x"
                              f"{tree_run.data.image_size}^2 images, got {run.data.channels}x{run.data.image_size}^2")
        leaves = len(base_structure(config.treevae)["tree"]["leaves"])
        diffusion = from_dict(DiffusionConfig, {**LATENT_DIFFUSION, **config.diffusion}, "model.diffusion")
        return ParsedRefiner(config, tree_run, leaves, diffusion)

    def setup(self, run: Any) -> dict[str, Any]:
        parsed = self.parse(run)
        return {"parsed": parsed, "diffusion": _diffusion(parsed)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        return {"mse": 1.0}

    def needs_pool(self, run: Any) -> bool:
        return False

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> RefinerModel:
        from diffusers import UNet2DModel

        from raytopo.registry import get_family

        parsed = self.parse(run)
        if structure:
            check_pairing(parsed.config.treevae, "treevae", "model.treevae", structure.get("treevae_fingerprint"))
            treevae = get_family("treevae").build(parsed.tree_run, structure["treevae_structure"])
        else:
            treevae = load_base(parsed.config.treevae, "treevae", "model.treevae")
        leaves = len(treevae.leaf_paths)
        unet_settings = parsed.config.unet
        blocks = len(unet_settings.block_out_channels)
        channels = run.data.channels
        unet = UNet2DModel(sample_size=run.data.image_size + (-run.data.image_size) % 4, in_channels=2 * channels,
                           out_channels=channels, down_block_types=("DownBlock2D",) * blocks,
                           up_block_types=("UpBlock2D",) * blocks,
                           block_out_channels=tuple(unet_settings.block_out_channels),
                           layers_per_block=unet_settings.layers_per_block, num_class_embeds=leaves + 1,
                           resnet_time_scale_shift="scale_shift", dropout=unet_settings.dropout,
                           norm_num_groups=unet_settings.norm_num_groups)
        model = RefinerModel(treevae, unet, leaves, run.data.image_size)
        model.treevae_fingerprint = (structure or {}).get("treevae_fingerprint") or \
            weights_fingerprint(treevae.state_dict())
        return model

    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        from raytopo.registry import get_family

        return {"treevae_structure": get_family("treevae").structure(model.treevae),
                "treevae_fingerprint": model.treevae_fingerprint}

    def parameter_groups(self, model: RefinerModel, run: Any, stage: Stage) -> list[ParamGroup]:
        return [ParamGroup("unet", list(model.unet.parameters()))]

    def losses(self, model: RefinerModel, batch: Mapping[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        from raytopo.diffusion.guidance import drop_labels

        parsed: ParsedRefiner = ctx.extras["parsed"]
        images = batch["image"]
        reconstructions, probabilities = model.reconstructions(images)
        leaf = sample_leaves(probabilities, ctx.generator)
        cond = reconstructions[torch.arange(len(images)), leaf]
        label = drop_labels(leaf, model.null_class, parsed.config.label_drop, ctx.generator)
        return {"mse": diffusion_mse(model, ctx.extras["diffusion"], images, ctx, label=label, cond=cond)}

    # --- sampling ------------------------------------------------------------------------------

    def sampling_conditions(self, run: Any) -> str:
        return "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def sample(self, model: RefinerModel, run: Any, n: int, cond: Mapping[str, Tensor], settings: Any) -> Tensor:
        """``n`` refined images in [-1, 1]: with ``cond["cond"]`` / ``cond["label"]`` those images and leaves;
        otherwise `refined_samples`."""
        if "cond" in cond:
            return refine(model, self.parse(run), cond["cond"], cond["label"], settings)
        return refined_samples(model, self.parse(run), n, settings)[0]

    def preview(self, model: RefinerModel, run: Any) -> dict[str, tuple[Tensor, list[str] | None]]:
        """The three sampling modes, each unrefined above refined: eight TreeVAE samples (``refined``), every
        leaf of one root sample (``leaves``, captioned with the leaf's path) and eight held-out images above
        their reconstructions (``reconstructions``)."""
        from raytopo.data.sources import held_out_arrays
        from raytopo.families.sampling import SamplerSettings

        parsed, settings = self.parse(run), SamplerSettings(steps=run.train.sample_steps)
        refined, unrefined, _ = refined_samples(model, parsed, 8, settings)
        sharp_leaves, blurry_leaves = refined_leaves(model, parsed, settings)
        paths = [path or "root" for path in model.treevae.leaf_paths]
        images = torch.from_numpy(held_out_arrays(run.data, 8)["image"])
        sharp_reconstructions, blurry_reconstructions = refined_reconstructions(model, parsed, images, settings)
        return {"refined": (torch.cat([unrefined, refined]), None),
                "leaves": (torch.cat([blurry_leaves, sharp_leaves]), paths * 2),
                "reconstructions": (torch.cat([images, blurry_reconstructions, sharp_reconstructions]), None)}

    def evaluate_model(self, model: RefinerModel, run: Any, settings: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """Pixel MMD^2 and sliced Wasserstein distance against ``n = per_count x 10`` held-out images of

        - ``n`` generated samples, refined (``mmd_refined``, ``swd_refined``) and not (the TreeVAE's own,
          ``mmd_unrefined``, ``swd_unrefined``), and their ratio ``mmd_ratio`` (below 1: the refiner helps);
        - the reconstructions of ``n`` other held-out images (the reference's ``recons`` mode), refined and not
          (``mmd_recons_refined``, ``mmd_recons_unrefined``, ``swd_recons_*``).

        The two held-out sets are disjoint, so a reconstruction is never scored against its own source image."""
        from raytopo.data.sources import held_out_arrays
        from raytopo.eval.distribution import distribution_distances

        n = per_count * 10
        parsed = self.parse(run)
        held_out = torch.from_numpy(held_out_arrays(run.data, 2 * n)["image"])
        sources, real = held_out[:n], held_out[n:]
        samples, reconstructions = [], []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            batch_settings = replace(settings, seed=settings.seed + start)
            samples.append(refined_samples(model, parsed, size, batch_settings)[:2])
            reconstructions.append(refined_reconstructions(model, parsed, sources[start:start + size],
                                                           batch_settings))
        scores = {}
        for prefix, pairs in (("", samples), ("recons_", reconstructions)):
            for index, kind in enumerate(("refined", "unrefined")):
                images = torch.cat([pair[index].cpu() for pair in pairs])
                distances = distribution_distances(images, real, seed=settings.seed)
                scores[f"mmd_{prefix}{kind}"], scores[f"swd_{prefix}{kind}"] = distances["mmd"], distances["swd"]
        scores["mmd_ratio"] = scores["mmd_refined"] / scores["mmd_unrefined"] if scores["mmd_unrefined"] else 0.0
        return scores

    def metric_names(self, run: Any) -> set[str]:
        return {f"{metric}_{prefix}{kind}" for metric in ("mmd", "swd") for prefix in ("", "recons_")
                for kind in ("refined", "unrefined")} | {"mmd_ratio"}


def _diffusion(parsed: ParsedRefiner):
    from raytopo.diffusion.respace import build_diffusion

    return build_diffusion(parsed.diffusion, "")


DEFAULT_ETA = 1.0
"""The refiner samples stochastically unless told otherwise (``eta`` None -> 1; ``--eta 0`` for plain DDIM).
Measured on the garments refiner after 1500 steps, 16 held-out reconstructions: deterministic samplers (DDIM
eta 0 at 25 and 250 steps, DPM-Solver++(2M) at 25) turned 5-6 of them into speckle (mean vertical pixel
difference 0.17-0.58 against 0.08-0.15 for the real images; MSE to the real images 0.08-0.14), while DDIM eta 1
and Euler ancestral at 25 steps stayed within the real images' range (0.04-0.11; MSE 0.023), like the
reference's ancestral sampler. The eps-prediction model's x0 estimates at high noise are ill-conditioned (an eps error is multiplied
by sigma), and only the re-injected noise lets later steps correct them."""


@torch.no_grad()
def refine(model: RefinerModel, parsed: ParsedRefiner, cond: Tensor, label: Tensor, settings: Any) -> Tensor:
    """Refined versions of TreeVAE images ``cond`` [n, C, H, W] in [-1, 1] made by leaves ``label`` (the null
    index L: unconditional), from x_T = c + sigma_T eps (form 1's start), guidance on the leaf."""
    from raytopo.diffusion.denoisers import DiscreteVPDenoiser
    from raytopo.diffusion.guidance import GuidedModel
    from raytopo.families.sampling import sample_from, schedule_sigmas

    if label.numel() and (int(label.min()) < 0 or int(label.max()) > model.leaves):
        raise InputError(f"leaf: expected indices 0..{model.leaves - 1} (or {model.leaves}, none), got "
                         f"{sorted(set(label.tolist()))}")
    if settings.eta is None:
        settings = replace(settings, eta=DEFAULT_ETA)
    parameter = next(model.unet.parameters())
    cond, label = cond.to(parameter.device, parameter.dtype), label.to(parameter.device).long()
    guidance = parsed.config.guidance if settings.guidance is None else settings.guidance
    denoiser = DiscreteVPDenoiser(GuidedModel(model, model.null_class, guidance), _diffusion(parsed),
                                  {"label": label, "cond": cond}, clip=settings.clip)
    sigmas = schedule_sigmas(denoiser, settings).to(device=parameter.device, dtype=parameter.dtype)
    generator = torch.Generator(device=parameter.device).manual_seed(settings.seed)
    x = cond + sigmas[0] * torch.randn(cond.shape, generator=generator, device=parameter.device,
                                       dtype=parameter.dtype)
    with eval_mode(model):
        return sample_from(denoiser, x, sigmas, settings, generator).clamp(-1, 1)


@torch.no_grad()
def refined_samples(model: RefinerModel, parsed: ParsedRefiner, n: int, settings: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(refined, unrefined, leaf) for ``n`` root samples routed by p; the leaf is the most probable one or, with
    ``model.leaf: sample``, drawn from p."""
    images, probabilities = generate(model.treevae, n, settings.seed)
    if parsed.config.leaf == "sample":
        leaf = sample_leaves(probabilities, torch.Generator().manual_seed(settings.seed))
    else:
        leaf = probabilities.argmax(dim=1)
    unrefined = from_unit(images[torch.arange(n), leaf])
    return refine(model, parsed, unrefined, leaf, settings), unrefined, leaf


@torch.no_grad()
def refined_leaves(model: RefinerModel, parsed: ParsedRefiner, settings: Any) -> tuple[Tensor, Tensor]:
    """(refined, unrefined) images of every leaf of one root sample: [L, C, H, W] each."""
    images, _ = generate(model.treevae, 1, settings.seed)
    unrefined = from_unit(images[0])
    return refine(model, parsed, unrefined, torch.arange(model.leaves), settings), unrefined


@torch.no_grad()
def refined_reconstructions(model: RefinerModel, parsed: ParsedRefiner, images: Tensor,
                            settings: Any) -> tuple[Tensor, Tensor]:
    """(refined, unrefined) reconstructions of real ``images`` in [-1, 1] by their most probable leaf (the
    reference's ``recons`` mode noised the real image instead of the reconstruction)."""
    unrefined, leaf, _ = reconstruct(model.treevae, images)
    return refine(model, parsed, unrefined, leaf, settings), unrefined
