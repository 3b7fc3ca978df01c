"""Classifier-free guidance (Ho & Salimans 2022): train with labels dropped to a null class, sample with
eps = eps_u + s (eps_c - eps_u) (their eq. 6 with w = s - 1).

Plain torch; works for any model called as ``model(x, t, label=..., **kwargs)`` whose null class is an index.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from raytopo.errors import ConfigError


def drop_labels(labels: Tensor, null_class: int, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """``labels`` with each entry replaced by ``null_class`` independently with probability ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"label_drop: expected a probability in [0, 1], got {rate}")
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(dropped, torch.full_like(labels, null_class), labels)


class GuidedModel:
    """``model`` under classifier-free guidance of scale ``scale``, in one batched call: the batch is
    ``[conditional; unconditional]`` (every other keyword, e.g. a ControlNet mask, repeated), then
    eps = eps_u + scale (eps_c - eps_u). ``scale`` 1 is the conditional model and skips the second half;
    ``scale`` 0 returns eps_u exactly."""

    def __init__(self, model: Callable[..., Tensor], null_class: int, scale: float) -> None:
        if scale < 0:
            raise ConfigError(f"guidance scale: expected >= 0, got {scale}")
        self.model = model
        self.null_class = null_class
        self.scale = float(scale)

    def __call__(self, x: Tensor, t: Tensor, label: Tensor, **kwargs: Any) -> Tensor:
        if self.scale == 1.0:
            return self.model(x, t, label=label, **kwargs)
        null = torch.full_like(label, self.null_class)
        doubled = {key: torch.cat([value, value]) for key, value in kwargs.items()}
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), label=torch.cat([label, null]), **doubled)
        conditional, unconditional = both.chunk(2)
        if self.scale == 0.0:
            return unconditional
        return unconditional + self.scale * (conditional - unconditional)
