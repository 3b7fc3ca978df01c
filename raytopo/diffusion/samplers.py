"""Diffusion samplers over a denoiser, in the VE / k-diffusion convention x = x0 + sigma * eps.

Every sampler is a plain function with one signature::

    sample_<name>(denoiser, x, sigmas, *, generator=None, eta=..., callback=None) -> Tensor

* ``denoiser(x [B, ...], sigma [B]) -> x0 estimate`` (a `Denoiser`); families adapt their networks to it
  (``raytopo.diffusion.denoisers``), so every sampler works for every family.
* ``x`` is the initial noise already scaled by ``sigmas[0]`` (e.g. ``sigmas[0] * randn``).
* ``sigmas`` is a 1-D non-increasing tensor ending in 0 (length steps + 1), e.g. from `karras_sigmas` or
  `vp_sigmas`. It is cast to ``x``'s device and dtype.
* ``generator`` drives every fresh noise draw, so a run is reproducible from its seed.
* ``callback(i, x, denoised)`` is called after step ``i`` with the updated ``x`` and the x0 estimate at
  ``sigmas[i]``.

The probability-flow ODE (Karras et al. 2022, "EDM", eq. 4 with sigma(t) = t) is dx/dsigma = (x - D(x; sigma)) /
sigma. Deterministic samplers (eta is ignored): ``euler``, ``heun``, ``dpm2``, ``dpmpp_2m``, ``onestep``, and
``ddim`` at eta 0. Stochastic samplers: ``ddim`` (eta in [0, 1], default 0), ``euler_ancestral`` (eta >= 0,
default 1), ``ddpm`` (always the full posterior noise; eta is ignored) and ``ddpm_learned`` (ancestral sampling
with the model's own learned variance, iDDPM eq. 15, for denoisers that have one: `VarianceDenoiser`).

In the VE variables three of the classic samplers are one update (`ancestral_update`): DDIM (Song et al. 2021,
eq. 12) with eta is k-diffusion's ``euler_ancestral`` with the same eta; eta = 0 is the Euler step of the ODE;
eta = 1 is ancestral sampling from the true posterior q(x_{sigma'} | x_sigma, x0_hat), i.e. DDPM (Ho et al. 2020,
Algorithm 2) with the posterior variance beta~ (eq. 7). They are registered under their usual names with
their usual default eta.
"""

from __future__ import annotations

import inspect
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from raytopo.diffusion.respace import space_timesteps
from raytopo.errors import ConfigError, InputError

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]
SCHEDULES: tuple[str, ...] = ("default", "karras")


class VarianceDenoiser(Protocol):
    """A denoiser that also gives the learned variance of the reverse step (iDDPM's ``learned_range`` models).

    ``with_variance(x, sigma) -> (x0 estimate, f)`` where ``f = (v + 1) / 2`` is the interpolation fraction of
    Nichol & Dhariwal 2021, eq. 15: log Sigma = f log beta_t + (1 - f) log beta~_t, per element.
    """

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...

    def with_variance(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]: ...


class SamplerFn(Protocol):
    def __call__(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 eta: float = 1.0, callback: Callback | None = None) -> Tensor: ...


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 eq. 5: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < n, then 0.

    Float64, descending, length ``steps + 1``; one step is ``[sigma_max, 0]``.
    """
    _check_steps(steps)
    sigmas = karras_ramp(torch.linspace(0.0, 1.0, steps, dtype=torch.float64), sigma_min, sigma_max, rho)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_ramp(u: Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """sigma(u) = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for positions u in [0, 1]
    (Karras et al. 2022 eq. 5 with u = i / (N - 1)): u = 0 gives sigma_max, u = 1 gives sigma_min."""
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"sigma_min/sigma_max: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ConfigError(f"rho: expected a number > 0, got {rho!r}")
    high, low = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (high + u * (low - high)) ** rho


def vp_sigma_table(alphas_cumprod: Sequence[float] | np.ndarray | Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every discrete step t (float64, ascending in t).

    A VP state x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps is x / sqrt(1 + sigma^2) of the VE state x = x0 + sigma eps.
    """
    abar = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
    return torch.sqrt((1.0 - abar) / abar)


def vp_timesteps(num_steps: int, steps: int) -> list[int]:
    """The discrete steps a ``steps``-step sampler visits: respace's "ddimN" stride when ``steps`` divides
    ``num_steps``, otherwise ``space_timesteps(num_steps, str(steps))``. Ascending."""
    _check_steps(steps)
    if steps > num_steps:
        raise ConfigError(f"steps: expected at most the {num_steps} steps of the diffusion, got {steps}")
    spec = f"ddim{steps}" if num_steps % steps == 0 else str(steps)
    return space_timesteps(num_steps, spec)


