"""Frame averaging (reference mechanism 3, group-averaged sampling; docs/references.md, Equivariant B.2), i.e.
Puny et al. 2022's frame averaging with the whole group as the frame.

``GroupAveraged(f, G)(x) = 1/|G| sum_g g^-1 . f(g . x)`` is exactly G-equivariant for any ``f``: for ``u`` in G,
substituting ``g' = g u`` gives ``result(u x) = u result(x)``. It costs ``|G|`` evaluations of ``f``, done here in
ONE call on a batch of ``|G| * B`` images (all transformed copies concatenated along the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from raytopo.errors import InputError
from raytopo.models.equivariant.groups import Group, GroupLike, act, get_group, inverse


def stack_transformed(group: Group, x: Tensor) -> Tensor:
    """``[g_1 x; g_2 x; ...]`` along the batch axis."""
    return torch.cat([act(g, x) for g in group.elements()])


def repeat_per_sample(value: Any, batch: int, copies: int) -> Any:
    """Repeat a per-sample tensor (leading axis ``batch``) ``copies`` times along the batch; others pass through."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return torch.cat([value] * copies)
    return value


def evaluate_transformed(
    fn: Callable[..., Tensor],
    group: Group,
    x: Tensor,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    image_kwargs: Sequence[str] = (),
) -> tuple[Tensor, ...]:
    """``(fn(g_1 x), fn(g_2 x), ...)`` for the group's elements in order, from ONE call of ``fn`` on ``|G| * B`` images.

    Per-sample tensors among ``args``/``kwargs`` (leading axis ``B``) are repeated for every copy, keyword arguments
    named in ``image_kwargs`` are transformed like ``x``, anything else is passed unchanged.
    """
    batch, copies = x.shape[0], group.order
    args = tuple(repeat_per_sample(a, batch, copies) for a in args)
    kwargs = {
        k: stack_transformed(group, v) if k in image_kwargs else repeat_per_sample(v, batch, copies)
        for k, v in (kwargs or {}).items()
    }
    out = fn(stack_transformed(group, x), *args, **kwargs)
    if not isinstance(out, Tensor) or out.ndim < 3 or out.shape[0] != batch * copies:
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"fn must return an image batch [{batch * copies}, C, H, W] for {batch * copies} inputs, "
                         f"got {got}")
    return out.chunk(copies)


class GroupAveraged:
    """Wrap ``fn(x, sigma_or_t, *args, **kwargs) -> [B, C', H, W]`` into its G-average (module docstring).

    Per-sample tensor arguments (leading axis ``B``: timesteps, sigmas, counts, class labels) are repeated for
    every copy; other arguments are passed unchanged. Keyword arguments named in ``image_kwargs`` are images
    (e.g. a self-conditioning input) and are transformed together with ``x``. Any attribute the wrapper lacks
    (``sigma_min``, ``sigma_max``, ``sigmas``, ``config``, ``eval`` ...) is read from ``fn``.
    """

    def __init__(self, fn: Callable[..., Tensor], group: GroupLike, image_kwargs: Sequence[str] = ()) -> None:
        self.fn = fn
        self.group = get_group(group)
        self.image_kwargs = tuple(image_kwargs)

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The group average of ``fn`` at ``x``; same shape as ``fn(x, ...)``."""
        outputs = evaluate_transformed(self.fn, self.group, x, args, kwargs, self.image_kwargs)
        return torch.stack([act(inverse(g), y) for g, y in zip(self.group.elements(), outputs)]).mean(0)

    def __getattr__(self, name: str) -> Any:
        """Forward attributes the wrapper does not have (e.g. ``sigma_min``) to the wrapped callable."""
        if name in ("fn", "group", "image_kwargs"):  # not set yet (e.g. during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.fn, name)
