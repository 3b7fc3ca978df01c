"""Training noise levels for continuous-time diffusion: small functions taking a ``torch.Generator``.

Every function returns a float32 tensor ``[n]`` on ``device`` and draws only from ``generator`` (on its own
device; ``None`` uses torch's global generator), so a trainer that re-seeds its generator every step draws
exactly the same levels after a resume.

* `lognormal_sigmas`: EDM's training distribution ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1,
  "Noise distribution"; P_mean = -1.2, P_std = 1.2), which the Group-Diffusion reference calls ``lognormal``.
* `uniform_times`: t ~ U(t_min, t_max), for a formulation with its own time variable (the cosine VP process).
* `raytopo.diffusion.samplers.karras_ramp`: the rho-warped interpolation between sigma_max and sigma_min that Karras et al. 2022 (eq. 5)
  use for their sampling grid, for a continuous position u in [0, 1]; `karras_grid_sigmas` draws uniformly
  among the ``steps`` points of that grid (the levels a Karras sampler visits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from raytopo.diffusion.samplers import karras_ramp
from raytopo.errors import InputError

P_MEAN = -1.2
P_STD = 1.2


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Draw on the generator's device (torch requires it), return on the requested one."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n: expected a whole number >= 1 of noise levels, got {n!r}")


def lognormal_sigmas(n: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN,
                     p_std: float = P_STD, device: torch.device | str | None = None) -> Tensor:
    """``n`` noise levels sigma = exp(P_mean + P_std * N(0, 1)) (Karras et al. 2022, Table 1)."""
    _check_count(n)
    if not p_std > 0:
        raise InputError(f"p_std: expected > 0, got {p_std}")
    normal = torch.randn(n, generator=generator, device=_device(generator, device))
    return (p_mean + p_std * normal).exp().to(device or normal.device)


def uniform_times(n: int, generator: torch.Generator | None = None, t_min: float = 0.0, t_max: float = 1.0,
                  device: torch.device | str | None = None) -> Tensor:
    """``n`` times t ~ U(t_min, t_max)."""
    _check_count(n)
    if not t_min < t_max:
        raise InputError(f"t_min/t_max: expected t_min < t_max, got {t_min}, {t_max}")
    u = torch.rand(n, generator=generator, device=_device(generator, device))
    return (t_min + (t_max - t_min) * u).to(device or u.device)


def karras_ramp_sigmas(n: int, generator: torch.Generator | None = None, sigma_min: float = 0.002,
                       sigma_max: float = 80.0, rho: float = 7.0, device: torch.device | str | None = None) -> Tensor:
    """``n`` levels at uniformly random continuous positions u ~ U(0, 1) of the Karras ramp (`karras_ramp`)."""
    return karras_ramp(uniform_times(n, generator, 0.0, 1.0, device), sigma_min, sigma_max, rho)


def karras_grid_sigmas(n: int, steps: int, generator: torch.Generator | None = None, sigma_min: float = 0.002,
                       sigma_max: float = 80.0, rho: float = 7.0, device: torch.device | str | None = None) -> Tensor:
    """``n`` levels drawn uniformly among the ``steps`` points of the Karras sampling grid (sigma_max first)."""
    _check_count(n)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InputError(f"steps: expected a whole number >= 2 of grid points, got {steps!r}")
    index = torch.randint(0, steps, (n,), generator=generator, device=_device(generator, device))
    u = index.double() / (steps - 1)
    return karras_ramp(u, sigma_min, sigma_max, rho).float().to(device or index.device)


__all__ = ["P_MEAN", "P_STD", "lognormal_sigmas", "uniform_times", "karras_ramp", "karras_ramp_sigmas",
           "karras_grid_sigmas"]
