"""Sampling settings and the sampling driver shared by the diffusion families.

Every family samples through the sampler library (``raytopo.diffusion.samplers``) over its own `Denoiser`
object (with ``sigma_min``, ``sigma_max`` and ``sigmas(steps)``): `sample_with` draws the initial noise, picks the
schedule and runs the named sampler. `run_sampler` does this for the ADM/TDN family (``adm``, ``adm_t``, ``tdn``)
through ``DiscreteVPDenoiser``.

Note for ADM/TDN models trained with a learned variance (``var_type: learned_range``): library samplers use only
the model's mean (eps or x0) prediction, never its learned variance; ``ddpm`` samples with the posterior
variance beta~ (Ho et al. 2020, eq. 7), i.e. improved-diffusion's ``fixed_small``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence

import torch

from raytopo.config import Checked
from raytopo.diffusion.samplers import SCHEDULES, USES_ETA, check_sampler_name, karras_sigmas, sample
from raytopo.errors import ConfigError
from raytopo.families.base import eval_mode


@dataclass(frozen=True)
class SamplerSettings(Checked):
    """How to sample: a registered sampler ``name`` over ``steps`` steps of ``schedule``.

    * ``name``: one of ``raytopo.diffusion.samplers.SAMPLERS`` (ddim, ddpm, euler, heun, dpm2, euler_ancestral,
      dpmpp_2m, onestep). Library samplers ignore a learned variance; ``ddpm`` uses the posterior variance.
    * ``eta`` in [0, 1] or None for the sampler's default (ddim 0: deterministic; euler_ancestral 1). Only ddim
      and euler_ancestral use it; the other samplers ignore it.
    * ``schedule``: ``default`` is the denoiser's natural grid (for discrete VP models the evenly strided steps
      of DDIM respacing); ``karras`` is Karras et al. 2022 eq. 5 between the denoiser's sigma_min and sigma_max
      with exponent ``rho``.
    * ``clip``: clamp x0 estimates to [-1, 1] (applied by the family's denoiser; latent families never clip
      latents).
    * ``guidance``: the classifier-free guidance scale s of families trained with label drop (``ldm``,
      ``controlnet``): eps = eps_u + s (eps_c - eps_u); None: the model's own ``model.guidance``. Other
      families ignore it.
    * ``conditioning_scale``: the ControlNet residuals' factor (``controlnet``; None: ``model.conditioning_scale``).
    """

    name: str = "ddim"
    steps: int = 50
    eta: float | None = None
    seed: int = 0
    clip: bool = True
    schedule: Literal["default", "karras"] = "default"
    rho: float = 7.0
    guidance: float | None = None
    conditioning_scale: float | None = None

    def __post_init__(self) -> None:
        check_sampler_name(self.name, "sampler name")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"sampler steps: expected an integer >= 1, got {self.steps!r}")
        if self.eta is not None and (isinstance(self.eta, bool) or not isinstance(self.eta, (int, float))
                                     or not 0.0 <= self.eta <= 1.0):
            raise ConfigError(f"sampler eta: expected a number in [0, 1] or null, got {self.eta!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"sampler schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not self.rho > 0:
            raise ConfigError(f"sampler rho: expected a number > 0, got {self.rho!r}")
        for name in ("guidance", "conditioning_scale"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"sampler {name}: expected a number >= 0 or null, got {value!r}")


class ScheduledDenoiser(Protocol):
    """What `sample_with` needs from a family's denoiser."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def sigmas(self, steps: int) -> torch.Tensor: ...


def schedule_sigmas(denoiser: ScheduledDenoiser, settings: SamplerSettings) -> torch.Tensor:
    """The descending sigmas (ending in 0) that ``settings`` asks for on this denoiser."""
    if settings.schedule == "karras":
        return karras_sigmas(settings.steps, denoiser.sigma_min, denoiser.sigma_max, settings.rho)
    return denoiser.sigmas(settings.steps)


def sample_with(denoiser: ScheduledDenoiser, shape: Sequence[int], settings: SamplerSettings,
                device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Samples of ``shape`` from ``denoiser`` with ``settings``: x = sigmas[0] * N(0, I) from ``settings.seed``,
    then the named sampler (the same generator drives its noise, so the result is reproducible)."""
    sigmas = schedule_sigmas(denoiser, settings).to(device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype) * sigmas[0]
    return sample_from(denoiser, x, sigmas, settings, generator)


def sample_from(denoiser: ScheduledDenoiser, x: torch.Tensor, sigmas: torch.Tensor, settings: SamplerSettings,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``settings``' sampler run from ``x`` (initial noise already scaled by ``sigmas[0]``) over ``sigmas``."""
    eta = {"eta": settings.eta} if settings.eta is not None and settings.name in USES_ETA else {}
    with torch.no_grad():
        return sample(settings.name, denoiser, x, sigmas, generator=generator, **eta)


def run_sampler(family: Any, model: torch.nn.Module, run: Any, n: int, cond: Mapping[str, torch.Tensor],
                settings: SamplerSettings) -> torch.Tensor:
    """``n`` samples in [-1, 1] from an ADM/TDN family's model, conditioned on ``cond`` (e.g. counts).

    The model goes through ``DiscreteVPDenoiser`` over the run's full diffusion; only its mean prediction is
    used (a learned variance is ignored; ``ddpm`` uses the posterior variance beta~).
    """
    from raytopo.diffusion.denoisers import DiscreteVPDenoiser

    parsed = family.parse(run)
    parameter = next(model.parameters())
    device = parameter.device
    kwargs = family.model_kwargs({k: v.to(device) for k, v in cond.items()}) if cond else {}
    denoiser = DiscreteVPDenoiser(model, family.diffusion(run), kwargs, clip=settings.clip)
    shape = (n, parsed.unet.in_channels, parsed.unet.image_size, parsed.unet.image_size)
    with eval_mode(model):
        return sample_with(denoiser, shape, settings, device, parameter.dtype)
