"""Continuous-time diffusion formulations: how a network F becomes a denoiser D(x, sigma) and what it learns.

Every formulation is written against one convention, the variance-exploding (VE) one of the sampler library:
``x = x0 + sigma * eps`` and a denoiser ``D(x, sigma) -> x0 estimate``. A formulation says

* which noise levels training draws (`Formulation.sample_sigmas`),
* what the network sees for a VE input (`Formulation.network_inputs`: its input image and time value),
* how the network output becomes an x0 estimate (`Formulation.denoised`), and
* what the raw network output is trained towards, with which per-sample weight (`Formulation.training_target`),
  so that ``weight * mean((F - target)^2)`` is the formulation's loss per sample.

``edm`` -- EDM preconditioning (Karras et al. 2022, Table 1 and eq. 7), x-prediction only (as in the reference):

    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2)
    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)

with the time input c_noise = 250 ln(sigma): the consistency-models convention the Group-Diffusion reference
inherits (the EDM paper uses ln(sigma) / 4; only the scale of the network's time embedding differs). The loss
is lambda(sigma) * ||D - x0||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8; the reference's
``karras`` weights 1/sigma^2 + 1/sd^2 are the same number). Written on the raw output this is
``lambda c_out^2 ||F - (x0 - c_skip x) / c_out||^2`` and lambda c_out^2 = 1 (EDM section 5, "effective target").

``cosine`` -- the reference's ``ddim`` (a VP process with the cosine schedule, Nichol & Dhariwal 2021 eq. 17):

    gamma(t) = cos^2((t + 0.0002) / 1.00025 * pi / 2),   x_t = sqrt(gamma) x0 + sqrt(1 - gamma) eps

The network sees (x_t, 1000 t) and predicts x0 (``pred: x``) or eps (``pred: eps``) with weight 1. Since
sqrt(1 - gamma) / sqrt(gamma) = tan(theta) with theta = (t + 0.0002) / 1.00025 * pi / 2, the equivalent VE level
is sigma(t) = tan(theta) and x_t = sqrt(gamma) x_VE = x_VE / sqrt(1 + sigma^2). The reference draws lognormal
sigmas and maps them to t with a formula that returns t > 1 for about 16% of draws, where cos^2 wraps around
(docs/references.md, Equivariant B.3); here sigma -> t is the exact inverse
t(sigma) = atan(sigma) * 2 / pi * 1.00025 - 0.0002, and every level is first clamped to [sigma_min, sigma_max], which
validation keeps inside the representable range sigma(0) ~ 3.1e-4 .. sigma(1) ~ 1.3e4, so t stays in [0, 1).

Self-conditioning (reference ``--self_cond``, Chen et al. 2022 "Analog Bits"): the network takes the current
x0 estimate as extra input channels. In training, half of the calls (`self_condition_input`) first run a no-grad
pass with zeros there and feed its detached estimate back; at sampling, `NetworkDenoiser` keeps the previous
call's estimate and feeds it to the next call (zeros on the first call; `NetworkDenoiser.reset` starts over).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor

from raytopo.config import Checked
from raytopo.diffusion.noise_levels import karras_ramp_sigmas, lognormal_sigmas, uniform_times
from raytopo.diffusion.samplers import karras_sigmas
from raytopo.errors import ConfigError, InputError

Network = Callable[..., Tensor]
"""``network(x_in, t_in, **model_kwargs) -> F``: the raw network (e.g. a UNet)."""

COSINE_OFFSET = 0.0002
COSINE_SCALE = 1.00025
COSINE_T_MAX = 1.0 - 1e-6
"""The largest time the cosine formulation uses: t = 1 itself is excluded (gamma(1) ~ 6e-9, sigma ~ 1.3e4)."""

EDM_TIME_SCALE = 250.0
COSINE_TIME_SCALE = 1000.0


# --- the cosine VP schedule as a function of t, and its exact inverse -----------------------------------------


def _theta(t: Tensor) -> Tensor:
    return (t + COSINE_OFFSET) / COSINE_SCALE * (math.pi / 2)


def cosine_gamma(t: Tensor) -> Tensor:
    """gamma(t) = cos^2((t + 0.0002) / 1.00025 * pi / 2): the signal fraction alpha_bar of the cosine schedule."""
    return torch.cos(_theta(torch.as_tensor(t, dtype=torch.float64))) ** 2


def cosine_sigma(t: Tensor) -> Tensor:
    """The VE noise level of time t: sigma(t) = sqrt((1 - gamma) / gamma) = tan(theta(t)) (float64)."""
    return torch.tan(_theta(torch.as_tensor(t, dtype=torch.float64)))


def cosine_time(sigma: Tensor) -> Tensor:
    """The exact inverse of `cosine_sigma`, clamped to [0, COSINE_T_MAX] so that t never reaches or passes 1."""
    theta = torch.atan(torch.as_tensor(sigma, dtype=torch.float64))
    return (theta * (2 / math.pi) * COSINE_SCALE - COSINE_OFFSET).clamp(0.0, COSINE_T_MAX)


COSINE_SIGMA_MIN = float(cosine_sigma(torch.tensor(0.0)))
COSINE_SIGMA_MAX = float(cosine_sigma(torch.tensor(COSINE_T_MAX)))


# --- config ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormulationConfig(Checked):
    """The ``model.formulation`` section: which formulation, its constants, and the training noise levels.

    ``noise_levels``: ``lognormal`` (EDM, ln sigma ~ N(p_mean, p_std^2)) or ``uniform`` in the formulation's
    own time (cosine: t; edm: the position u in [0, 1] on the Karras ramp, eq. 5). Levels are clamped to
    [sigma_min, sigma_max], which also bound the default sampling grids.
    """

    kind: Literal["edm", "cosine"] = "edm"
    pred: Literal["x", "eps"] = "x"
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    self_cond: bool = False
    noise_levels: Literal["lognormal", "uniform"] = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        where = "model.formulation"
        _one_of(f"{where}.kind", self.kind, ("edm", "cosine"))
        _one_of(f"{where}.pred", self.pred, ("x", "eps"))
        _one_of(f"{where}.noise_levels", self.noise_levels, ("lognormal", "uniform"))
        if self.kind == "edm" and self.pred != "x":
            raise ConfigError(f"{where}.pred: kind 'edm' predicts x0 only (as the reference); expected 'x', "
                              f"got {self.pred!r}")
        for name in ("sigma_data", "rho", "p_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: expected > 0, got {getattr(self, name)}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"{where}.sigma_min/sigma_max: expected 0 < sigma_min < sigma_max, "
                              f"got {self.sigma_min}, {self.sigma_max}")
        if self.kind == "cosine" and not COSINE_SIGMA_MIN <= self.sigma_min < self.sigma_max <= COSINE_SIGMA_MAX:
            raise ConfigError(f"{where}.sigma_min/sigma_max: kind 'cosine' represents sigma in "
                              f"[{COSINE_SIGMA_MIN:.3g}, {COSINE_SIGMA_MAX:.3g}] (t in [0, 1)), "
                              f"got {self.sigma_min}, {self.sigma_max}")


def _one_of(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")


# --- formulations ---------------------------------------------------------------------------------------------


def _per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` as a float tensor ``[B]`` on x's device (a scalar is broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise InputError(f"sigma: expected shape [{x.shape[0]}] (one level per sample), got {list(sigma.shape)}")
    return sigma


def _image(value: Tensor) -> Tensor:
    """A ``[B]`` tensor viewed as ``[B, 1, 1, 1]`` to scale images."""
    return value.view(-1, 1, 1, 1)


@dataclass(frozen=True)
class TrainingPair:
    """One training batch at fixed noise levels: the VE input, the network's input and time, its target and the
    per-sample weight such that the loss of sample i is ``weight[i] * mean((F[i] - target[i])^2)``."""

    x: Tensor
    sigma: Tensor
    net_input: Tensor
    net_time: Tensor
    target: Tensor
    weight: Tensor


class Formulation:
    """Shared parts; subclasses define network_inputs, denoised, training_target, loss_weight, default_sigmas."""

    def __init__(self, config: FormulationConfig) -> None:
        self.config = config

    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.config.sigma_max

    def clamp(self, sigma: Tensor) -> Tensor:
        """Noise levels limited to [sigma_min, sigma_max] (the range the network is trained on)."""
        return sigma.clamp(self.sigma_min, self.sigma_max)

    def sample_sigmas(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        """``n`` training noise levels (``config.noise_levels``), clamped to [sigma_min, sigma_max]."""
        cfg = self.config
        if cfg.noise_levels == "lognormal":
            sigma = lognormal_sigmas(n, generator, cfg.p_mean, cfg.p_std, device)
        else:
            sigma = self._uniform_sigmas(n, generator, device)
        return self.clamp(sigma.to(device))

    def _uniform_sigmas(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        raise NotImplementedError

    def training_pair(self, x0: Tensor, sigma: Tensor, noise: Tensor) -> TrainingPair:
        """The noisy VE input x = x0 + sigma * noise and what the network sees and learns for it."""
        sigma = _per_sample(sigma, x0)
        x = x0 + _image(sigma) * noise
        net_input, net_time = self.network_inputs(x, sigma)
        target, weight = self.training_target(x0, noise, x, sigma)
        return TrainingPair(x, sigma, net_input, net_time, target, weight)

    def network_inputs(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def denoised(self, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def training_target(self, x0: Tensor, noise: Tensor, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def default_sigmas(self, steps: int) -> Tensor:
        raise NotImplementedError


class EDMFormulation(Formulation):
    """EDM preconditioning (Karras et al. 2022, Table 1 / eq. 7); see the module docstring."""

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in) of Karras et al. 2022, Table 1, for ``sigma`` [B]."""
        sd = self.config.sigma_data
        total = sigma**2 + sd**2
        return sd**2 / total, sigma * sd / total.sqrt(), 1.0 / total.sqrt()

    def network_inputs(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(c_in x, c_noise) with c_noise = 250 ln sigma (consistency-models convention; EDM uses ln(sigma)/4)."""
        sigma = _per_sample(sigma, x)
        _, _, c_in = self.scalings(sigma)
        return _image(c_in) * x, EDM_TIME_SCALE * sigma.log()

    def denoised(self, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """D = c_skip x + c_out F (EDM eq. 7)."""
        sigma = _per_sample(sigma, x)
        c_skip, c_out, _ = self.scalings(sigma)
        return _image(c_skip) * x + _image(c_out) * output

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1/sigma^2 + 1/sd^2 (EDM Table 1; reference ``karras``)."""
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def training_target(self, x0: Tensor, noise: Tensor, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """F's effective target (x0 - c_skip x) / c_out with weight lambda c_out^2 (= 1): EDM eq. 8 on F."""
        c_skip, c_out, _ = self.scalings(sigma)
        target = (x0 - _image(c_skip) * x) / _image(c_out)
        return target, self.loss_weight(sigma) * c_out**2

    def _uniform_sigmas(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        cfg = self.config
        return karras_ramp_sigmas(n, generator, cfg.sigma_min, cfg.sigma_max, cfg.rho, device)

    def default_sigmas(self, steps: int) -> Tensor:
        """The Karras grid of ``steps`` levels from sigma_max down to sigma_min (eq. 5), then 0."""
        cfg = self.config
        return karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).float()


class CosineFormulation(Formulation):
    """The cosine VP process (the reference's ``ddim``), driven through VE levels; see the module docstring."""

    def gamma(self, sigma: Tensor) -> Tensor:
        """gamma(t(sigma)) = 1 / (1 + sigma^2), the signal fraction at VE level sigma."""
        return 1.0 / (1.0 + sigma**2)

    def network_inputs(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t = x / sqrt(1 + sigma^2), 1000 t(sigma)) after clamping sigma to [sigma_min, sigma_max]."""
        sigma = self.clamp(_per_sample(sigma, x))
        t = cosine_time(sigma).to(x.dtype)
        return _image(self.gamma(sigma).sqrt()) * x, COSINE_TIME_SCALE * t

    def denoised(self, output: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """x0 = F (pred x) or x0 = (x_t - sqrt(1 - gamma) F) / sqrt(gamma) = x - sigma F (pred eps)."""
        if self.config.pred == "x":
            return output
        sigma = self.clamp(_per_sample(sigma, x))
        return x - _image(sigma) * output

    def training_target(self, x0: Tensor, noise: Tensor, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """x0 or eps, weight 1 (the reference's ``ddim`` loss)."""
        target = x0 if self.config.pred == "x" else noise
        return target, torch.ones_like(sigma)

    def _uniform_sigmas(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        t_min, t_max = (float(cosine_time(torch.tensor(s))) for s in (self.sigma_min, self.sigma_max))
        return cosine_sigma(uniform_times(n, generator, t_min, t_max, device)).float()

    def default_sigmas(self, steps: int) -> Tensor:
        """``steps`` levels uniform in t from t(sigma_max) down to t(sigma_min) as VE sigmas, then 0."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps: expected a whole number >= 1, got {steps!r}")
        t_min, t_max = (float(cosine_time(torch.tensor(s))) for s in (self.sigma_min, self.sigma_max))
        t = torch.linspace(t_max, t_min, steps, dtype=torch.float64) if steps > 1 else torch.tensor([t_max])
        sigmas = cosine_sigma(t).clamp(self.sigma_min, self.sigma_max)
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def make_formulation(config: FormulationConfig) -> Formulation:
    """The formulation ``config.kind`` names."""
    return EDMFormulation(config) if config.kind == "edm" else CosineFormulation(config)


# --- calling the network (with optional self-conditioning) ----------------------------------------------------


def call_network(formulation: Formulation, network: Network, net_input: Tensor, net_time: Tensor,
                 self_cond: Tensor | None, model_kwargs: Mapping[str, Tensor] | None = None) -> Tensor:
    """The raw output F for ``net_input``: with self-conditioning, ``self_cond`` (zeros when None) is concatenated
    as extra input channels, and only the first C output channels (C = image channels) are kept."""
    channels = net_input.shape[1]
    if formulation.config.self_cond:
        extra = torch.zeros_like(net_input) if self_cond is None else self_cond
        net_input = torch.cat([net_input, extra], dim=1)
    return network(net_input, net_time, **(model_kwargs or {}))[:, :channels]


def self_condition_input(formulation: Formulation, network: Network, pair: TrainingPair,
                         generator: torch.Generator | None,
                         model_kwargs: Mapping[str, Tensor] | None = None) -> Tensor | None:
    """The training self-conditioning input: None without self-conditioning; else, with probability 1/2 (one draw
    per call), the detached x0 estimate of a no-grad pass with zeros, otherwise zeros."""
    if not formulation.config.self_cond:
        return None
    coin = torch.rand((), generator=generator, device=generator.device if generator is not None else "cpu")
    if float(coin) >= 0.5:
        return torch.zeros_like(pair.net_input)
    with torch.no_grad():
        output = call_network(formulation, network, pair.net_input, pair.net_time, None, model_kwargs)
        return formulation.denoised(output, pair.x, pair.sigma).detach()


class NetworkDenoiser:
    """A network as the sampler library's Denoiser: ``denoiser(x, sigma[B]) -> x0 estimate`` (VE convention).

    ``sigma_min``, ``sigma_max`` and ``sigmas(steps)`` (the formulation's default grid: Karras for edm, uniform in
    t for cosine; descending, then 0) tell `raytopo.families.sampling.sample_with` which levels to visit.
    ``clip`` clamps every x0 estimate to [-1, 1] (the sampler setting ``clip``).

    Self-conditioning state: the x0 estimate of the previous call is kept and fed to the next one (zeros on
    the first call, or when the batch shape changes); call `reset` before sampling a new batch. A sampler must
    therefore call the denoiser in order along one trajectory, which every library sampler does.
    """

    def __init__(self, formulation: Formulation, network: Network,
                 model_kwargs: Mapping[str, Tensor] | None = None, clip: bool = False) -> None:
        self.formulation = formulation
        self.network = network
        self.model_kwargs = dict(model_kwargs or {})
        self.clip = bool(clip)
        self.sigma_min = formulation.sigma_min
        self.sigma_max = formulation.sigma_max
        self._previous: Tensor | None = None

    def sigmas(self, steps: int) -> Tensor:
        return self.formulation.default_sigmas(steps)

    def reset(self) -> None:
        """Forget the self-conditioning estimate (start a new trajectory)."""
        self._previous = None

    def __call__(self, x: Tensor, sigma: Tensor, **model_kwargs: Tensor) -> Tensor:
        """The x0 estimate at ``x``; ``model_kwargs`` (e.g. per-sample ``classes``) add to the constructor's."""
        sigma = _per_sample(sigma, x)
        net_input, net_time = self.formulation.network_inputs(x, sigma)
        previous = self._previous if self._previous is not None and self._previous.shape == x.shape else None
        kwargs = {**self.model_kwargs, **model_kwargs}
        output = call_network(self.formulation, self.network, net_input, net_time, previous, kwargs)
        x0 = self.formulation.denoised(output, x, sigma)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
        if self.formulation.config.self_cond:
            self._previous = x0.detach()
        return x0


class BoundDenoiser:
    """``denoiser`` with fixed keyword arguments: ``bound(x, sigma) = denoiser(x, sigma, **kwargs)``.

    Used to condition a wrapped denoiser (e.g. frame-averaged: ``GroupAveraged`` repeats per-sample keyword
    tensors for its |G| copies, so the labels are bound outside it). ``sigma_min``, ``sigma_max``, ``sigmas`` and
    ``reset`` are read from the wrapped denoiser.
    """

    def __init__(self, denoiser: Callable[..., Tensor], **kwargs: Tensor) -> None:
        self.denoiser = denoiser
        self.kwargs = kwargs

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoiser(x, sigma, **self.kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("denoiser", "kwargs"):  # not set yet (e.g. during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.denoiser, name)


__all__ = ["BoundDenoiser", "FormulationConfig", "Formulation", "EDMFormulation", "CosineFormulation", "TrainingPair",
           "NetworkDenoiser", "make_formulation", "call_network", "self_condition_input", "cosine_gamma",
           "cosine_sigma", "cosine_time", "COSINE_SIGMA_MIN", "COSINE_SIGMA_MAX"]
