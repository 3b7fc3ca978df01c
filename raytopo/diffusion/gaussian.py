"""Discrete Gaussian diffusion: forward process, posterior, model parameterisation, losses and samplers.

Same mathematics as openai/improved-diffusion (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021,
"iDDPM"; Song et al. 2021, "DDIM"), reorganised so a trainer can reuse one forward pass:

* ``p_mean_variance(model_output, x_t, t)`` takes the model's *output*, not the model;
  ``model_mean_variance(model, ...)`` is the thin wrapper that calls the model first.
* Every model call goes through ``call_model`` as ``model(x_t, t_model, **model_kwargs)``, where
  ``t_model = model_timesteps(t)`` maps the (possibly respaced) step index ``t`` to the timestep the
  network was trained on (original step, optionally rescaled to [0, 1000)). That is the only place the
  mapping happens.
* ``training_losses`` returns per-sample tensors with the same keys for every configuration:
  ``mse``, ``vb``, ``loss`` and ``pred_x0`` (see its docstring).

Timestep convention: ``t`` is a long tensor ``[B]`` of 0-based indices; ``t = 0`` is the first diffusion
step (DDPM's t = 1). Per-step tables are float64 numpy arrays, gathered and cast to the dtype of ``x``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from raytopo.config import Checked
from raytopo.diffusion.schedules import SCHEDULES, named_betas, space_timesteps
from raytopo.errors import ConfigError, InputError

MeanType = Literal["epsilon", "x0"]
VarType = Literal["learned_range", "fixed_large", "fixed_small"]
LossType = Literal["mse", "rescaled_mse", "kl", "rescaled_kl"]
MEAN_TYPES: tuple[str, ...] = ("epsilon", "x0")
VAR_TYPES: tuple[str, ...] = ("learned_range", "fixed_large", "fixed_small")
LOSS_TYPES: tuple[str, ...] = ("mse", "rescaled_mse", "kl", "rescaled_kl")

# progress(steps_done, total_steps, out): out has "sample", "pred_x0" and the int step index "t".
ProgressFn = Callable[[int, int, dict], None]


def check_choice(field: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ConfigError naming ``field`` and the allowed values unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{field}: expected one of {', '.join(allowed)}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig(Checked):
    """How to build a Gaussian diffusion. Validated on construction (ConfigError names the field).

    Defaults follow the first listed value of each field; model families set their own (TDN/ADM use
    ``schedule="cosine"``, ``var_type="learned_range"``). ``timestep_respacing`` is "" (all steps),
    "250", "10,15,20" or "ddimN" (see ``respace.space_timesteps``); ``build_diffusion`` applies it unless
    given another respacing, so training configs normally leave it "" and samplers pass their own.
    """

    steps: int = 1000
    schedule: str = "linear"
    mean_type: str = "epsilon"
    var_type: str = "learned_range"
    loss: str = "mse"
    rescale_timesteps: bool = False
    timestep_respacing: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ConfigError naming the first bad one and what it allows."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise ConfigError(f"steps: expected an integer >= 2, got {self.steps!r}")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("mean_type", self.mean_type, MEAN_TYPES)
        check_choice("var_type", self.var_type, VAR_TYPES)
        check_choice("loss", self.loss, LOSS_TYPES)
        if not isinstance(self.rescale_timesteps, bool):
            raise ConfigError(f"rescale_timesteps: expected true or false, got {self.rescale_timesteps!r}")
        if not isinstance(self.timestep_respacing, str):
            raise ConfigError(
                f"timestep_respacing: expected a string like '', '250', '10,15,20' or 'ddim50',"
                f" got {self.timestep_respacing!r}"
            )
        named_betas(self.schedule, self.steps)  # e.g. the linear schedule needs > 20 steps
        if self.timestep_respacing:
            space_timesteps(self.steps, self.timestep_respacing)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for Ray/Tune configs and config.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DiffusionConfig":
        """Inverse of ``to_dict``; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"diffusion config: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------------
