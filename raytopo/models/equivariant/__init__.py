"""Group-equivariant networks for the ``equivariant`` family (Structure Preserving Diffusion, docs/references.md, Equivariant B).

- ``groups``: the grid symmetry groups "trivial", "Z2" (horizontal flip), "C4", "D4" and their actions.
- ``kernels``: G-invariant kernels, mechanisms "kernel" (orbit sum) and "symmetric" (one parameter per orbit).
- ``regular``: lifting / group / projection convolutions on regular features, mechanism "group".
- ``network``: ``build_equivariant_unet(config, group, mechanism)``, an exactly equivariant ADM UNet.
- ``averaging``: ``GroupAveraged``, frame averaging of any denoiser (exact, ``|G|`` times the cost).
- ``metrics``: ``equivariance_error``, the relative equivariance error of a network or sampler.

Everything is plain torch (no Ray).
"""

from raytopo.models.equivariant.averaging import GroupAveraged
from raytopo.models.equivariant.groups import (
    GROUPS,
    Group,
    GroupElement,
    act,
    act_kernel,
    compose,
    get_group,
    inverse,
)
from raytopo.models.equivariant.kernels import KERNEL_MECHANISMS, constrain_convolutions
from raytopo.models.equivariant.metrics import equivariance_error, equivariance_errors
from raytopo.models.equivariant.network import MECHANISMS, EquivariantUNet, Mechanism, build_equivariant_unet
from raytopo.models.equivariant.regular import act_regular

__all__ = [
    "GROUPS",
    "KERNEL_MECHANISMS",
    "MECHANISMS",
    "EquivariantUNet",
    "Group",
    "GroupAveraged",
    "GroupElement",
    "Mechanism",
    "act",
    "act_kernel",
    "act_regular",
    "build_equivariant_unet",
    "compose",
    "constrain_convolutions",
    "equivariance_error",
    "equivariance_errors",
    "get_group",
    "inverse",
]
