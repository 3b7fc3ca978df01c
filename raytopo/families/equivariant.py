"""The ``equivariant`` family: group-equivariant diffusion (Structure Preserving Diffusion, docs/references.md, Equivariant B).

A diffusion model whose denoiser should commute with a group G of grid symmetries (trivial, Z2 = horizontal
flips, C4, D4), so that sampling preserves a G-invariant data distribution. Three mechanisms (B.2), alone or
combined:

1. equivariant layers (``mechanism: kernel | symmetric | group``; ``none`` = the plain UNet),
2. the equivariance regulariser (``regulariser.weight > 0``, the reference's ``--eqv_reg``),
3. frame-averaged sampling (``averaging: true``), exactly equivariant at |G| times the cost.

Formulations (B.3, `raytopo.diffusion.formulations`): EDM preconditioning or the cosine VP process (the
reference's ``ddim``), optional self-conditioning, optional class conditioning. Sampling goes through the sampler
library (`raytopo.families.sampling.sample_with`), so every registered sampler works.

The ``model:`` section of a run config:

```yaml
model:
  unet: {model_channels: 32, num_res_blocks: 1, attention_resolutions: []}   # UNetConfig fields
  group: C4                  # trivial | Z2 | C4 | D4; null = the data's group (data.group)
  mechanism: kernel          # none | kernel | symmetric | group
  regulariser: {weight: 0.0, ema: 0.95}
  formulation: {kind: edm, pred: x, sigma_data: 0.5, sigma_min: 0.002, sigma_max: 80, rho: 7,
                self_cond: false, noise_levels: lognormal}
  averaging: false
  num_classes: 0             # > 0: class-conditional (batches need "label": garments, npy with labels_path)
```
``unet.image_size`` and ``unet.in_channels`` come from the data section (doubled with self-conditioning);
``conv_resample`` is False (2x2 average pooling and nearest upsampling commute with the group; strided convs
do not), for every mechanism, so that a plain and an equivariant model have the same architecture.

The regulariser (B.2 item 2): a target network F_T, an EMA copy of the network (rate ``regulariser.ema``,
the reference's ``start_ema``), is kept *inside* the built module as a frozen submodule ``target`` (so it is
checkpointed and resumed exactly and never receives gradients); it is updated once per optimisation step, lazily
at the first loss call of the next step (the buffer ``target_step`` records which step it reflects). Each loss
call draws one non-identity g from the step's generator and adds the per-sample term
mean((F(x) - g^-1 F_T(g x))^2) on the raw network output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from raytopo.config import Checked, from_dict
from raytopo.diffusion.formulations import (
    BoundDenoiser,
    Formulation,
    FormulationConfig,
    NetworkDenoiser,
    call_network,
    make_formulation,
    self_condition_input,
)
from raytopo.diffusion.gaussian import mean_flat
from raytopo.errors import ConfigError
from raytopo.families.base import FamilyDefaults, StepContext, eval_mode
from raytopo.models.adm.unet import UNetConfig
from raytopo.models.equivariant import GroupAveraged, act, build_equivariant_unet, get_group, inverse
from raytopo.models.ema import make_ema, update_ema

GroupName = Literal["trivial", "Z2", "C4", "D4"]
MechanismName = Literal["none", "kernel", "symmetric", "group"]

_UNET_DEFAULTS: dict[str, Any] = {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": (),
                                  "conv_resample": False}
_UNET_FROM_ELSEWHERE = {"image_size": "data.image_size", "in_channels": "data.channels",
                        "num_classes": "model.num_classes"}
_UNET_UNSUPPORTED = ("learn_sigma", "count_cond", "two_counts", "num_objects")
NOISE_LEVELS_FOR_EVAL = (0.2, 1.0, 5.0)
"""VE noise levels at which evaluation measures the network's equivariance error."""


@dataclass(frozen=True)
class RegulariserSettings(Checked):
    """The equivariance regulariser (reference ``--eqv_reg``): term weight (0 = off) and the target's EMA rate."""

    weight: float = 0.0
    ema: float = 0.95

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"model.regulariser.weight: expected >= 0 (0 = off), got {self.weight}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"model.regulariser.ema: expected a rate in [0, 1), got {self.ema}")


