"""space_timesteps semantics, SpacedDiffusion equivalences and build_diffusion."""

import numpy as np
import pytest
import torch

from raytopo.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from raytopo.diffusion.respace import SpacedDiffusion, build_diffusion, space_timesteps
from raytopo.diffusion.schedules import cosine_betas, linear_betas
from raytopo.errors import ConfigError

D = torch.float64


def test_sections_10_15_20_of_300():
    """improved-diffusion docstring example: 10, 15 and 20 strided steps from three sections of 100."""
    steps = space_timesteps(300, "10,15,20")
    sections = [[s for s in steps if lo <= s < lo + 100] for lo in (0, 100, 200)]
    assert [len(s) for s in sections] == [10, 15, 20]
    assert sections[0] == list(range(0, 100, 11))  # stride (100-1)/(10-1) = 11 exactly
    for lo, section in zip((0, 100, 200), sections):
        assert section[0] == lo and section[-1] == lo + 99  # both ends of every section
    assert space_timesteps(300, [10, 15, 20]) == steps


def test_single_section_and_uneven_division():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    assert set(np.diff(steps)) <= {4, 5}
    # 7 steps in two sections -> sizes 4 and 3; stride 1.5 in the first: round(0, 1.5, 3.0) = 0, 2, 3
    assert space_timesteps(7, "3,3") == [0, 2, 3, 4, 5, 6]
    assert space_timesteps(100, "100") == list(range(100))


def test_ddim_striding():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))
    with pytest.raises(ConfigError, match=r"timestep_respacing: no integer stride gives exactly 999 of 1000 .*ddim500"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ConfigError, match="integer N"):
        space_timesteps(1000, "ddimfifty")


@pytest.mark.parametrize("spec", ["abc", "", "10,,20", "0", "-5"])
def test_bad_section_specs(spec):
    with pytest.raises(ConfigError, match="timestep_respacing"):
        space_timesteps(300, spec)


def test_section_too_small():
    with pytest.raises(ConfigError, match="cannot take 20 steps from a section of 10"):
        space_timesteps(30, "5,5,20")


def test_respaced_alphas_cumprod_match_parent_at_kept_steps():
    base = GaussianDiffusion(cosine_betas(1000))
    for spec in ("ddim50", "10,15,20", "250"):
        kept = space_timesteps(1000, spec)
        spaced = SpacedDiffusion(kept, cosine_betas(1000))
        assert spaced.num_timesteps == len(kept)
        np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9)
        np.testing.assert_array_equal(spaced.timestep_map, kept)


def test_timestep_mapping_and_rescaling():
    kept = space_timesteps(500, "ddim50")  # stride 10
    k = torch.tensor([0, 7, 49])
    assert torch.equal(SpacedDiffusion(kept, linear_betas(500)).model_timesteps(k), torch.tensor([0, 70, 490]))
    scaled = SpacedDiffusion(kept, linear_betas(500), rescale_timesteps=True).model_timesteps(k)
    torch.testing.assert_close(scaled, torch.tensor([0.0, 140.0, 980.0]))  # original t * 1000 / 500


@pytest.mark.parametrize("var_type,loss_type", [("learned_range", "mse"), ("fixed_small", "kl")])
def test_keeping_every_step_equals_the_base_process(var_type, loss_type):
    betas = cosine_betas(200)
    base = GaussianDiffusion(betas, "epsilon", var_type, loss_type)
    spaced = SpacedDiffusion(range(200), betas, "epsilon", var_type, loss_type)
    np.testing.assert_allclose(spaced.betas, base.betas, rtol=1e-9)
    channels = 2 if var_type == "learned_range" else 1
    conv = torch.nn.Conv2d(1, channels, 3, padding=1).double()

    def model(x, t):
        return conv(x) + t.to(D).reshape(-1, 1, 1, 1) / 200

    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, dtype=D, generator=gen) * 2 - 1
    noise = torch.randn(4, 1, 5, 5, dtype=D, generator=gen)
    t = torch.tensor([0, 1, 100, 199])
    a, b = base.training_losses(model, x0, t, noise=noise), spaced.training_losses(model, x0, t, noise=noise)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-7, atol=1e-9)
    pa, pb = base.model_mean_variance(model, noise, t), spaced.model_mean_variance(model, noise, t)
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-7, atol=1e-9)


def test_build_diffusion():
    cfg = DiffusionConfig(steps=1000, schedule="cosine", var_type="fixed_small", loss="kl")
    full = build_diffusion(cfg)
    assert type(full) is GaussianDiffusion and full.num_timesteps == 1000
    assert (full.var_type, full.loss_type, full.mean_type) == ("fixed_small", "kl", "epsilon")
    np.testing.assert_array_equal(full.betas, cosine_betas(1000))
    assert build_diffusion(cfg, "ddim50").num_timesteps == 50
    cfg_spaced = DiffusionConfig(steps=1000, schedule="cosine", timestep_respacing="250")
    assert build_diffusion(cfg_spaced).num_timesteps == 250
    assert build_diffusion(cfg_spaced, "ddim25").num_timesteps == 25  # the argument overrides the config
    with pytest.raises(ConfigError, match="ddim999"):
        build_diffusion(cfg, "ddim999")
