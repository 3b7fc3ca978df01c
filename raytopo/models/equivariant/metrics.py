"""Equivariance error of any image-to-image map (a network, a denoiser, or a whole sampler).

For ``f`` and a group element ``g`` the relative error over a batch is

    err_g = || f(g x) - g f(x) ||_2 / || f(x) ||_2      (norms over the whole batch),

and ``equivariance_error`` reports ``max_g err_g``. Use it for a network (``f(x) = model(x, t)``) or for a
deterministic sampler (``f(x_T) = sample(x_T)``: ``sample(g x_T)`` vs ``g sample(x_T)``).

By default ``f`` is called once per element, with ``args``/``kwargs`` unchanged, so a closure that holds its own
per-sample conditioning for ``B`` samples works. ``batched=True`` instead gets every ``f(g x)`` from ONE call on
the ``|G| * B`` transformed images, repeating per-sample tensors among ``args``/``kwargs`` as ``GroupAveraged``
does (faster for a network; only for an ``f`` whose per-sample inputs are all passed as arguments).
Parametrized weights are computed once for the whole measurement (``torch.nn.utils.parametrize.cached``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from raytopo.errors import InputError
from raytopo.models.equivariant.averaging import evaluate_transformed
from raytopo.models.equivariant.groups import GroupLike, act, get_group


def equivariance_errors(
    fn: Callable[..., Tensor], x: Tensor, *args: Any, group: GroupLike, batched: bool = False, **kwargs: Any
) -> dict[str, float]:
    """Relative error ``err_g`` for every non-identity element, keyed by element name (``r90``, ``f`` ...).

    ``args``/``kwargs`` go to every call. ``InputError`` if ``f(x)`` is zero or not finite (the relative error is
    undefined; an untrained UNet with zero-initialised output layers returns zeros).
    """
    group = get_group(group)
    with torch.no_grad(), parametrize.cached():
        if batched:
            outputs = evaluate_transformed(fn, group, x, args, kwargs)
        else:
            outputs = tuple(fn(act(g, x), *args, **kwargs) for g in group.elements())
    reference = outputs[0].double()  # the identity comes first
    scale = torch.linalg.vector_norm(reference)
    if not torch.isfinite(scale) or scale == 0:
        raise InputError(f"equivariance_error: f(x) has norm {float(scale)}; expected a finite non-zero output "
                         "(randomise zero-initialised layers before measuring)")
    return {
        g.name: float(torch.linalg.vector_norm(y.double() - act(g, reference)) / scale)
        for g, y in zip(group.elements()[1:], outputs[1:])
    }


def equivariance_error(
    fn: Callable[..., Tensor], x: Tensor, *args: Any, group: GroupLike, batched: bool = False, **kwargs: Any
) -> float:
    """``max_g err_g`` over the group (0.0 for the trivial group); see ``equivariance_errors``."""
    return max(equivariance_errors(fn, x, *args, group=group, batched=batched, **kwargs).values(), default=0.0)