@dataclass(frozen=True)
class EquivariantModelConfig(Checked):
    """The ``model:`` section (see the module docstring)."""

    unet: dict[str, Any] = field(default_factory=dict)
    group: GroupName | None = None
    mechanism: MechanismName = "kernel"
    regulariser: RegulariserSettings = field(default_factory=RegulariserSettings)
    formulation: FormulationConfig = field(default_factory=FormulationConfig)
    averaging: bool = False
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.group is not None and self.group not in ("trivial", "Z2", "C4", "D4"):
            raise ConfigError(f"model.group: expected one of trivial, Z2, C4, D4 or null, got {self.group!r}")
        if self.mechanism not in ("none", "kernel", "symmetric", "group"):
            raise ConfigError(f"model.mechanism: expected one of none, kernel, symmetric, group, "
                              f"got {self.mechanism!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ConfigError(f"model.num_classes: expected a whole number >= 0 (0 = unconditional), "
                              f"got {self.num_classes!r}")
        for name in sorted(set(self.unet) & (set(_UNET_FROM_ELSEWHERE) | set(_UNET_UNSUPPORTED))):
            source = _UNET_FROM_ELSEWHERE.get(name)
            reason = f"set by {source}" if source else "not supported by the equivariant family"
            raise ConfigError(f"model.unet.{name}: {reason}; remove it from model.unet")


@dataclass(frozen=True)
class ParsedEquivariant:
    """A fully validated ``equivariant`` model section."""

    unet: UNetConfig
    group: str
    mechanism: str
    regulariser: RegulariserSettings
    formulation: FormulationConfig
    averaging: bool
    num_classes: int
    channels: int


class EquivariantDiffusionModel(nn.Module):
    """The trained module: ``net`` (the possibly constrained UNet, ``forward`` = its forward) and, when the
    regulariser is on, ``target``: its frozen EMA copy F_T with the buffer ``target_step`` (module docstring)."""

    def __init__(self, net: nn.Module, with_target: bool) -> None:
        super().__init__()
        self.net = net
        if with_target:
            self.target = make_ema(net)
            self.register_buffer("target_step", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor, timesteps: Tensor, **model_kwargs: Tensor) -> Tensor:
        return self.net(x, timesteps, **model_kwargs)

    @property
    def has_target(self) -> bool:
        return hasattr(self, "target")

    def train(self, mode: bool = True) -> "EquivariantDiffusionModel":
        """As ``nn.Module.train``, except that the target network always stays in eval mode (reference)."""
        super().train(mode)
        if self.has_target:
            self.target.eval()
        return self

    @torch.no_grad()
    def sync_target(self, step: int, rate: float) -> None:
        """Before the first loss of optimisation step ``step``: F_T <- rate F_T + (1 - rate) F, once per step.

        The update uses the weights after step ``step - 1``, i.e. it is the reference's update after every
        optimiser step, applied lazily; ``target_step`` makes a resumed run apply exactly the same updates.
        """
        if step > int(self.target_step):
            update_ema(self.target, self.net, rate)
            self.target_step.fill_(step)


def _network(model: nn.Module) -> nn.Module:
    """The UNet inside a (possibly DDP-wrapped) EquivariantDiffusionModel."""
    model = getattr(model, "module", model)
    return model.net if isinstance(model, EquivariantDiffusionModel) else model