# Likelihood helpers
# --------------------------------------------------------------------------------------------------


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension except the batch dimension."""
    return x.mean(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (the L_{t-1} terms of Ho et al. eq. 5).

    All arguments broadcast; scalars may be floats as long as one argument is a Tensor.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, Tensor)), None)
    if ref is None:
        raise InputError("normal_kl: expected at least one argument to be a torch.Tensor")
    logvar1, logvar2 = (torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for v in (logvar1, logvar2))
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by DDPM/improved-diffusion (|error| < 2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) per element of a Gaussian discretised to 256 bins on [-1, 1] (Ho et al. 2020, eq. 13), in nats.

    ``x`` holds uint8 values rescaled to [-1, 1] (bin centres ``k / 127.5 - 1``); each bin is
    ``x +- 1/255`` and the two edge bins extend to -inf and +inf, so the 256 bin masses sum to 1.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise InputError(
            f"discretized_gaussian_log_likelihood: expected x, means and log_scales of one shape,"
            f" got {tuple(x.shape)}, {tuple(means.shape)}, {tuple(log_scales.shape)}"
        )
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _at(table: np.ndarray, t: Tensor, like: Tensor) -> Tensor:
    """table[t] as a tensor of ``like``'s dtype and device, shaped [B, 1, ..., 1] to broadcast against it."""
    values = torch.from_numpy(table).to(device=t.device)[t].to(dtype=like.dtype, device=like.device)
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _standard_normal(shape: Sequence[int], like: Tensor | None, device: torch.device | str | None,
                     dtype: torch.dtype | None, generator: torch.Generator | None) -> Tensor:
    if like is not None:
        device, dtype = like.device, like.dtype
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _model_placement(model: Callable) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter; (cpu, default dtype) for plain functions."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


# --------------------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------------------