def vp_sigmas(alphas_cumprod: Sequence[float] | np.ndarray | Tensor, steps: int, offset: int = 0) -> Tensor:
    """The sigmas of a discrete VP process at the `vp_timesteps` of a ``steps``-step sampler: descending, 0 appended.

    On this grid DDIM/DDPM over ``DiscreteVPDenoiser`` equal GaussianDiffusion's loops respaced the same way.
    ``offset`` shifts every visited step (capped at the last one): diffusers' ``steps_offset=1`` gives the
    latent-diffusion reference's DDIM-50 grid 981, 961, ..., 1 instead of 980, ..., 0.
    """
    table = vp_sigma_table(alphas_cumprod)
    visited = [min(t + offset, len(table) - 1) for t in vp_timesteps(len(table), steps)]
    kept = torch.tensor(sorted(set(visited)), dtype=torch.long)
    return torch.cat([table[kept].flip(0), table.new_zeros(1)])


def sigma_to_timestep(sigma: Tensor, sigma_table: Tensor) -> Tensor:
    """Index of the nearest entry of ``sigma_table`` in log sigma (exact for sigmas taken from the table)."""
    log_table = sigma_table.to(device=sigma.device, dtype=torch.float64).log()
    distance = (sigma.to(torch.float64).clamp(min=1e-300).log()[..., None] - log_table).abs()
    return distance.argmin(dim=-1)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"steps: expected an integer >= 1, got {steps!r}")


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def _prepared(x: Tensor, sigmas: Tensor) -> Tensor:
    """``sigmas`` checked (1-D, >= 2 entries, non-increasing, ending in 0) and cast to ``x``'s device and dtype."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.dim() != 1 or sigmas.shape[0] < 2:
        raise InputError(f"sigmas: expected a 1-D tensor of at least 2 entries, got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or not bool((sigmas[:-1] > 0).all()) or bool((sigmas[1:] > sigmas[:-1]).any()):
        raise InputError("sigmas: expected positive, non-increasing values followed by a final 0")
    return sigmas.to(device=x.device, dtype=x.dtype)


def _at(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar sigma as the per-sample [B] tensor a denoiser takes."""
    return sigma.expand(x.shape[0])


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """dx/dsigma = (x - D(x; sigma)) / sigma, the probability-flow ODE (Karras et al. 2022, eq. 4, sigma(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of k-diffusion's ``get_ancestral_step``.

    sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)), sigma_down = sqrt(sigma'^2 -
    sigma_up^2). In VP variables sigma_up is DDIM's sigma_t(eta) (Song et al. 2021, eq. 16) over sqrt(abar');
    at eta 1 sigma_up^2 is the posterior variance of q(x_{sigma'} | x_sigma, x0) (beta~, Ho et al. eq. 7).
    """
    up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    down = (sigma_next**2 - up**2).clamp(min=0).sqrt()
    return down, up


def ancestral_update(denoiser: Denoiser, x: Tensor, sigmas: Tensor, eta: float,
                     generator: torch.Generator | None, callback: Callback | None) -> Tensor:
    """x' = D + sigma_down (x - D) / sigma + sigma_up z over every step (eta 0: Euler; eta 1: DDPM posterior).

    With eta != 0 one noise tensor is drawn every step, the last included (where sigma_up is 0), exactly as
    GaussianDiffusion's loops draw theirs, so the same generator gives the same samples on a VP grid.
    """
    sigmas = _prepared(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, _at(sigmas[i], x))
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + down * to_d(x, sigmas[i], denoised)
        if eta != 0:
            x = x + up * _noise(x, generator)
        if callback is not None:
            callback(i, x, denoised)
    return x


def _check_eta(eta: float, upper: float | None) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0 or (upper and eta > upper):
        expected = f"a number in [0, {upper:g}]" if upper else "a number >= 0"
        raise ConfigError(f"eta: expected {expected}, got {eta!r}")


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


def sample_euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                 eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """Euler steps of the probability-flow ODE (Karras et al. 2022, eq. 4); deterministic, eta ignored.

    In VE variables this is exactly DDIM at eta 0.
    """
    return ancestral_update(denoiser, x, sigmas, 0.0, generator, callback)