class EquivariantFamily(FamilyDefaults):
    """Registered as ``equivariant``."""

    def augmentations_kept(self, run: Any) -> frozenset[str]:
        """Crops, and the flips and turns of ``data.group``: a transformation outside the group would change the
        group-invariant distribution the model is built to learn (a C4 model given mirrored chiral glyphs)."""
        from raytopo.data.augment import group_transformations

        return group_transformations(run.data.group) | {"crop"}

    name = "equivariant"

    # --- configuration -------------------------------------------------------------------------

    def parse(self, run: Any) -> ParsedEquivariant:
        model = from_dict(EquivariantModelConfig, run.model, "model")
        group = model.group or run.data.group
        _check_sources(run, model, group)
        channels = run.data.channels
        in_channels = channels * (2 if model.formulation.self_cond else 1)
        fields = {**_UNET_DEFAULTS, **model.unet, "image_size": run.data.image_size, "in_channels": in_channels,
                  "num_classes": model.num_classes}
        unet = from_dict(UNetConfig, fields, "model.unet")
        if model.mechanism != "none" and get_group(group).order > 1 and unet.conv_resample:
            raise ConfigError(f"model.unet.conv_resample: must be false with mechanism {model.mechanism!r} "
                              "(strided convolutions are not equivariant on even grids)")
        return ParsedEquivariant(unet, group, model.mechanism, model.regulariser, model.formulation,
                                 model.averaging, model.num_classes, channels)

    def setup(self, run: Any) -> dict[str, Any]:
        """Per-run state for ``StepContext.extras``: the parsed settings and the formulation."""
        parsed = self.parse(run)
        return {"parsed": parsed, "formulation": make_formulation(parsed.formulation)}

    def loss_weights(self, run: Any) -> dict[str, float]:
        weights = {"denoise": 1.0}
        regulariser = self.parse(run).regulariser
        if regulariser.weight > 0:
            weights["equivariance"] = regulariser.weight
        return weights

    def needs_pool(self, run: Any) -> bool:
        return False

    def sampling_conditions(self, run: Any) -> str:
        """``classes`` for a class-conditional model (``model.num_classes > 0``), else ``none``."""
        return "classes" if self.parse(run).num_classes else "none"

    def default_conditions(self, run: Any, per_count: int) -> dict[str, Tensor]:
        """Every class ``per_count`` times (``{"label": [K * per_count]}``); ``{}`` when unconditional."""
        classes = self.parse(run).num_classes
        return {"label": torch.arange(classes).repeat_interleave(per_count)} if classes else {}

    # --- model ---------------------------------------------------------------------------------

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> EquivariantDiffusionModel:
        parsed = self.parse(run)
        net = build_equivariant_unet(parsed.unet, parsed.group, parsed.mechanism)
        return EquivariantDiffusionModel(net, with_target=parsed.regulariser.weight > 0)

    def model_kwargs(self, batch: Mapping[str, Tensor], parsed: ParsedEquivariant) -> dict[str, Tensor]:
        """``{"classes": labels}`` for a class-conditional model, else nothing."""
        return {"classes": batch["label"].long()} if parsed.num_classes else {}

    # --- training ------------------------------------------------------------------------------

    def losses(self, model: nn.Module, batch: Mapping[str, Tensor], ctx: StepContext) -> dict[str, Tensor]:
        """Per-sample ``denoise`` (the formulation's weighted loss) and, with the regulariser, ``equivariance``."""
        parsed: ParsedEquivariant = ctx.extras["parsed"]
        formulation: Formulation = ctx.extras["formulation"]
        x0 = batch["image"]
        sigma = formulation.sample_sigmas(x0.shape[0], ctx.generator, x0.device)
        noise = torch.randn(x0.shape, generator=ctx.generator, device=x0.device, dtype=x0.dtype)
        pair = formulation.training_pair(x0, sigma, noise)
        kwargs = self.model_kwargs(batch, parsed)
        net = _network(model)
        self_cond = self_condition_input(formulation, net, pair, ctx.generator, kwargs)
        output = call_network(formulation, net, pair.net_input, pair.net_time, self_cond, kwargs)
        terms = {"denoise": pair.weight * mean_flat((output - pair.target) ** 2)}
        if parsed.regulariser.weight > 0:
            wrapper = getattr(model, "module", model)
            wrapper.sync_target(ctx.step, parsed.regulariser.ema)
            terms["equivariance"] = self._regulariser(wrapper.target, formulation, output, pair.net_input,
                                                      pair.net_time, self_cond, kwargs, parsed.group, ctx.generator)
        return terms

    @staticmethod
    def _regulariser(target: nn.Module, formulation: Formulation, output: Tensor, net_input: Tensor,
                     net_time: Tensor, self_cond: Tensor | None, kwargs: Mapping[str, Tensor], group: str,
                     generator: torch.Generator | None) -> Tensor:
        """mean((F(x) - g^-1 F_T(g x))^2) per sample, one random non-identity g per call (docs/references.md, Equivariant B.2)."""
        elements = get_group(group).elements()
        device = generator.device if generator is not None else "cpu"
        g = elements[int(torch.randint(1, len(elements), (), generator=generator, device=device))]
        with torch.no_grad():
            moved_cond = act(g, self_cond) if self_cond is not None else None
            target_out = call_network(formulation, target, act(g, net_input), net_time, moved_cond, kwargs)
            target_out = act(inverse(g), target_out)
        return mean_flat((output - target_out) ** 2)

    # --- sampling ------------------------------------------------------------------------------

    def denoiser(self, model: nn.Module, run: Any, cond: Mapping[str, Tensor], clip: bool = True) -> Any:
        """The sampler-library Denoiser of ``model`` for ``cond``, frame-averaged (`GroupAveraged`) when
        ``model.averaging`` is on. Call ``.reset()`` before each new batch (self-conditioning state)."""
        parsed = self.parse(run)
        device = next(model.parameters()).device
        denoiser: Any = NetworkDenoiser(make_formulation(parsed.formulation), _network(model), clip=clip)
        if parsed.averaging:
            denoiser = GroupAveraged(denoiser, parsed.group)
        kwargs = self.model_kwargs({k: v.to(device) for k, v in cond.items()}, parsed)
        return BoundDenoiser(denoiser, **kwargs)

    @torch.no_grad()
    def sample(self, model: nn.Module, run: Any, n: int, cond: Mapping[str, Tensor], settings: Any) -> Tensor:
        """``n`` images in [-1, 1]; ``settings`` is a SamplerSettings. A class-conditional model takes
        ``cond["label"]`` [n] (without it, classes 0, 1, ... in turn, as ``raytopo sample`` asks)."""
        from raytopo.families.sampling import sample_with

        parsed = self.parse(run)
        if parsed.num_classes and "label" not in cond:
            cond = {**cond, "label": torch.arange(n) % parsed.num_classes}
        parameter = next(model.parameters())
        denoiser = self.denoiser(model, run, cond, clip=settings.clip)
        shape = (n, parsed.channels, parsed.unet.image_size, parsed.unet.image_size)
        with eval_mode(model):
            return sample_with(denoiser, shape, settings, parameter.device, parameter.dtype).clamp(-1.0, 1.0)

    def preview(self, model: nn.Module, run: Any) -> dict[str, tuple[Tensor, list[str] | None]]:
        """Sixteen samples (two per class for a class-conditional model), captioned with their class."""
        from raytopo.families.sampling import SamplerSettings

        parsed = self.parse(run)
        settings = SamplerSettings(steps=run.train.sample_steps)
        if parsed.num_classes:
            labels = self.default_conditions(run, per_count=2)["label"]
            images = self.sample(model, run, len(labels), {"label": labels}, settings)
            return {"samples": (images, [f"class {int(c)}" for c in labels])}
        return {"samples": (self.sample(model, run, 16, {}, settings), None)}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate(self, samples: Tensor, cond: Mapping[str, Tensor]) -> dict[str, float]:
        """Distribution distances of ``samples`` to ``cond["reference"]`` images (``mmd``, ``swd``), if given."""
        from raytopo.eval.distribution import distribution_distances

        result = {"n": float(len(samples))}
        if "reference" in cond:
            result.update(distribution_distances(samples, cond["reference"]))
        return result

    def evaluate_model(self, model: nn.Module, run: Any, settings: Any, per_count: int,
                       batch_size: int) -> dict[str, float]:
        """The family's evaluation of a trained (EMA) model, with ``per_count`` samples per class (the total for
        an unconditional model), drawn ``batch_size`` at a time with ``settings``. Keys:

        * ``mmd`` (rbf MMD^2_u) and ``swd`` (sliced W2) between generated and held-out images
          (`held_out_images`); ``invariance_gap``: max_g mmd(ref, g.gen) - min_g mmd(ref, g.gen);
        * ``net_eqv_err``: the network's relative equivariance error (raw output F, max over g) on held-out images
          noised to each level of NOISE_LEVELS_FOR_EVAL (``net_eqv_err_s0p2`` ...), and their mean;
        * ``sampler_eqv_err``: sample(g x_T) vs g sample(x_T) over 4 initial noises, with the deterministic
          counterpart of ``settings`` (`raytopo.eval.equivariance.deterministic_settings`);
        * ``n``: the number of generated images.
        """
        from raytopo.eval.distribution import distribution_distances
        from raytopo.eval.equivariance import invariance_gap

        from raytopo.families.base import sample_in_batches

        parsed = self.parse(run)
        reference = held_out_images(run, per_count * max(1, parsed.num_classes))
        cond = {"label": torch.from_numpy(reference["label"])} if parsed.num_classes else {}
        with torch.no_grad():
            generated = sample_in_batches(self, model, run, len(reference["image"]), cond, settings, batch_size)
        generated = generated.float().cpu()
        real = torch.from_numpy(reference["image"])
        metrics = {"n": float(len(generated)), **distribution_distances(generated, real, seed=settings.seed)}
        metrics["invariance_gap"] = invariance_gap(real, generated, parsed.group)
        metrics.update(self._network_errors(model, run, real[:8], {k: v[:8] for k, v in cond.items()}))
        metrics["sampler_eqv_err"] = self._sampler_error(model, run, settings, {k: v[:4] for k, v in cond.items()})
        return metrics

    def metric_names(self, run: Any) -> set[str]:
        """The keys `evaluate_model` returns."""
        levels = {f"net_eqv_err_s{level:g}".replace(".", "p") for level in NOISE_LEVELS_FOR_EVAL}
        return {"n", "mmd", "swd", "invariance_gap", "net_eqv_err", "sampler_eqv_err"} | levels

    @torch.no_grad()
    def _network_errors(self, model: nn.Module, run: Any, images: Tensor,
                        cond: Mapping[str, Tensor]) -> dict[str, float]:
        """Relative equivariance error of the raw network output at each evaluation noise level."""
        from raytopo.eval.equivariance import network_equivariance_error

        parsed = self.parse(run)
        formulation = make_formulation(parsed.formulation)
        net = _network(model)
        device = next(model.parameters()).device
        x0 = images.to(device)
        kwargs = self.model_kwargs({k: v.to(device) for k, v in cond.items()}, parsed)
        generator = torch.Generator(device=device).manual_seed(0)
        noise = torch.randn(x0.shape, generator=generator, device=device)

        def network(x: Tensor, t: Tensor) -> Tensor:
            return call_network(formulation, net, x, t, None, kwargs)

        errors = {}
        with eval_mode(model):
            for level in NOISE_LEVELS_FOR_EVAL:
                pair = formulation.training_pair(x0, torch.full((len(x0),), level, device=device), noise)
                key = f"net_eqv_err_s{level:g}".replace(".", "p")
                errors[key] = network_equivariance_error(network, pair.net_input, pair.net_time, group=parsed.group)
        errors["net_eqv_err"] = float(np.mean(list(errors.values())))
        return errors

    @torch.no_grad()
    def _sampler_error(self, model: nn.Module, run: Any, settings: Any, cond: Mapping[str, Tensor]) -> float:
        """Equivariance error of the whole (deterministic) sampler over 4 initial noises."""
        from raytopo.eval.equivariance import deterministic_settings, sampler_equivariance_error
        from raytopo.families.sampling import sample_from, schedule_sigmas

        parsed = self.parse(run)
        chosen = deterministic_settings(settings)
        parameter = next(model.parameters())
        denoiser = self.denoiser(model, run, cond, clip=chosen.clip)
        sigmas = schedule_sigmas(denoiser, chosen).to(parameter.device, parameter.dtype)
        generator = torch.Generator(device=parameter.device).manual_seed(chosen.seed)
        shape = (4, parsed.channels, parsed.unet.image_size, parsed.unet.image_size)
        x_T = torch.randn(shape, generator=generator, device=parameter.device) * sigmas[0]

        def run_sampler(x: Tensor) -> Tensor:
            denoiser.reset()
            return sample_from(denoiser, x, sigmas, chosen)

        with eval_mode(model):
            return sampler_equivariance_error(run_sampler, x_T, parsed.group)


def held_out_images(run: Any, n: int) -> dict[str, np.ndarray]:
    """``n`` evaluation images and their labels: the shared held-out split (`raytopo.data.sources.held_out_arrays`)."""
    from raytopo.data.sources import held_out_arrays

    return {key: value for key, value in held_out_arrays(run.data, n).items() if key in ("image", "label")}


def _check_sources(run: Any, model: EquivariantModelConfig, group: str) -> None:
    """Class conditioning needs labelled batches; the regulariser needs a non-identity element."""
    data = run.data
    if model.num_classes and not data.has_classes:
        raise ConfigError(f"model.num_classes: class conditioning needs labelled data (source garments, "
                          f"class_folder, or npy with labels_path), got source {data.source!r}")
    if model.regulariser.weight > 0 and get_group(group).order == 1:
        raise ConfigError("model.regulariser.weight: the regulariser needs a non-trivial group (Z2, C4 or D4), "
                          "got group 'trivial'")
