"""Exactly G-equivariant ADM UNets: ``build_equivariant_unet(config, group, mechanism)``.

Mechanisms (see ``kernels.py`` and ``regular.py``):

- ``"none"``: the plain ``UNetModel`` (no constraint; pair it with ``GroupAveraged`` or the equivariance
  regulariser).
- ``"kernel"`` / ``"symmetric"``: every 3x3 conv of the plain UNet gets a G-invariant kernel (orbit sum /
  one parameter per orbit of kernel positions). Features stay ``C x H x W``.
- ``"group"``: the UNet is built with ``model_channels * |G|`` channels and every layer becomes a group
  convolution on regular features (``C`` fields x ``|G|`` orientations): the first conv lifts, the last projects,
  all other convs (3x3, 1x1 skips, attention ``qkv``/``proj_out``) are group convs, ResBlock ``emb_layers`` and
  GroupNorm affines are constant along the group axis.

Why the result is exactly equivariant: a 3x3 conv with zero padding commutes with rot90/flip when its kernel is
invariant (or, for group convs, when its weight has the structure above); 2x2 average pooling and nearest
upsampling commute with them on even grids; GroupNorm (over whole fields), SiLU, the time/condition embedding
(independent of x) and spatial self-attention (no positional encoding; heads hold whole fields) are pointwise,
invariant or permutation-equivariant. Strided convolutions are not equivariant on even grids, so every
mechanism other than "none" requires ``conv_resample=False`` for a non-trivial group.

Free parameters (stored tensors) of the test-sized UNet (image_size 16, in_channels 1, model_channels 32,
channel_mult (1, 2), num_res_blocks 1, attention at 8; plain UNetModel: 708,833), checked by
``tests/models/test_equivariant_network.py``:

| group | kernel  | symmetric | group     |
|-------|---------|-----------|-----------|
| Z2    | 708,833 | 545,825   | 1,452,513 |
| C4    | 708,833 | 382,817   | 3,062,753 |
| D4    | 708,833 | 382,817   | 6,774,753 |

"kernel" stores the full kernels (its effective degrees of freedom equal "symmetric"'s). "group" grows because
each group conv between ``O`` and ``I`` fields has ``O * I * |G|`` base filters (``|G|`` times the plain conv with
``O``, ``I`` channels, ``1/|G|`` of an unconstrained conv with the same ``O*|G|``, ``I*|G|`` channels) and because
the time embedding MLP (unconstrained) is built ``|G|`` times wider. Compute grows by about ``|G|^2``.

Checkpoints: ``state_dict`` holds the stored (free) tensors, under ``parametrizations.<name>.original``; rebuilding
with the same arguments and ``load_state_dict`` restores the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from torch import Tensor, nn

from raytopo.errors import ConfigError
from raytopo.models.adm.layers import GROUP_NORM_GROUPS, ResBlock
from raytopo.models.adm.unet import UNetConfig, UNetModel
from raytopo.models.equivariant.groups import Group, GroupLike, get_group
from raytopo.models.equivariant.kernels import constrain_convolutions
from raytopo.models.equivariant.regular import make_field_constant, make_group_conv, make_lifting, make_projection

Mechanism = Literal["none", "kernel", "symmetric", "group"]
MECHANISMS: tuple[str, ...] = get_args(Mechanism)


class EquivariantUNet(nn.Module):
    """A constrained ADM UNet; ``forward(x, t, **model_kwargs)`` is ``UNetModel``'s.

    Attributes: ``config`` (the UNetConfig asked for), ``group``, ``mechanism`` and ``unet`` (the constrained
    ``UNetModel``; for "group" it is built with ``model_channels * |G|`` channels).
    """

    def __init__(self, config: UNetConfig, group: Group, mechanism: Mechanism) -> None:
        super().__init__()
        self.config = config
        self.group = group
        self.mechanism = mechanism
        if mechanism == "group":
            self.unet = UNetModel(dataclasses.replace(config, model_channels=config.model_channels * group.order))
            constrain_regular_unet(self.unet, group)
        else:
            self.unet = constrain_convolutions(UNetModel(config), group, mechanism)

    def forward(self, x: Tensor, timesteps: Tensor, **model_kwargs: Tensor) -> Tensor:
        """Same as ``UNetModel.forward``."""
        return self.unet(x, timesteps, **model_kwargs)


def build_equivariant_unet(unet_config: UNetConfig, group: GroupLike, mechanism: Mechanism) -> nn.Module:
    """An ADM UNet that is exactly equivariant under ``group`` by ``mechanism`` (see the module docstring).

    ``mechanism="none"`` returns a plain ``UNetModel``. A non-trivial group with any other mechanism needs
    ``unet_config.conv_resample=False`` (``ConfigError`` otherwise).
    """
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism: expected one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    resolved = get_group(group)
    if mechanism == "none":
        return UNetModel(unet_config)
    if resolved.order > 1 and unet_config.conv_resample:
        raise ConfigError(
            "UNetConfig.conv_resample: must be False for an equivariant UNet (strided convs are not equivariant "
            "on even grids; False uses 2x2 average pooling and nearest upsampling)"
        )
    if mechanism == "group" and unet_config.model_channels % GROUP_NORM_GROUPS:
        raise ConfigError(f"UNetConfig.model_channels: must be a multiple of {GROUP_NORM_GROUPS} for mechanism "
                          f"'group' (GroupNorm groups must hold whole fields), got {unet_config.model_channels}")
    return EquivariantUNet(unet_config, resolved, mechanism)


def constrain_regular_unet(unet: UNetModel, group: Group) -> UNetModel:
    """Turn a ``UNetModel`` built with ``model_channels * |G|`` channels into a group-convolutional UNet, in place.

    The first conv (``input_blocks.0.0``) lifts, the last (``out.2``) projects, every other conv is a group conv;
    ResBlock ``emb_layers`` Linears and every GroupNorm are made constant along the group axis.
    """
    first, last = unet.input_blocks[0][0], unet.out[-1]
    for name, module in list(unet.named_modules()):
        if module is first:
            make_lifting(module, group, name)
        elif module is last:
            make_projection(module, group, name)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            make_group_conv(module, group, name)
        elif isinstance(module, nn.GroupNorm):
            make_field_constant(module, group, name)
        elif isinstance(module, ResBlock):
            make_field_constant(module.emb_layers[-1], group, f"{name}.emb_layers")
    return unet
