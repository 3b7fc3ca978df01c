"""Group convolutions on regular feature maps (the "group" mechanism; Cohen & Welling 2016, eq. 10-11).

A regular feature map has ``C`` fields of ``|G|`` orientation channels each, laid out ``[C, |G|]`` with the
group axis innermost (channel ``c * |G| + index(h)`` holds field ``c`` at orientation ``h``). ``u`` in G acts on it
by moving pixels and permuting orientations: ``(u.f)_{c,h} = u.(f_{c, u^-1 h})`` (``act_regular``).

All three layers are weight constraints (``torch.nn.utils.parametrize``) on ordinary ``Conv1d``/``Conv2d``
weights; the stored base filter is ``V`` and the conv weight is expanded from it:

- lifting (plain in -> regular out, eq. 10): ``W[(o,g), i] = g.V[o, i]``; base ``[O, I, k, k]``.
- group conv (regular -> regular, eq. 11): ``W[(o,g), (i,h)] = g.V[o, i, g^-1 h]``; base ``[O, I, |G|, k, k]``.
  With a ``1x1`` kernel (attention ``qkv``/``proj_out``, ResBlock skips) only the orientation permutation remains.
- projection (regular in -> plain out): ``W[o, (i,h)] = h.V[o, i]``, i.e. ``sum_h conv(f_h, h.V)``; base
  ``[O, I, k, k]``.

Biases of regular outputs, the affine parameters of a ``GroupNorm`` whose groups hold whole fields and the
outputs of a ``Linear`` feeding a regular map (ResBlock ``emb_layers``) are constant along the group axis
(``FieldConstant``), so they commute with the orientation permutation.

Expressiveness: the reference's ``SplitGConv2d`` sums over the orientations at every layer's output, so its
features stay plain ``C x H x W`` maps and each layer is a convolution with an orbit-summed (G-invariant)
kernel, the same function class as the ``"kernel"`` mechanism. These layers keep the orientation channels, so
the next layer can tell orientations apart: the function class is strictly larger. It contains the invariant-kernel
networks: with G-invariant base filters that do not depend on the orientation (``V[o, i, h] = K[o, i] / |G|``
for group convs) every field stays constant along its group axis and each layer reduces to ``conv(f, K)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from raytopo.errors import ConfigError, InputError
from raytopo.models.equivariant.groups import Group, GroupElement, act, act_kernel, compose, inverse


def relative_orientations(group: Group, g: GroupElement) -> list[int]:
    """``[index(g^-1 h) for h in G]``: where each input orientation ``h`` reads its filter for output ``g``."""
    g_inv = inverse(g)
    return [group.index(compose(g_inv, h)) for h in group.elements()]


def act_regular(group: Group, u: GroupElement, features: Tensor) -> Tensor:
    """Act with ``u`` on a regular feature batch ``[B, C*|G|, H, W]``: ``(u.f)_{c,h} = u.(f_{c, u^-1 h})``."""
    n = group.order
    if features.ndim != 4 or features.shape[1] % n:
        raise InputError(f"act_regular: expected [B, C*{n}, H, W], got {list(features.shape)}")
    fields = features.unflatten(1, (-1, n))[:, :, relative_orientations(group, u)]
    return act(u, fields.flatten(1, 2))


def lifting_weight(group: Group, base: Tensor, spatial_dims: int = 2) -> Tensor:
    """``[O, I, *k] -> [O*|G|, I, *k]`` with ``W[(o,g), i] = g.V[o, i]``."""
    rows = [act_kernel(g, base, spatial_dims) for g in group.elements()]
    return torch.stack(rows, dim=1).flatten(0, 1)


def group_conv_weight(group: Group, base: Tensor, spatial_dims: int = 2) -> Tensor:
    """``[O, I, |G|, *k] -> [O*|G|, I*|G|, *k]`` with ``W[(o,g), (i,h)] = g.V[o, i, g^-1 h]``."""
    rows = [act_kernel(g, base[:, :, relative_orientations(group, g)], spatial_dims) for g in group.elements()]
    return torch.stack(rows, dim=1).flatten(0, 1).flatten(1, 2)


def projection_weight(group: Group, base: Tensor, spatial_dims: int = 2) -> Tensor:
    """``[O, I, *k] -> [O, I*|G|, *k]`` with ``W[o, (i,h)] = h.V[o, i]``."""
    columns = [act_kernel(h, base, spatial_dims) for h in group.elements()]
    return torch.stack(columns, dim=2).flatten(1, 2)


class _GroupParametrization(nn.Module):
    """Base of the conv-weight parametrizations: remembers the group and the number of spatial axes."""

    def __init__(self, group: Group, spatial_dims: int) -> None:
        super().__init__()
        self.group = group
        self.spatial_dims = spatial_dims


class LiftingKernel(_GroupParametrization):
    """Parametrization of a lifting conv weight (see ``lifting_weight``)."""

    def forward(self, base: Tensor) -> Tensor:
        """Expand the base filter."""
        return lifting_weight(self.group, base, self.spatial_dims)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The identity-orientation rows ``W[(o,e), i]`` (exact on lifting weights)."""
        return weight.unflatten(0, (-1, self.group.order))[:, 0]