class GaussianDiffusion:
    """A discrete Gaussian diffusion process with ``len(betas)`` steps.

    ``timestep_map`` (used by ``SpacedDiffusion``) lists, for each step of this process, the step of the
    original process the model was trained on; ``original_num_steps`` is that process's length. By
    default both describe this process itself.
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray,
        mean_type: MeanType = "epsilon",
        var_type: VarType = "fixed_large",
        loss_type: LossType = "mse",
        rescale_timesteps: bool = False,
        *,
        timestep_map: Sequence[int] | np.ndarray | None = None,
        original_num_steps: int | None = None,
    ) -> None:
        check_choice("mean_type", mean_type, MEAN_TYPES)
        check_choice("var_type", var_type, VAR_TYPES)
        check_choice("loss_type", loss_type, LOSS_TYPES)
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.rescale_timesteps = bool(rescale_timesteps)
        self.betas = self._checked_betas(betas)
        self.num_timesteps = int(self.betas.shape[0])
        self.timestep_map = np.arange(self.num_timesteps, dtype=np.int64) if timestep_map is None else (
            np.asarray(timestep_map, dtype=np.int64))
        if self.timestep_map.shape != (self.num_timesteps,):
            raise InputError(f"timestep_map: expected {self.num_timesteps} entries, got {self.timestep_map.shape}")
        self.original_num_steps = self.num_timesteps if original_num_steps is None else int(original_num_steps)
        self._build_tables()

    @staticmethod
    def _checked_betas(betas: Sequence[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(betas, dtype=np.float64)
        if arr.ndim != 1 or arr.shape[0] < 2:
            raise InputError(f"betas: expected a 1-D array of at least 2 steps, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or not np.all((arr > 0) & (arr < 1)):
            raise InputError("betas: expected every value in the open interval (0, 1)")
        return arr

    def _build_tables(self) -> None:
        """Per-step float64 tables: Ho et al. 2020 eqs. 4, 6-7 and iDDPM eqs. 9-11."""
        b = self.betas
        alphas = 1.0 - b
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # Posterior q(x_{t-1} | x_t, x_0): variance beta~_t (eq. 7) is 0 at t = 0, so its log is clipped
        # to the value at t = 1 there.
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef_x0 = b * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # fixed_large uses beta_t, except beta~_1 at t = 0 for a better decoder likelihood (as upstream).
        self.large_variance = np.append(self.posterior_variance[1], b[1:])

    # ---- timesteps and model calls ---------------------------------------------------------------

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The timestep the model sees for step index ``t``: the original step, rescaled to [0, 1000) if asked."""
        mapped = torch.from_numpy(self.timestep_map).to(t.device)[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def call_model(self, model: Callable, x_t: Tensor, t: Tensor,
                   model_kwargs: Mapping[str, Any] | None = None) -> Tensor:
        """``model(x_t, model_timesteps(t), **model_kwargs)``: the one calling convention of every model."""
        return model(x_t, self.model_timesteps(t), **(model_kwargs or {}))

    # ---- forward process -------------------------------------------------------------------------

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
        mean = _at(self.sqrt_alphas_cumprod, t, x0) * x0
        var = _at(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        return mean, var, torch.log(var)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4; iDDPM eq. 8)."""
        if noise is None:
            noise = _standard_normal(x0.shape, x0, None, None, generator)
        if noise.shape != x0.shape:
            raise InputError(f"noise: expected shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7)."""
        if x0.shape != x_t.shape:
            raise InputError(f"x0: expected the shape of x_t {tuple(x_t.shape)}, got {tuple(x0.shape)}")
        mean = _at(self.posterior_mean_coef_x0, t, x_t) * x0 + _at(self.posterior_mean_coef_xt, t, x_t) * x_t
        var = _at(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = _at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps (Ho et al. 2020, eq. 15)."""
        return _at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1), the inverse of ``predict_x0_from_eps``."""
        return (_at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / _at(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    # ---- reverse process p(x_{t-1} | x_t) --------------------------------------------------------

    def split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mean part, variance values or None): the 2C channels of a learned-variance output split in two."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.var_type == "learned_range" else channels
        if model_output.shape != (x_t.shape[0], expected, *x_t.shape[2:]):
            raise InputError(
                f"model output: expected shape {(x_t.shape[0], expected, *x_t.shape[2:])} for var_type"
                f" {self.var_type}, got {tuple(model_output.shape)}"
            )
        if self.var_type == "learned_range":
            mean_part, var_values = torch.split(model_output, channels, dim=1)
            return mean_part, var_values
        return model_output, None

    def _log_variance(self, var_values: Tensor | None, x_t: Tensor, t: Tensor) -> Tensor:
        """Model log-variance: iDDPM eq. 15 interpolation for learned_range, else a fixed table."""
        if self.var_type == "learned_range":
            assert var_values is not None
            min_log = _at(self.posterior_log_variance_clipped, t, x_t)
            max_log = _at(np.log(self.betas), t, x_t)
            frac = (var_values + 1.0) / 2.0  # v in [-1, 1] -> f in [0, 1]
            return frac * max_log + (1.0 - frac) * min_log
        table = self.posterior_log_variance_clipped if self.var_type == "fixed_small" else np.log(self.large_variance)
        return _at(table, t, x_t).expand_as(x_t)

    def pred_x0_from_output(self, mean_part: Tensor, x_t: Tensor, t: Tensor, clip: bool) -> Tensor:
        """x_0 estimate from the mean channels (eps or x0), clamped to [-1, 1] when ``clip``."""
        x0 = self.predict_x0_from_eps(x_t, t, mean_part) if self.mean_type == "epsilon" else mean_part
        return x0.clamp(-1.0, 1.0) if clip else x0

    def p_mean_variance(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip: bool = True) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a model output: {"mean", "variance", "log_variance", "pred_x0"}.

        The mean is the posterior mean at the predicted x_0 (Ho et al. 2020 eq. 7 with eq. 15, which for eps
        prediction equals eq. 11 when ``clip`` is False).
        """
        if t.shape != (x_t.shape[0],):
            raise InputError(f"t: expected shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        mean_part, var_values = self.split_output(model_output, x_t)
        log_var = self._log_variance(var_values, x_t, t)
        pred_x0 = self.pred_x0_from_output(mean_part, x_t, t, clip)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {"mean": mean, "variance": torch.exp(log_var), "log_variance": log_var, "pred_x0": pred_x0}

    def model_mean_variance(self, model: Callable, x_t: Tensor, t: Tensor, clip: bool = True,
                            model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """``p_mean_variance`` after calling the model."""
        return self.p_mean_variance(self.call_model(model, x_t, t, model_kwargs), x_t, t, clip)

    # ---- losses ----------------------------------------------------------------------------------

    def vb_terms_bits(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, and the
        discretised decoder NLL -log p(x_0|x_1) at t = 0 (Ho et al. 2020, eqs. 5 and 13). No clipping."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def losses_from_output(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor,
                           noise: Tensor) -> dict[str, Tensor]:
        """Per-sample loss terms from a model output already computed at (x_t, t); see ``training_losses``."""
        mean_part, var_values = self.split_output(model_output, x_t)
        target = noise if self.mean_type == "epsilon" else x0
        mse = mean_flat((target - mean_part) ** 2)  # L_simple, Ho et al. 2020 eq. 14 (or its x0 analogue)
        if self.loss_type in ("kl", "rescaled_kl"):
            vb = self.vb_terms_bits(model_output, x0, x_t, t)  # trains mean and variance
            if self.loss_type == "rescaled_kl":
                vb = vb * self.num_timesteps
            loss = vb
        else:
            if var_values is not None:
                # iDDPM eq. 16: the VLB term sees a stop-gradient mean, so it only trains the variance.
                frozen = torch.cat([mean_part.detach(), var_values], dim=1)
                vb = self.vb_terms_bits(frozen, x0, x_t, t)
                if self.loss_type == "rescaled_mse":
                    vb = vb * (self.num_timesteps / 1000.0)
            else:
                vb = torch.zeros_like(mse)
            loss = mse + vb
        pred_x0 = self.pred_x0_from_output(mean_part, x_t, t, clip=True)
        return {"mse": mse, "vb": vb, "loss": loss, "pred_x0": pred_x0}

    def training_losses(self, model: Callable, x0: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample training terms at step indices ``t`` for a batch ``x0`` in [-1, 1].

        Returns the same keys for every configuration:

        * ``mse`` [B]: L_simple, mean squared error of the eps (or x0) prediction.
        * ``vb`` [B]: the VLB term as it enters ``loss`` (bits/dim). With learned variance and an mse loss it
          uses a stop-gradient mean and is scaled by T/1000 for ``rescaled_mse`` (iDDPM L_hybrid); with a kl
          loss it is the full VLB term (x T for ``rescaled_kl``); with fixed variance and an mse loss it is
          zeros without gradient.
        * ``loss`` [B]: ``mse + vb`` for mse losses, ``vb`` for kl losses.
        * ``pred_x0`` [B, C, ...]: x_0 estimate from the model output, clamped to [-1, 1], *with* gradient
          (for the topology loss; Ho et al. 2020 eq. 15).
        """
        if noise is None:
            noise = _standard_normal(x0.shape, x0, None, None, generator)
        x_t = self.q_sample(x0, t, noise=noise)
        model_output = self.call_model(model, x_t, t, model_kwargs)
        return self.losses_from_output(model_output, x0, x_t, t, noise)

    # ---- samplers --------------------------------------------------------------------------------

    def p_sample(self, model: Callable, x_t: Tensor, t: Tensor, clip: bool = True,
                 model_kwargs: Mapping[str, Any] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One ancestral DDPM step x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. 2020, Algorithm 2); no noise at t = 0."""
        out = self.model_mean_variance(model, x_t, t, clip, model_kwargs)
        noise = _standard_normal(x_t.shape, x_t, None, None, generator)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_x0": out["pred_x0"]}

    def ddim_sample(self, model: Callable, x_t: Tensor, t: Tensor, clip: bool = True,
                    model_kwargs: Mapping[str, Any] | None = None, eta: float = 0.0,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16); ignores a learned variance.

        eps is re-derived from the (clipped) x_0 estimate so x0-prediction models work too.
        """
        out = self.model_mean_variance(model, x_t, t, clip, model_kwargs)
        pred_x0 = out["pred_x0"]
        eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        abar = _at(self.alphas_cumprod, t, x_t)
        abar_prev = _at(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar)) * torch.sqrt(1.0 - abar / abar_prev)
        sample = torch.sqrt(abar_prev) * pred_x0 + torch.sqrt(1.0 - abar_prev - sigma**2) * eps
        if eta != 0.0:
            noise = _standard_normal(x_t.shape, x_t, None, None, generator)
            nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_x0": pred_x0}

    def _loop(self, model: Callable, step: Callable[[Tensor, Tensor], dict[str, Tensor]], shape: Sequence[int],
              noise: Tensor | None, device: torch.device | str | None, generator: torch.Generator | None,
              progress: ProgressFn | None) -> Tensor:
        """Run ``step(x, t)`` from t = T-1 down to 0 starting at ``noise`` (or fresh N(0, I) on ``device``, or
        on the model's device, in the model's dtype)."""
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise InputError(f"noise: expected shape {tuple(shape)}, got {tuple(noise.shape)}")
            x = noise
        else:
            model_device, dtype = _model_placement(model)
            x = _standard_normal(shape, None, device if device is not None else model_device, dtype, generator)
        total = self.num_timesteps
        for done, i in enumerate(reversed(range(total)), start=1):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            out = step(x, t)
            x = out["sample"]
            if progress is not None:
                progress(done, total, {**out, "t": i})
        return x

    @torch.no_grad()
    def p_sample_loop(self, model: Callable, shape: Sequence[int], noise: Tensor | None = None, clip: bool = True,
                      model_kwargs: Mapping[str, Any] | None = None, device: torch.device | str | None = None,
                      progress: ProgressFn | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral DDPM sampling over every step of this process; returns x_0 samples of ``shape``.

        ``progress(steps_done, total, out)`` is called after each step with ``out["sample"]``,
        ``out["pred_x0"]`` and the step index ``out["t"]``.
        """

        def step(x: Tensor, t: Tensor) -> dict[str, Tensor]:
            return self.p_sample(model, x, t, clip, model_kwargs, generator)

        return self._loop(model, step, shape, noise, device, generator, progress)

    @torch.no_grad()
    def ddim_sample_loop(self, model: Callable, shape: Sequence[int], noise: Tensor | None = None, clip: bool = True,
                         model_kwargs: Mapping[str, Any] | None = None, device: torch.device | str | None = None,
                         progress: ProgressFn | None = None, eta: float = 0.0,
                         generator: torch.Generator | None = None) -> Tensor:
        """DDIM sampling over every step of this process (respace first for fewer steps); eta = 0 is deterministic."""
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta: expected a number in [0, 1], got {eta!r}")

        def step(x: Tensor, t: Tensor) -> dict[str, Tensor]:
            return self.ddim_sample(model, x, t, clip, model_kwargs, eta, generator)

        return self._loop(model, step, shape, noise, device, generator, progress)
