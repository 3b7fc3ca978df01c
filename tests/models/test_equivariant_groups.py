"""Symmetry groups of the grid: group axioms by brute force, actions against explicit index formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

from raytopo.errors import ConfigError, InputError
from raytopo.models.equivariant import GroupElement, act, act_kernel, compose, get_group, inverse

NAMES = ("trivial", "Z2", "C4", "D4")


def explicit_action(g: GroupElement, image: torch.Tensor) -> torch.Tensor:
    """``g`` on one ``[n, n]`` image by index arithmetic: flip ``(i, j) <- (i, n-1-j)``, then ``k`` counter-clockwise
    quarter turns ``B[i, j] = A[j, n-1-i]`` (numpy/torch ``rot90`` convention)."""
    n = image.shape[-1]
    out = image.clone()
    if g.flip:
        out = torch.stack([torch.stack([out[i, n - 1 - j] for j in range(n)]) for i in range(n)])
    for _ in range(g.rotation):
        out = torch.stack([torch.stack([out[j, n - 1 - i] for j in range(n)]) for i in range(n)])
    return out


@pytest.mark.parametrize(("name", "order"), [("trivial", 1), ("Z2", 2), ("C4", 4), ("D4", 8)])
def test_order_and_distinct_elements(name: str, order: int) -> None:
    group = get_group(name)
    assert group.order == order == len(set(group.elements()))
    assert group.elements()[0].is_identity
    x = torch.randn(3, 5, 5)
    images = [act(g, x) for g in group.elements()]
    for a, b in itertools.combinations(images, 2):  # a faithful action: no two elements act alike
        assert not torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_group_axioms(name: str) -> None:
    group = get_group(name)
    members = set(group.elements())
    e = group.elements()[0]
    for g in members:
        assert compose(e, g) == g == compose(g, e)
        assert inverse(g) in members
        assert compose(g, inverse(g)) == e == compose(inverse(g), g)
    for g, h in itertools.product(members, repeat=2):
        assert compose(g, h) in members  # closure
    for g, h, k in itertools.product(members, repeat=3):
        assert compose(compose(g, h), k) == compose(g, compose(h, k))


def test_d4_is_not_abelian_and_c4_is() -> None:
    d4, c4 = get_group("D4"), get_group("C4")
    assert any(compose(g, h) != compose(h, g) for g, h in itertools.product(d4.elements(), repeat=2))
    assert all(compose(g, h) == compose(h, g) for g, h in itertools.product(c4.elements(), repeat=2))


@pytest.mark.parametrize("name", NAMES)
def test_act_is_a_homomorphism(name: str) -> None:
    x = torch.randn(2, 3, 6, 6)
    group = get_group(name)
    for g, h in itertools.product(group.elements(), repeat=2):
        assert torch.equal(act(compose(g, h), x), act(g, act(h, x)))
    for g in group.elements():
        assert torch.equal(act(inverse(g), act(g, x)), x)


def test_act_matches_index_formulas() -> None:
    image = torch.arange(36.0).reshape(6, 6)
    for g in get_group("D4").elements():
        assert torch.equal(act(g, image), explicit_action(g, image)), g.name
    # the Z2 generator mirrors the width axis (a horizontal flip)
    flip = get_group("Z2").elements()[1]
    assert torch.equal(act(flip, image), image[:, [5, 4, 3, 2, 1, 0]])


def test_act_kernel() -> None:
    weight = torch.randn(4, 3, 3, 3)
    r90 = GroupElement(1)
    assert torch.equal(act_kernel(r90, weight), torch.rot90(weight, 1, dims=(-2, -1)))
    one_d = torch.randn(4, 3, 1)
    assert torch.equal(act_kernel(r90, one_d, spatial_dims=1), one_d)
    with pytest.raises(InputError, match="1-D kernel of size 1"):
        act_kernel(r90, torch.randn(4, 3, 3), spatial_dims=1)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="trivial, Z2, C4, D4"):
        get_group("H")
    with pytest.raises(InputError, match="square"):
        act(GroupElement(1), torch.zeros(1, 4, 6))
    assert act(GroupElement(2, True), torch.zeros(1, 4, 6)).shape == (1, 4, 6)  # even rotations keep the shape
    with pytest.raises(ConfigError, match="rotation"):
        GroupElement(4)
    with pytest.raises(InputError, match="not in group"):
        get_group("C4").index(GroupElement(0, True))
    assert [g.name for g in get_group("D4").elements()] == ["e", "r90", "r180", "r270", "f", "r90f", "r180f", "r270f"]