class GroupKernel(_GroupParametrization):
    """Parametrization of a group conv weight (see ``group_conv_weight``)."""

    def forward(self, base: Tensor) -> Tensor:
        """Expand the base filter."""
        return group_conv_weight(self.group, base, self.spatial_dims)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The identity-orientation rows ``W[(o,e), (i,h)] = V[o, i, h]`` (exact on group conv weights)."""
        n = self.group.order
        return weight.unflatten(0, (-1, n))[:, 0].unflatten(1, (-1, n))


class ProjectionKernel(_GroupParametrization):
    """Parametrization of a projection conv weight (see ``projection_weight``)."""

    def forward(self, base: Tensor) -> Tensor:
        """Expand the base filter."""
        return projection_weight(self.group, base, self.spatial_dims)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The identity-orientation columns ``W[o, (i,e)]`` (exact on projection weights)."""
        return weight.unflatten(1, (-1, self.group.order))[:, :, 0]


class FieldConstant(nn.Module):
    """Parametrization of a per-channel tensor (dim 0) that is constant along the group axis of every field."""

    def __init__(self, group: Group) -> None:
        super().__init__()
        self.group = group

    def forward(self, per_field: Tensor) -> Tensor:
        """Repeat each field's value over its ``|G|`` orientation channels."""
        return per_field.repeat_interleave(self.group.order, dim=0)

    def right_inverse(self, per_channel: Tensor) -> Tensor:
        """The identity-orientation value of every field."""
        return per_channel.unflatten(0, (-1, self.group.order))[:, 0]


def _spatial_dims(conv: nn.Module, name: str) -> int:
    if isinstance(conv, nn.Conv2d):
        return 2
    if isinstance(conv, nn.Conv1d) and conv.kernel_size == (1,):
        return 1
    raise ConfigError(f"{name}: expected an nn.Conv2d or an nn.Conv1d with kernel size 1, got {conv!r}")


def _check_fields(name: str, channels: int, group: Group, what: str) -> None:
    if channels % group.order:
        raise ConfigError(f"{name}: {what} {channels} must be a multiple of |{group.name}| = {group.order}")


def _constrain_bias(module: nn.Module, group: Group) -> None:
    if getattr(module, "bias", None) is not None:
        parametrize.register_parametrization(module, "bias", FieldConstant(group))


def make_lifting(conv: nn.Module, group: Group, name: str = "conv") -> None:
    """Constrain ``conv`` (plain in, ``O*|G|`` regular out) to a lifting convolution, in place."""
    dims = _spatial_dims(conv, name)
    _check_fields(name, conv.out_channels, group, "out_channels")
    parametrize.register_parametrization(conv, "weight", LiftingKernel(group, dims))
    _constrain_bias(conv, group)


def make_group_conv(conv: nn.Module, group: Group, name: str = "conv") -> None:
    """Constrain ``conv`` (regular in and out) to a group convolution, in place."""
    dims = _spatial_dims(conv, name)
    _check_fields(name, conv.in_channels, group, "in_channels")
    _check_fields(name, conv.out_channels, group, "out_channels")
    if conv.groups != 1:
        raise ConfigError(f"{name}: grouped convolutions are not supported, got groups={conv.groups}")
    parametrize.register_parametrization(conv, "weight", GroupKernel(group, dims))
    _constrain_bias(conv, group)


def make_projection(conv: nn.Module, group: Group, name: str = "conv") -> None:
    """Constrain ``conv`` (``I*|G|`` regular in, plain out) to a projection convolution, in place."""
    dims = _spatial_dims(conv, name)
    _check_fields(name, conv.in_channels, group, "in_channels")
    parametrize.register_parametrization(conv, "weight", ProjectionKernel(group, dims))


def make_field_constant(module: nn.Linear | nn.GroupNorm, group: Group, name: str = "module") -> None:
    """Make the per-output-channel ``weight``/``bias`` of a ``Linear`` or the affine of a ``GroupNorm`` constant
    along the group axis, in place. A ``GroupNorm`` must have whole fields in every group."""
    if isinstance(module, nn.GroupNorm):
        _check_fields(name, module.num_channels // module.num_groups, group, "channels per GroupNorm group")
        names = ("weight", "bias") if module.affine else ()
    elif isinstance(module, nn.Linear):
        _check_fields(name, module.out_features, group, "out_features")
        names = ("weight", "bias") if module.bias is not None else ("weight",)
    else:
        raise ConfigError(f"{name}: expected an nn.Linear or an nn.GroupNorm, got {type(module).__name__}")
    for tensor_name in names:
        parametrize.register_parametrization(module, tensor_name, FieldConstant(group))
