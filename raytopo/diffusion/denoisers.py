"""Adapters that turn trained networks into the samplers' `Denoiser`: ``denoiser(x, sigma [B]) -> x0 estimate``,
in the VE convention x = x0 + sigma * eps (see ``raytopo.diffusion.samplers``).

A denoiser object also exposes ``sigma_min``, ``sigma_max`` and ``sigmas(steps)`` (its natural schedule), which is
all ``raytopo.families.sampling.sample_with`` needs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from raytopo.diffusion.gaussian import GaussianDiffusion
from raytopo.errors import ConfigError
from raytopo.diffusion.samplers import sigma_to_timestep, vp_sigma_table, vp_sigmas


class DiscreteVPDenoiser:
    """A discrete-time VP network (ADM/TDN: ``model(x_t, t_model, **kwargs)`` through ``diffusion.call_model``)
    as a VE denoiser, like k-diffusion's ``DiscreteEpsDDPMDenoiser``.

    For a VE state x at noise level sigma:

    1. x_vp = x / sqrt(1 + sigma^2) (sqrt(abar) = 1 / sqrt(1 + sigma^2));
    2. t = the diffusion step whose sigma_t = sqrt((1 - abar_t)/abar_t) is nearest to sigma in log sigma. This is
       exact on a `vp_sigmas` grid (the default ``sigmas(steps)``); off the grid (e.g. a Karras schedule) the
       network sees the nearest step it was trained on;
    3. the network output's mean channels give x0 = x - sigma * eps for an epsilon model, or x0 directly for an
       x0 model; a learned variance's channels are used only by ``ddpm_learned`` (`with_variance`);
    4. x0 is clamped to [-1, 1] when ``clip`` (as GaussianDiffusion's ``clip``).
    """

    def __init__(self, model: Callable[..., Tensor], diffusion: GaussianDiffusion,
                 model_kwargs: Mapping[str, Any] | None = None, clip: bool = True, offset: int = 0) -> None:
        self.model = model
        self.offset = offset
        self.diffusion = diffusion
        self.model_kwargs = dict(model_kwargs or {})
        self.clip = bool(clip)
        self.sigma_table = vp_sigma_table(diffusion.alphas_cumprod)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table.min())

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table.max())

    def sigmas(self, steps: int) -> Tensor:
        """The diffusion's own sigmas at ``min(steps, num_timesteps)`` evenly strided steps shifted by ``offset``
        (`vp_sigmas`), then 0."""
        return vp_sigmas(self.diffusion.alphas_cumprod, min(steps, self.diffusion.num_timesteps), self.offset)

    def timesteps(self, sigma: Tensor) -> Tensor:
        """The diffusion step index used for each sigma (nearest in log sigma)."""
        if self.sigma_table.device != sigma.device:  # move the table once, not at every step
            self.sigma_table = self.sigma_table.to(sigma.device)
        return sigma_to_timestep(sigma, self.sigma_table)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self._denoise(x, sigma)[0]

    def with_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x0 estimate, f): f = (v + 1) / 2 from the learned-variance channels v (iDDPM eq. 15), as
        ``sample_ddpm_learned`` takes it. A model without learned variance is a ConfigError."""
        x0, var_values = self._denoise(x, sigma)
        if var_values is None:
            raise ConfigError(f"sampler ddpm_learned: the model has no learned variance (var_type "
                              f"{self.diffusion.var_type!r}); expected var_type learned_range")
        return x0, (var_values + 1.0) / 2.0

    def _denoise(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        scale = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        x_vp = x / torch.sqrt(1.0 + scale**2)
        t = self.timesteps(sigma)
        output = self.diffusion.call_model(self.model, x_vp, t, self.model_kwargs)
        mean_part, var_values = self.diffusion.split_output(output, x_vp)
        x0 = x - scale * mean_part if self.diffusion.mean_type == "epsilon" else mean_part
        return (x0.clamp(-1.0, 1.0) if self.clip else x0), var_values


__all__ = ["DiscreteVPDenoiser"]
