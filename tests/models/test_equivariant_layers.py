"""Equivariant layers: invariant kernels against explicit orbits, group convs against the definition of equivariance."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from raytopo.errors import ConfigError
from raytopo.models.adm.layers import GroupNorm32
from raytopo.models.equivariant import act, act_regular, compose, constrain_convolutions, get_group
from raytopo.models.equivariant.kernels import OrbitSum, OrbitTied, position_orbits
from raytopo.models.equivariant.regular import (
    group_conv_weight,
    make_field_constant,
    make_group_conv,
    make_lifting,
    make_projection,
)

GROUPS = ("Z2", "C4", "D4")
MECHANISMS = ("kernel", "symmetric")


def explicit_orbits(name: str, n: int) -> list[frozenset[tuple[int, int]]]:
    """Orbits of kernel positions by index arithmetic: quarter turn ``(i, j) -> (n-1-j, i)``, mirror ``(i, j) -> (i,
    n-1-j)``; the generators of each group, closed under composition."""
    def turn(p: tuple[int, int]) -> tuple[int, int]:
        return (n - 1 - p[1], p[0])

    def mirror(p: tuple[int, int]) -> tuple[int, int]:
        return (p[0], n - 1 - p[1])

    generators = {"Z2": [mirror], "C4": [turn], "D4": [turn, mirror]}[name]
    orbits = set()
    for start in itertools.product(range(n), repeat=2):
        orbit, frontier = {start}, [start]
        while frontier:
            p = frontier.pop()
            for gen in generators:
                if gen(p) not in orbit:
                    orbit.add(gen(p))
                    frontier.append(gen(p))
        orbits.add(frozenset(orbit))
    return sorted(orbits, key=min)


def is_invariant(weight: torch.Tensor, name: str) -> bool:
    return all(torch.allclose(act(g, weight), weight, atol=1e-12) for g in get_group(name).elements())


# --- invariant kernels ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GROUPS)
@pytest.mark.parametrize("size", [3, 4, 5])
def test_orbit_sum_matches_explicit_orbits(name: str, size: int) -> None:
    group = get_group(name)
    base = torch.randn(2, 3, size, size, dtype=torch.float64)
    weight = OrbitSum(group)(base)
    for orbit in explicit_orbits(name, size):
        # sum_g (g.V)[p] = sum_g V[g^-1 p] visits each orbit member |G| / |orbit| times
        expected = sum(base[:, :, i, j] for i, j in orbit) * group.order / len(orbit)
        for i, j in orbit:
            torch.testing.assert_close(weight[:, :, i, j], expected)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_d4_orbit_sum_is_invariant_under_all_eight_elements(size: int) -> None:
    weight = OrbitSum(get_group("D4"))(torch.randn(4, 2, size, size, dtype=torch.float64))
    for g in get_group("D4").elements():
        torch.testing.assert_close(act(g, weight), weight, rtol=0, atol=1e-12)
    # the check has power: a rotation-only (C4) orbit sum is not mirror-symmetric for k >= 4 (for 3x3 kernels
    # the C4 and D4 position orbits coincide, so every C4-invariant 3x3 kernel is D4-invariant)
    c4_only = OrbitSum(get_group("C4"))(torch.randn(4, 2, size, size, dtype=torch.float64))
    assert is_invariant(c4_only, "C4") and is_invariant(c4_only, "D4") == (size == 3)


@pytest.mark.parametrize(
    ("name", "size", "orbits"),
    [("C4", 3, 3), ("D4", 3, 3), ("Z2", 3, 6), ("C4", 4, 4), ("D4", 4, 3), ("Z2", 4, 8), ("C4", 5, 7),
     ("D4", 5, 6), ("Z2", 5, 15), ("D4", 1, 1)],
)
def test_orbit_counts_closed_form(name: str, size: int, orbits: int) -> None:
    # C4: (n^2 + 3 [n odd]) / 4; D4: m(m+1)/2 with n = 2m, (m+1)(m+2)/2 with n = 2m+1; Z2: n * ceil(n/2)
    labels, count = position_orbits(get_group(name), size)
    assert count == orbits == len(explicit_orbits(name, size))
    for orbit in explicit_orbits(name, size):
        assert len({int(labels[i * size + j]) for i, j in orbit}) == 1


@pytest.mark.parametrize("name", GROUPS)
@pytest.mark.parametrize("size", [3, 4])
def test_orbit_tied_expands_an_invariant_kernel(name: str, size: int) -> None:
    tie = OrbitTied(get_group(name), size)
    free = torch.randn(3, 2, tie.num_orbits, dtype=torch.float64)
    weight = tie(free)
    assert weight.shape == (3, 2, size, size) and is_invariant(weight, name)
    torch.testing.assert_close(tie.right_inverse(weight), free)
    # right_inverse of any kernel is its G-average, as the orbit sum of W / |G| gives it
    arbitrary = torch.randn(3, 2, size, size, dtype=torch.float64)
    orbit_sum = OrbitSum(get_group(name))
    torch.testing.assert_close(tie(tie.right_inverse(arbitrary)), orbit_sum(orbit_sum.right_inverse(arbitrary)))


@pytest.mark.parametrize("name", GROUPS)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_constrained_conv_commutes_with_the_group(name: str, mechanism: str) -> None:
    torch.manual_seed(0)
    conv = constrain_convolutions(nn.Conv2d(3, 4, 3, padding=1).double(), name, mechanism)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for g in get_group(name).elements():
        torch.testing.assert_close(conv(act(g, x)), act(g, conv(x)), rtol=0, atol=1e-12)
    plain, g = nn.Conv2d(3, 4, 3, padding=1).double(), get_group(name).elements()[1]
    assert not torch.allclose(plain(act(g, x)), act(g, plain(x)))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_gradients_of_free_parameters_match_finite_differences(mechanism: str) -> None:
    conv = constrain_convolutions(nn.Conv2d(2, 2, 3, padding=1).double(), "D4", mechanism)
    tie = conv.parametrizations.weight[0]
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    free = conv.parametrizations.weight.original.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: F.conv2d(x, tie(v), conv.bias, padding=1), (free,))


def test_constrain_convolutions_skips_1x1_and_rejects_what_it_cannot_constrain() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1), nn.Conv1d(2, 2, 1))
    constrain_convolutions(model, "C4", "symmetric")
    assert parametrize.is_parametrized(model[0]) and not parametrize.is_parametrized(model[1])
    assert not parametrize.is_parametrized(model[2])
    with pytest.raises(ConfigError, match="constrained already"):
        constrain_convolutions(model, "C4", "kernel")
    with pytest.raises(ConfigError, match="Conv1d"):
        constrain_convolutions(nn.Conv1d(2, 2, 3), "C4", "kernel")
    with pytest.raises(ConfigError, match="square"):
        constrain_convolutions(nn.Conv2d(2, 2, (3, 1)), "C4", "kernel")
    with pytest.raises(ConfigError, match="mechanism"):
        constrain_convolutions(nn.Conv2d(2, 2, 3), "C4", "orbit")  # type: ignore[arg-type]


def test_registration_keeps_invariant_and_zero_kernels() -> None:
    for mechanism in MECHANISMS:
        zero = nn.Conv2d(2, 2, 3)
        nn.init.zeros_(zero.weight)
        assert torch.count_nonzero(constrain_convolutions(zero, "D4", mechanism).weight) == 0
        conv = nn.Conv2d(2, 2, 3)
        invariant = OrbitSum(get_group("D4"))(conv.weight.detach())
        with torch.no_grad():
            conv.weight.copy_(invariant)
        torch.testing.assert_close(constrain_convolutions(conv, "D4", mechanism).weight, invariant)


# --- regular features -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trivial", *GROUPS])
def test_act_regular_is_a_group_action(name: str) -> None:
    group = get_group(name)
    f = torch.randn(2, 3 * group.order, 4, 4)
    for g, h in itertools.product(group.elements(), repeat=2):
        assert torch.equal(act_regular(group, compose(g, h), f), act_regular(group, g, act_regular(group, h, f)))


def regular_layers(group_name: str) -> dict[str, tuple[nn.Module, bool, bool]]:
    """layer -> (module, regular input?, regular output?) with random weights, float64."""
    group, n = get_group(group_name), get_group(group_name).order
    torch.manual_seed(1)
    lift, gconv = nn.Conv2d(2, 3 * n, 3, padding=1), nn.Conv2d(3 * n, 2 * n, 3, padding=1)
    proj = nn.Conv2d(3 * n, 2, 3, padding=1)
    skip, norm = nn.Conv2d(3 * n, 2 * n, 1), GroupNorm32(3, 3 * n)
    make_lifting(lift, group)
    make_group_conv(gconv, group)
    make_group_conv(skip, group)
    make_projection(proj, group)
    make_field_constant(norm, group)
    with torch.no_grad():  # a non-trivial affine, constant along the group axis
        norm.parametrizations.weight.original.normal_()
        norm.parametrizations.bias.original.normal_()
    layers = {"lift": (lift, False, True), "group": (gconv, True, True), "skip": (skip, True, True),
              "project": (proj, True, False), "norm": (norm, True, True)}
    return {k: (m.double(), i, o) for k, (m, i, o) in layers.items()}


@pytest.mark.parametrize("name", GROUPS)
def test_regular_layers_are_equivariant(name: str) -> None:
    group = get_group(name)
    for layer, (module, regular_in, regular_out) in regular_layers(name).items():
        channels = module.in_channels if hasattr(module, "in_channels") else module.num_channels
        x = torch.randn(2, channels, 6, 6, dtype=torch.float64)
        out = module(x)
        assert out.abs().max() > 1e-3, layer
        for g in group.elements():
            gx = act_regular(group, g, x) if regular_in else act(g, x)
            g_out = act_regular(group, g, out) if regular_out else act(g, out)
            torch.testing.assert_close(module(gx), g_out, rtol=0, atol=1e-11, msg=f"{layer} {g.name}")


@pytest.mark.parametrize("name", GROUPS)
def test_unconstrained_wide_conv_is_not_equivariant(name: str) -> None:
    group = get_group(name)
    conv = nn.Conv2d(3 * group.order, 2 * group.order, 3, padding=1).double()
    x = torch.randn(2, 3 * group.order, 6, 6, dtype=torch.float64)
    g = group.elements()[1]
    assert not torch.allclose(conv(act_regular(group, g, x)), act_regular(group, g, conv(x)), atol=1e-3)


def test_attention_style_conv1d_group_conv_commutes_with_orientation_permutations() -> None:
    group = get_group("D4")
    conv = nn.Conv1d(2 * 8, 3 * 8, 1).double()
    make_group_conv(conv, group)
    tokens = torch.randn(2, 2 * 8, 10, dtype=torch.float64)  # [B, C*|G|, H*W]; a 1x1 conv ignores pixel order
    for g in group.elements():
        permute = lambda t: act_regular(group, g, t[..., None].expand(*t.shape, 10))[..., 0]  # noqa: E731
        torch.testing.assert_close(conv(permute(tokens)), permute(conv(tokens)), rtol=0, atol=1e-12)


def test_group_conv_weight_of_a_single_base_filter() -> None:
    # V[0, 0, h] = K only for h = e: output orientation g reads input orientation g with kernel g.K, nothing else
    group = get_group("C4")
    kernel = torch.arange(9.0).reshape(3, 3)
    base = torch.zeros(1, 1, 4, 3, 3)
    base[0, 0, 0] = kernel
    weight = group_conv_weight(group, base)
    for a, g in enumerate(group.elements()):
        for b in range(4):
            expected = act(g, kernel) if a == b else torch.zeros(3, 3)
            assert torch.equal(weight[a, b], expected)


def test_trivial_group_conv_is_the_plain_conv() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    reference = conv.weight.detach().clone()
    make_group_conv(conv, get_group("trivial"))
    assert torch.equal(conv.weight, reference)


def test_field_checks() -> None:
    group = get_group("C4")
    with pytest.raises(ConfigError, match="out_channels 6 must be a multiple"):
        make_lifting(nn.Conv2d(1, 6, 3), group)
    with pytest.raises(ConfigError, match="channels per GroupNorm group"):
        make_field_constant(nn.GroupNorm(4, 8), group)
    with pytest.raises(ConfigError, match="kernel size 1"):
        make_group_conv(nn.Conv1d(8, 8, 3), group)