def sample_heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1, no churn): an Euler step, then the trapezoidal
    correction with the slope at sigma_{i+1}; the last step (to sigma = 0) is plain Euler. Deterministic,
    eta ignored; 2 * steps - 1 denoiser calls."""
    sigmas = _prepared(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _at(sigma, x))
        d = to_d(x, sigma, denoised)
        euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = euler
        else:
            d_next = to_d(euler, sigma_next, denoiser(euler, _at(sigma_next, x)))
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_dpm2(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """k-diffusion's ``sample_dpm_2`` (DPM-Solver-2 in sigma, Karras et al. 2022 appendix): the slope at the
    log-midpoint sigma_mid = sqrt(sigma_i sigma_{i+1}) advances the full step; last step Euler. Deterministic,
    eta ignored; 2 * steps - 1 denoiser calls."""
    sigmas = _prepared(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _at(sigma, x))
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = (sigma.log() + sigma_next.log()).div(2).exp()
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, denoiser(x_mid, _at(sigma_mid, x)))
            x = x + d_mid * (sigma_next - sigma)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                    eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, as k-diffusion's ``sample_dpmpp_2m``) with t = -log sigma:
    x' = (sigma'/sigma) x - expm1(-h) D_i, where D_i = (1 + 1/(2r)) D(x_i) - 1/(2r) D(x_{i-1}), r = h_{i-1}/h_i
    (first step: D(x_0); last step to sigma = 0: the estimate itself). Deterministic, eta ignored."""
    sigmas = _prepared(x, sigmas)
    previous: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, _at(sigma, x))
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            estimate = denoised
            if previous is not None:
                r = (sigmas[i - 1].log() - sigma.log()) / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        previous = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_onestep(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                   eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """One denoiser call at sigmas[0] (consistency-model style, Song et al. 2023); the rest of ``sigmas`` is unused.

    Only a consistency model (trained to map any point of an ODE trajectory to its end) gives samples this way;
    a denoiser returns E[x0 | x], whose spread shrinks to 0 as sigma grows (the posterior mean, not a sample).
    Deterministic, eta ignored.
    """
    sigmas = _prepared(x, sigmas)
    x = denoiser(x, _at(sigmas[0], x))
    if callback is not None:
        callback(0, x, x)
    return x


def sample_ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                eta: float = 0.0, callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16) in VE variables: x' = D + sqrt(sigma'^2 - s^2)
    eps_hat + s z, eps_hat = (x - D)/sigma, s = eta sigma' sqrt(1 - sigma'^2/sigma^2). eta in [0, 1]: 0 is
    deterministic (= euler), 1 is ddpm."""
    _check_eta(eta, upper=1.0)
    return ancestral_update(denoiser, x, sigmas, float(eta), generator, callback)


def sample_euler_ancestral(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *,
                           generator: torch.Generator | None = None, eta: float = 1.0,
                           callback: Callback | None = None) -> Tensor:
    """k-diffusion's ``sample_euler_ancestral``: an Euler step down to sigma_down, then fresh noise sigma_up z
    (`ancestral_step`). eta >= 0 scales the noise (sigma_up is capped at sigma'); 0 is euler. For eta <= 1
    this is the DDIM update with the same eta; default 1."""
    _check_eta(eta, upper=None)
    return ancestral_update(denoiser, x, sigmas, float(eta), generator, callback)


def sample_ddpm(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
                eta: float = 1.0, callback: Callback | None = None) -> Tensor:
    """Ancestral sampling from the true posterior between consecutive sigmas: x' ~ q(x_{sigma'} | x_sigma,
    x0 = D) = N(D + (sigma'^2/sigma^2)(x - D), sigma'^2 (sigma^2 - sigma'^2)/sigma^2). On a VP grid this is
    DDPM (Ho et al. 2020, Algorithm 2) with the posterior variance beta~ (eq. 7) -- not a learned variance.
    Stochastic; eta is ignored (always 1)."""
    return ancestral_update(denoiser, x, sigmas, 1.0, generator, callback)


def sample_ddpm_learned(denoiser: VarianceDenoiser, x: Tensor, sigmas: Tensor, *,
                        generator: torch.Generator | None = None, eta: float = 1.0,
                        callback: Callback | None = None) -> Tensor:
    """Ancestral DDPM with the model's learned variance (Nichol & Dhariwal 2021, eq. 15), on any sigma grid.

    Between consecutive sigmas the step is the VP step with abar = 1 / (1 + sigma^2): beta = 1 - abar / abar'
    (the respaced beta of iDDPM's ``SpacedDiffusion``) and beta~ = beta (1 - abar') / (1 - abar) (Ho et al. 2020,
    eq. 7). The mean is the posterior mean at x0 = D (as `sample_ddpm`); the VP variance is
    exp(f log beta + (1 - f) log beta~) with the denoiser's fraction f, i.e. a VE noise scale of
    sqrt(Sigma / abar'). The last step (to sigma = 0) adds no noise. f = 0 everywhere is exactly `sample_ddpm`.
    f is clamped to [0, 1], so the variance stays between beta~ and beta. iDDPM leaves f unbounded; with a
    1000-step schedule beta and beta~ differ by ~0.1% at mid t, the L_vlb gradient on f there is tiny, and
    CPU-budget models drift to f of 5-150, harmless at 1000 steps but e^40 variances once respaced
    (docs/tdn.md). For f in [0, 1] and on a `vp_sigmas` grid this equals GaussianDiffusion's ``p_sample_loop``
    respaced the same way (the reference TDN sampler), noise draw for noise draw. Needs a `VarianceDenoiser`;
    eta is ignored.
    """
    if not callable(getattr(denoiser, "with_variance", None)):
        raise ConfigError("sampler ddpm_learned: expected a model trained with a learned variance "
                          "(model.diffusion.var_type: learned_range); use ddpm or ddim for this model")
    sigmas = _prepared(x, sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, fraction = denoiser.with_variance(x, _at(sigma, x))
        fraction = fraction.clamp(0.0, 1.0)
        ratio = sigma_next**2 / sigma**2
        mean = denoised + ratio * (x - denoised)
        noise = _noise(x, generator)
        if sigma_next > 0:
            abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
            beta = 1 - abar / abar_next
            beta_tilde = beta * (1 - abar_next) / (1 - abar)
            log_variance = fraction * beta.log() + (1 - fraction) * beta_tilde.log()
            x = mean + torch.exp(0.5 * log_variance) * (1 + sigma_next**2).sqrt() * noise
        else:
            x = mean
        if callback is not None:
            callback(i, x, denoised)
    return x


SAMPLERS: dict[str, SamplerFn] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "ddpm_learned": sample_ddpm_learned,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm2": sample_dpm2,
    "dpmpp_2m": sample_dpmpp_2m,
    "onestep": sample_onestep,
}

# Samplers whose result depends on eta (the others ignore it).
USES_ETA: frozenset[str] = frozenset({"ddim", "euler_ancestral"})


def is_deterministic(name: str, eta: float | None = None) -> bool:
    """Whether ``name`` with ``eta`` (None: the sampler's default) draws no fresh noise: ddpm never is; ddim and
    euler_ancestral are at eta 0; every other sampler always is."""
    check_sampler_name(name)
    if name in ("ddpm", "ddpm_learned"):
        return False
    if name in USES_ETA:
        default = inspect.signature(SAMPLERS[name]).parameters["eta"].default
        return (default if eta is None else eta) == 0
    return True


def check_sampler_name(name: object, field: str = "sampler") -> str:
    """``name`` if it is registered, else a ConfigError naming ``field`` and every registered sampler."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ConfigError(f"{field}: expected one of {', '.join(SAMPLERS)}, got {name!r}")
    return name


def sample(name: str, denoiser: Denoiser, x: Tensor, sigmas: Tensor, **kwargs) -> Tensor:
    """Run the registered sampler ``name`` (keyword arguments: generator, eta, callback)."""
    return SAMPLERS[check_sampler_name(name)](denoiser, x, sigmas, **kwargs)


def denoiser_calls(name: str, steps: int) -> int:
    """How many denoiser evaluations ``name`` makes over ``steps`` steps (NFE)."""
    check_sampler_name(name)
    if name == "onestep":
        return 1
    return 2 * steps - 1 if name in ("heun", "dpm2") else steps


__all__ = ["Denoiser", "SamplerFn", "SAMPLERS", "SCHEDULES", "USES_ETA", "ancestral_step", "ancestral_update",
           "check_sampler_name", "denoiser_calls", "is_deterministic", "karras_sigmas", "sample", "sample_ddim", "sample_ddpm",
           "sample_ddpm_learned", "VarianceDenoiser",
           "sample_dpm2", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun",
           "sample_onestep", "sigma_to_timestep", "to_d", "vp_sigma_table", "vp_sigmas", "vp_timesteps"]
