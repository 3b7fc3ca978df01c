"""Equivariance of whole samplers and invariance of generated distributions (Structure Preserving Diffusion).

Thin over ``raytopo.models.equivariant.metrics``:

* `network_equivariance_error`: the relative error max_g ||f(g x) - g f(x)|| / ||f(x)|| of a map, reported as 0
  for a map that returns exactly zero everywhere it is evaluated (an untrained UNet with zero-initialised output
  layers is trivially equivariant; the ratio itself is undefined there).
* `sampler_equivariance_error`: the same for a whole sampler, f(x_T) = sample(x_T): sample(g x_T) vs
  g sample(x_T). Only meaningful for a *deterministic* sampler (euler, heun, dpm2, dpmpp_2m, onestep, ddim at
  eta 0); a stochastic one would need its fresh noise transformed by g as well, so `deterministic_settings`
  swaps a stochastic choice for the Euler sampler (= ddim at eta 0) on the same schedule.
* `invariance_gap`: max_g d(ref, g.gen) - min_g d(ref, g.gen), the idea of the reference's ``eqv_fid_score.py``
  (there with FID) with a distance of `raytopo.eval.distribution`. It is 0 when the generated distribution is
  G-invariant (all g.gen are equally far from the reference) and grows when some orientations are favoured.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor

from raytopo.errors import InputError
from raytopo.eval.distribution import mmd2_unbiased
from raytopo.models.equivariant import act, equivariance_error, get_group
from raytopo.models.equivariant.groups import GroupLike

def network_equivariance_error(fn: Callable[..., Tensor], x: Tensor, *args: Any, group: GroupLike,
                               **kwargs: Any) -> float:
    """``max_g`` relative equivariance error of ``fn(x, *args, **kwargs)``; 0.0 when ``fn`` is zero at x and at
    every g.x (exactly equivariant, where the relative error is undefined)."""
    try:
        return equivariance_error(fn, x, *args, group=group, **kwargs)
    except InputError:
        with torch.no_grad():
            outputs = [fn(act(g, x), *args, **kwargs) for g in get_group(group).elements()]
        if all(torch.count_nonzero(out) == 0 for out in outputs):
            return 0.0
        raise


def deterministic_settings(settings: Any) -> Any:
    """``settings`` (a SamplerSettings) if its sampler is deterministic, else the same with the Euler sampler."""
    from raytopo.diffusion.samplers import is_deterministic

    if is_deterministic(settings.name, settings.eta):
        return settings
    return dataclasses.replace(settings, name="euler", eta=None)


def sampler_equivariance_error(sample_fn: Callable[[Tensor], Tensor], x_T: Tensor, group: GroupLike) -> float:
    """``max_g ||sample(g x_T) - g sample(x_T)|| / ||sample(x_T)||`` for a deterministic ``sample_fn``.

    ``sample_fn(x_T)`` must run the whole sampler from the (already scaled) initial noise ``x_T`` and be
    deterministic in it (see the module docstring).
    """
    return network_equivariance_error(sample_fn, x_T, group=group)


def invariance_gap(reference: Tensor, generated: Tensor, group: GroupLike,
                   distance: Callable[[Tensor, Tensor], float] = mmd2_unbiased) -> float:
    """max_g d(reference, g.generated) - min_g d(reference, g.generated) over every g in ``group``."""
    values = [distance(reference, act(g, generated)) for g in get_group(group).elements()]
    return max(values) - min(values)


__all__ = ["network_equivariance_error", "sampler_equivariance_error", "deterministic_settings",
           "invariance_gap"]
