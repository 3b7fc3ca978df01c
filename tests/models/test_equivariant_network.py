"""Equivariant UNets, frame averaging and the equivariance error, measured on small random networks."""

from __future__ import annotations

import io
from functools import cache

import pytest
import torch
from adm_helpers import randomized
from torch import nn
from torch.nn.utils import parametrize

from raytopo.errors import ConfigError, InputError
from raytopo.models.adm import UNetConfig, UNetModel
from raytopo.models.equivariant import (
    GroupAveraged,
    GroupElement,
    act,
    build_equivariant_unet,
    equivariance_error,
    equivariance_errors,
    get_group,
    inverse,
)

GROUPS = ("Z2", "C4", "D4")
MECHANISMS = ("kernel", "symmetric", "group")
TINY = UNetConfig(image_size=16, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), conv_resample=False)
EXACT = 1e-5  # float32 rounding through the network is about 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@cache
def network(group: str, mechanism: str) -> nn.Module:
    torch.manual_seed(0)
    return randomized(build_equivariant_unet(TINY, group, mechanism))


def inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 16, 16, generator=gen), torch.tensor([7.0, 640.0])[:n]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("group", GROUPS)
def test_equivariant_unet_is_exactly_equivariant(group: str, mechanism: str) -> None:
    x, t = inputs()
    with torch.no_grad():
        assert network(group, mechanism)(x, t).abs().mean() > 1e-2  # a non-trivial function
    assert equivariance_error(network(group, mechanism), x, t, group=group, batched=True) < EXACT


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_equivariance_with_conditioning_colour_and_learned_sigma(mechanism: str) -> None:
    config = UNetConfig(**{**TINY.to_dict(), "in_channels": 3, "learn_sigma": True, "use_scale_shift_norm": False,
                           "num_classes": 4, "num_heads": 2})
    torch.manual_seed(0)
    model = randomized(build_equivariant_unet(config, "C4", mechanism))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5.0, 900.0])
    assert model(x, t, classes=torch.tensor([3, 1])).shape == (2, 6, 16, 16)
    classes = torch.tensor([3, 1])
    assert equivariance_error(model, x, t, group="C4", classes=classes) < EXACT
    assert equivariance_error(model, x, t, group="C4", classes=classes, batched=True) < EXACT


@pytest.mark.parametrize("group", GROUPS)
def test_plain_unet_is_not_equivariant_and_its_group_average_is(group: str) -> None:
    x, t = inputs()
    plain = network("trivial", "none")
    assert isinstance(plain, UNetModel)
    assert equivariance_error(plain, x, t, group=group) > 1e-2
    assert equivariance_error(GroupAveraged(plain, group), x, t, group=group) < EXACT


def test_group_average_is_the_mean_of_separately_evaluated_copies() -> None:
    config = UNetConfig(**{**TINY.to_dict(), "num_classes": 3})
    torch.manual_seed(0)
    model = randomized(UNetModel(config))
    x, t = inputs()
    classes = torch.tensor([2, 0])
    group = get_group("D4")
    with torch.no_grad():
        expected = sum(act(inverse(g), model(act(g, x), t, classes=classes)) for g in group.elements()) / group.order
        averaged = GroupAveraged(model, group)(x, t, classes=classes)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-5)


