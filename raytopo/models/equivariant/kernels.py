"""Weight-tied equivariance: G-invariant convolution kernels (reference mechanisms ``_K`` and ``_S``).

A convolution (stride 1, zero "same" padding, odd square kernel) whose kernel is G-invariant, ``g.W = W`` for
every ``g`` in G, commutes with the action of G on images (``groups.py``). Both mechanisms constrain the ordinary
``weight`` of ``nn.Conv2d`` modules with ``torch.nn.utils.parametrize``, so the feature layout stays ``C x H x W``
and every other layer is untouched:

- ``"kernel"`` (reference ``KernelGConv2d``, docs/references.md, Equivariant B.2): the stored tensor ``V`` has the
  kernel's shape and the conv uses the orbit sum ``W = sum_{g in G} g.V``. This is the reference's
  ``bias + sum_g conv(x, g.W)`` folded into one convolution. Unlike the reference's D4 branch (which doubles the
  rotation partial sum before adding the flipped terms and so is only C4-symmetric), all 8 D4 elements are
  summed once. (For 3x3 kernels the C4 and D4 orbits of kernel positions coincide, so the reference's C4-symmetric
  3x3 kernels happen to be D4-symmetric too, with doubled rotation terms; the symmetry bug shows for k >= 4.)
  Stored parameters: ``k*k`` per kernel; effective degrees of freedom: one per orbit.
- ``"symmetric"`` (reference ``_S``): only the free parameters of a G-invariant kernel are stored, one per orbit
  of kernel positions under G, ``V`` of shape ``[out, in, n_orbits]``; the kernel is ``W[p] = V[orbit(p)]``.
  It works for odd and even sizes alike (the reference's even-size D4 branch is broken). For 3x3 kernels
  C4 and D4 have 3 orbits (centre, edge midpoints, corners) and Z2 (horizontal flip) has 6.

``1x1`` kernels (2-D or 1-D) are invariant already and are left alone.

On registration the stored tensor is set with the parametrization's ``right_inverse``: the initial kernel is
replaced by its G-average (the Reynolds projection ``1/|G| sum_g g.W``), so a zero-initialised conv stays zero
and an invariant kernel is kept exactly.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from raytopo.errors import ConfigError
from raytopo.models.equivariant.groups import Group, GroupLike, act, act_kernel, get_group

KernelMechanism = Literal["kernel", "symmetric"]
KERNEL_MECHANISMS: tuple[str, ...] = get_args(KernelMechanism)


class OrbitSum(nn.Module):
    """Parametrization ``V -> sum_{g in G} g.V`` of a ``[out, in, k, k]`` kernel (reference ``_K``)."""

    def __init__(self, group: Group) -> None:
        super().__init__()
        self.group = group

    def forward(self, weight: Tensor) -> Tensor:
        """The orbit-summed, G-invariant kernel."""
        return torch.stack([act_kernel(g, weight) for g in self.group.elements()]).sum(0)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """``W / |G|``: exact inverse on invariant kernels; any kernel maps to its G-average."""
        return weight / self.group.order


def position_orbits(group: Group, kernel_size: int) -> tuple[Tensor, int]:
    """Orbit label (``0..n-1``, flat row-major ``[k*k]``) of every kernel position under ``group``, and ``n``."""
    ids = torch.arange(kernel_size * kernel_size).reshape(kernel_size, kernel_size)
    smallest = torch.stack([act(g, ids) for g in group.elements()]).amin(0).flatten()
    _, labels = torch.unique(smallest, return_inverse=True)
    return labels, int(labels.max()) + 1


class OrbitTied(nn.Module):
    """Parametrization ``V[out, in, n_orbits] -> W[out, in, k, k]`` with ``W[p] = V[orbit(p)]`` (reference ``_S``)."""

    def __init__(self, group: Group, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        labels, self.num_orbits = position_orbits(group, kernel_size)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("orbit_sizes", torch.bincount(labels).to(torch.float64), persistent=False)

    def forward(self, free: Tensor) -> Tensor:
        """Expand one value per orbit to the full invariant kernel."""
        return free[..., self.labels].unflatten(-1, (self.kernel_size, self.kernel_size))

    def right_inverse(self, weight: Tensor) -> Tensor:
        """Orbit means of ``weight`` (the G-average), one per orbit."""
        flat = weight.flatten(-2)
        sums = flat.new_zeros(*flat.shape[:-1], self.num_orbits).index_add_(-1, self.labels, flat)
        return sums / self.orbit_sizes.to(flat.dtype)


def constrain_convolutions(model: nn.Module, group: GroupLike, mechanism: KernelMechanism) -> nn.Module:
    """Make every ``Conv2d`` kernel of ``model`` G-invariant with ``mechanism`` ("kernel" or "symmetric").

    Modified in place and returned. ``1x1`` convolutions (2-D, and 1-D attention projections) are already
    invariant and are skipped; a 1-D convolution with a larger kernel, a non-square 2-D kernel or a conv that is
    constrained already is a ``ConfigError``. Strided convolutions are constrained too but are not equivariant
    on even grids: the caller must avoid them (``build_equivariant_unet`` requires ``conv_resample=False``).
    """
    group = get_group(group)
    if mechanism not in KERNEL_MECHANISMS:
        raise ConfigError(f"mechanism: expected one of {', '.join(KERNEL_MECHANISMS)}, got {mechanism!r}")
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or all(k == 1 for k in module.kernel_size):
            continue
        _check_constrainable(name, module)
        size = module.kernel_size[0]
        tie = OrbitSum(group) if mechanism == "kernel" else OrbitTied(group, size)
        parametrize.register_parametrization(module, "weight", tie)
    return model


def _check_constrainable(name: str, conv: nn.Conv1d | nn.Conv2d) -> None:
    """A constrained conv must be 2-D, square and not parametrized yet."""
    if isinstance(conv, nn.Conv1d):
        raise ConfigError(f"{name}: a Conv1d with kernel size {conv.kernel_size[0]} has no grid symmetry; "
                          "expected kernel size 1")
    if conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError(f"{name}: expected a square kernel, got {tuple(conv.kernel_size)}")
    if parametrize.is_parametrized(conv, "weight"):
        raise ConfigError(f"{name}: the weight is constrained already; constrain a model once")
