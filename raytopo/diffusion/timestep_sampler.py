"""Samplers of training timesteps, returning (t, weights) for unbiased importance sampling.

With t drawn from p_t, a loss weighted by ``weights = 1 / (T p_t)`` has the same expectation as under the
uniform distribution (iDDPM eq. 18 context). ``LossSecondMomentSampler`` sets p_t proportional to
sqrt(E[L_t^2]) over a short history of each step's losses (iDDPM section 3.3, eq. 18), mixed with a little
uniform mass; it stays uniform until every step has a full history.

Distributed use: the trainer all-gathers (t, loss) from every rank and calls ``update`` with the same
values on each rank, so every rank holds the same weights (no torch.distributed calls here).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from raytopo.errors import ConfigError, InputError

SAMPLERS = ("uniform", "loss-second-moment")


class TimestepSampler:
    """Base class: subclasses define ``weights()`` (positive, unnormalised, one per step)."""

    def __init__(self, num_steps: int) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ConfigError(f"num_steps: expected a positive integer, got {num_steps!r}")
        self.num_steps = int(num_steps)

    def weights(self) -> np.ndarray:
        """Unnormalised sampling weights, float64 ``[num_steps]``."""
        raise NotImplementedError

    def probabilities(self) -> np.ndarray:
        """The sampling distribution p_t."""
        w = self.weights()
        return w / w.sum()

    def sample(self, batch_size: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t long [batch_size], weights float32 [batch_size]) with weights = 1 / (T p_t)."""
        p = torch.from_numpy(self.probabilities())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_steps * p[t])
        return t.to(device), weights.to(dtype=torch.float32, device=device)


class UniformSampler(TimestepSampler):
    """t ~ Uniform{0, ..., T-1}; every weight is 1."""

    def weights(self) -> np.ndarray:
        return np.ones(self.num_steps, dtype=np.float64)


class LossSecondMomentSampler(TimestepSampler):
    """p_t proportional to the RMS of the last ``history`` losses at t, mixed with ``uniform_prob`` of uniform."""

    def __init__(self, num_steps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_steps)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ConfigError(f"history: expected a positive integer, got {history!r}")
        if not 0.0 < uniform_prob <= 1.0:
            raise ConfigError(f"uniform_prob: expected a value in (0, 1], got {uniform_prob!r}")
        self.history, self.uniform_prob = history, float(uniform_prob)
        self._losses = np.zeros((self.num_steps, history), dtype=np.float64)
        self._counts = np.zeros(self.num_steps, dtype=np.int64)

    def warmed_up(self) -> bool:
        """True once every step has ``history`` recorded losses."""
        return bool((self._counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_steps, dtype=np.float64)
        rms = np.sqrt(np.mean(self._losses**2, axis=-1))
        return rms / rms.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def update(self, ts: Tensor | Sequence[int], losses: Tensor | Sequence[float]) -> None:
        """Record per-sample losses at steps ``ts`` (call with the values gathered from every rank)."""
        ts_np = np.asarray(ts.detach().cpu() if isinstance(ts, Tensor) else ts, dtype=np.int64).reshape(-1)
        loss_np = np.asarray(losses.detach().cpu() if isinstance(losses, Tensor) else losses,
                             dtype=np.float64).reshape(-1)
        if ts_np.shape != loss_np.shape:
            raise InputError(f"losses: expected one loss per timestep ({ts_np.shape[0]}), got {loss_np.shape[0]}")
        if ts_np.size and (ts_np.min() < 0 or ts_np.max() >= self.num_steps):
            raise InputError(f"ts: expected steps in [0, {self.num_steps}), got {ts_np.min()}..{ts_np.max()}")
        if not np.all(np.isfinite(loss_np)):
            raise InputError("losses: expected finite values, got NaN or inf")
        for t, loss in zip(ts_np, loss_np):
            if self._counts[t] == self.history:  # drop the oldest
                self._losses[t, :-1] = self._losses[t, 1:]
                self._losses[t, -1] = loss
            else:
                self._losses[t, self._counts[t]] = loss
                self._counts[t] += 1


def named_sampler(name: str, num_steps: int) -> TimestepSampler:
    """"uniform" or "loss-second-moment" (improved-diffusion's ``--schedule_sampler`` names)."""
    if name == "uniform":
        return UniformSampler(num_steps)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(num_steps)
    raise ConfigError(f"schedule_sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")