def test_group_average_transforms_image_kwargs_and_forwards_attributes() -> None:
    class Denoiser:
        sigma_min, sigma_max = 0.002, 80.0

        def __call__(self, x: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor) -> torch.Tensor:
            return x * sigma[:, None, None, None] + self_cond[..., :1, :] * 2.0  # not equivariant in either input

    x, cond = torch.randn(3, 1, 6, 6), torch.randn(3, 1, 6, 6)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    averaged = GroupAveraged(Denoiser(), "C4", image_kwargs=("self_cond",))
    assert (averaged.sigma_min, averaged.sigma_max) == (0.002, 80.0)
    assert equivariance_error(lambda z, s: averaged(z, s, self_cond=act(GroupElement(0), cond)), x, sigma,
                              group="trivial") == 0.0
    r90 = GroupElement(1)
    torch.testing.assert_close(averaged(act(r90, x), sigma, self_cond=act(r90, cond)),
                               act(r90, averaged(x, sigma, self_cond=cond)))
    with pytest.raises(AttributeError):
        _ = averaged.sigmas
    with pytest.raises(InputError, match="image batch"):
        GroupAveraged(lambda z, s: z[:1], "C4")(x, sigma)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_trivial_group_equals_the_plain_unet(mechanism: str) -> None:
    plain = network("trivial", "none")
    model = build_equivariant_unet(TINY, "trivial", mechanism)
    with torch.no_grad():  # assigning through a parametrization stores right_inverse(value)
        for name, module in plain.named_modules():
            target = model.unet.get_submodule(name)
            for param_name, value in module.named_parameters(recurse=False):
                if parametrize.is_parametrized(target, param_name):
                    setattr(target, param_name, value.detach().clone())
                else:
                    getattr(target, param_name).copy_(value)
    x, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), plain(x, t), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_gradients_reach_every_free_parameter(mechanism: str) -> None:
    model = network("C4", mechanism)
    x, t = inputs()
    model.zero_grad()
    model(x, t).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name
    model.zero_grad()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_state_dict_round_trip(mechanism: str) -> None:
    model = network("D4", mechanism)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    rebuilt = build_equivariant_unet(TINY, "D4", mechanism)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    x, t = inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t), model(x, t))


@pytest.mark.parametrize(
    ("group", "mechanism", "count"),
    [("trivial", "none", 708_833), ("Z2", "kernel", 708_833), ("D4", "kernel", 708_833),
     ("Z2", "symmetric", 545_825), ("C4", "symmetric", 382_817), ("D4", "symmetric", 382_817),
     ("Z2", "group", 1_452_513), ("C4", "group", 3_062_753), ("D4", "group", 6_774_753)],
)
def test_free_parameter_counts(group: str, mechanism: str, count: int) -> None:
    # the counts of the network.py docstring; "symmetric" stores 3 (C4, D4) or 6 (Z2) of 9 values per 3x3 kernel
    assert sum(p.numel() for p in network(group, mechanism).parameters()) == count


def test_symmetric_parameter_count_closed_form() -> None:
    plain = network("trivial", "none")
    kernels = [m.weight.numel() // 9 for m in plain.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    total = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in network("C4", "symmetric").parameters()) == total - 6 * sum(kernels)
    assert sum(p.numel() for p in network("Z2", "symmetric").parameters()) == total - 3 * sum(kernels)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="conv_resample"):
        build_equivariant_unet(UNetConfig(**{**TINY.to_dict(), "conv_resample": True}), "C4", "kernel")
    with pytest.raises(ConfigError, match="mechanism"):
        build_equivariant_unet(TINY, "C4", "split")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown group"):
        build_equivariant_unet(TINY, "H", "kernel")
    assert isinstance(build_equivariant_unet(UNetConfig(**{**TINY.to_dict(), "conv_resample": True}), "C4", "none"),
                      UNetModel)


def test_equivariance_errors_known_answer() -> None:
    # f(x) = x + a V x with V the vertical flip: f commutes with the horizontal flip and with r180, while for r90
    # f(r x) - r f(x) = a (V r - r V) x = a (r^-1 V - r V) x  (since V r = r^-1 V)
    a, x = 0.7, torch.randn(2, 3, 5, 5, dtype=torch.float64)
    vflip = GroupElement(2, True)  # r180 after a horizontal mirror = a vertical mirror
    f = lambda z: z + a * act(vflip, z)  # noqa: E731
    errors = equivariance_errors(f, x, group="C4")
    r90, r270 = GroupElement(1), GroupElement(3)
    expected = torch.linalg.vector_norm(a * (act(r270, act(vflip, x)) - act(r90, act(vflip, x)))) / f(x).norm()
    assert errors["r180"] < 1e-15
    assert errors["r90"] == pytest.approx(float(expected), rel=1e-12)
    assert errors["r90"] > 0.5
    assert equivariance_errors(f, x, group="Z2") == {"f": pytest.approx(0.0, abs=1e-15)}
    assert equivariance_error(f, x, group="trivial") == 0.0
    assert equivariance_errors(f, x, group="C4", batched=True) == pytest.approx(errors, abs=1e-15)
    with pytest.raises(InputError, match="norm 0"):
        equivariance_error(torch.zeros_like, x, group="C4")
