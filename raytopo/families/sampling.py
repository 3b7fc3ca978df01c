"""Sampling settings and the DDPM/DDIM driver shared by the diffusion families."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch

from raytopo.errors import ConfigError


@dataclass(frozen=True)
class SamplerSettings:
    """Which sampler to run: ``ddim`` (deterministic at eta 0) or ``ddpm`` (ancestral), over ``steps`` steps."""

    name: Literal["ddim", "ddpm"] = "ddim"
    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    clip: bool = True

    def __post_init__(self) -> None:
        if self.name not in ("ddim", "ddpm"):
            raise ConfigError(f"sampler: expected one of ddim, ddpm, got {self.name!r}")
        if self.steps < 1:
            raise ConfigError(f"sampler steps: expected >= 1, got {self.steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"sampler eta: expected a number in [0, 1], got {self.eta}")

    def respacing(self, num_steps: int) -> str:
        """The respacing string for this many steps (``ddimN`` strides evenly for DDIM)."""
        steps = min(self.steps, num_steps)
        return f"ddim{steps}" if self.name == "ddim" and num_steps % steps == 0 else str(steps)


def run_sampler(family: Any, model: torch.nn.Module, run: Any, n: int, cond: Mapping[str, torch.Tensor],
                settings: SamplerSettings) -> torch.Tensor:
    """``n`` samples in [-1, 1] from a diffusion family's model, conditioned on ``cond`` (e.g. counts)."""
    parsed = family.parse(run)
    diffusion = family.diffusion(run, settings.respacing(parsed.diffusion.steps))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    shape = (n, parsed.unet.in_channels, parsed.unet.image_size, parsed.unet.image_size)
    kwargs = family.model_kwargs({k: v.to(device) for k, v in cond.items()}) if cond else {}
    loop = diffusion.ddim_sample_loop if settings.name == "ddim" else diffusion.p_sample_loop
    extra = {"eta": settings.eta} if settings.name == "ddim" else {}
    was_training = model.training
    model.eval()
    try:
        return loop(model, shape, clip=settings.clip, model_kwargs=kwargs, device=device, generator=generator, **extra)
    finally:
        model.train(was_training)
