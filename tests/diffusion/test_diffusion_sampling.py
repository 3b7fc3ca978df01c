"""DDPM and DDIM samplers with an oracle denoiser for a one-point data set, plus determinism."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from raytopo.diffusion.gaussian import GaussianDiffusion
from raytopo.diffusion.respace import SpacedDiffusion, space_timesteps
from raytopo.diffusion.schedules import cosine_betas
from raytopo.errors import ConfigError, InputError

D = torch.float64
BASE_STEPS = 1000
BASE_BETAS = cosine_betas(BASE_STEPS)
BASE_ABAR = torch.from_numpy(np.cumprod(1.0 - BASE_BETAS))


def oracle(x0_star, mean_type="epsilon", learned=False, rescaled=False):
    """The exact denoiser when the data is the single point x0_star.

    It indexes the *base* schedule by the timestep it is given, so it is only exact if the diffusion maps
    (respaced) step indices back to original timesteps correctly.
    """

    def model(x, t_model):
        t_orig = torch.round(t_model * BASE_STEPS / 1000.0).long() if rescaled else t_model
        abar = BASE_ABAR[t_orig].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        target = x0_star.expand_as(x) if mean_type == "x0" else (x - abar.sqrt() * x0_star) / (1 - abar).sqrt()
        if learned:  # v = -1: the posterior variance beta~_t
            return torch.cat([target, -torch.ones_like(target)], dim=1)
        return target

    return model


def _x0_star(shape=(1, 2, 5, 5)):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(shape, dtype=D, generator=gen) * 1.6 - 0.8


@pytest.mark.parametrize("mean_type,learned", [("epsilon", False), ("x0", False), ("epsilon", True)])
@pytest.mark.parametrize("rescaled", [False, True])
def test_ddim_eta0_with_an_oracle_recovers_x0_through_respacing(mean_type, learned, rescaled):
    d = SpacedDiffusion(space_timesteps(BASE_STEPS, "ddim25"), BASE_BETAS, mean_type,
                        "learned_range" if learned else "fixed_small", "mse", rescale_timesteps=rescaled)
    x0 = _x0_star()
    noise = torch.randn((3, 2, 5, 5), dtype=D, generator=torch.Generator().manual_seed(1))
    out = d.ddim_sample_loop(oracle(x0, mean_type, learned, rescaled), (3, 2, 5, 5), noise=noise)
    torch.testing.assert_close(out, x0.expand(3, -1, -1, -1), atol=1e-6, rtol=0)


def test_oracle_fails_when_the_timestep_map_is_ignored():
    """Control for the test above: a model fed compressed indices is not the oracle, so x0 is not recovered."""
    d = SpacedDiffusion(space_timesteps(BASE_STEPS, "ddim25"), BASE_BETAS, "epsilon", "fixed_small", "mse")
    x0 = _x0_star()
    model = oracle(x0)
    noise = torch.randn((3, 2, 5, 5), dtype=D, generator=torch.Generator().manual_seed(1))
    # t_model is 40 k for compressed index k; feeding k itself is the bug the mapping exists to avoid
    wrong = d.ddim_sample_loop(lambda x, t: model(x, t // 40), (3, 2, 5, 5), noise=noise, clip=False)
    assert (wrong - x0).abs().max() > 1e-2


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 2, 3, padding=1).double()

    def forward(self, x, t):
        return self.conv(x) * (1.0 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000.0)


def test_ddim_eta0_is_deterministic():
    d = SpacedDiffusion(space_timesteps(BASE_STEPS, "20"), BASE_BETAS, "epsilon", "fixed_large", "mse")
    noise = torch.randn((2, 2, 4, 4), dtype=D, generator=torch.Generator().manual_seed(2))
    net = TinyNet()
    a = d.ddim_sample_loop(net, (2, 2, 4, 4), noise=noise.clone(), generator=torch.Generator().manual_seed(0))
    b = d.ddim_sample_loop(net, (2, 2, 4, 4), noise=noise.clone(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, noise)
    c = d.ddim_sample_loop(net, (2, 2, 4, 4), noise=noise.clone(), eta=1.0, generator=torch.Generator().manual_seed(0))
    e = d.ddim_sample_loop(net, (2, 2, 4, 4), noise=noise.clone(), eta=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c, e)


def test_ddim_eta1_step_equals_ddpm_step_with_posterior_variance():
    """With eta = 1, sigma_t^2 = beta~_t and DDIM eq. 12 reduces to the DDPM ancestral step (fixed_small)."""
    d = GaussianDiffusion(cosine_betas(50), "epsilon", "fixed_small", "mse")
    net = TinyNet()
    x = torch.randn((2, 2, 4, 4), dtype=D, generator=torch.Generator().manual_seed(3))
    for step in (0, 1, 25, 49):
        t = torch.full((2,), step)
        ddim = d.ddim_sample(net, x, t, eta=1.0, generator=torch.Generator().manual_seed(9))
        ddpm = d.p_sample(net, x, t, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(ddim["sample"], ddpm["sample"])
        torch.testing.assert_close(ddim["pred_x0"], ddpm["pred_x0"])


def test_ddpm_with_an_oracle_reproduces_the_forward_marginals():
    """With the exact x0 and beta~_t variances, every reverse x_t is distributed as q(x_t | x0)."""
    d = SpacedDiffusion(space_timesteps(BASE_STEPS, "40"), BASE_BETAS, "epsilon", "fixed_small", "mse")
    value = 0.6
    x0 = torch.full((1, 1, 1, 1), value, dtype=D)
    n = 20_000
    snapshots = {}

    def progress(done, total, out):
        snapshots[out["t"]] = out["sample"].clone()
        assert total == 40 and done == 40 - out["t"]

    final = d.p_sample_loop(oracle(x0), (n, 1, 1, 1), progress=progress, device="cpu",
                            generator=torch.Generator().manual_seed(4))
    assert sorted(snapshots) == list(range(40))
    # the sample produced at step index k is x at index k-1 of the respaced process
    for k in (35, 20, 5):
        abar = d.alphas_cumprod[k - 1]
        x = snapshots[k].double()
        mean, var = math.sqrt(abar) * value, 1 - abar
        assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n), k
        assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / n), k
    torch.testing.assert_close(final.double(), torch.full((n, 1, 1, 1), value, dtype=D), atol=1e-5, rtol=0)


def test_p_sample_loop_reproducible_with_generator():
    d = GaussianDiffusion(cosine_betas(30), "epsilon", "fixed_large", "mse")
    net = TinyNet()

    def run(seed):
        return d.p_sample_loop(net, (2, 2, 4, 4), generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert a.dtype == torch.float64  # fresh noise follows the dtype of the model parameters
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_argument_checks():
    d = GaussianDiffusion(cosine_betas(30))
    with pytest.raises(InputError, match="noise: expected shape"):
        d.ddim_sample_loop(TinyNet(), (2, 2, 4, 4), noise=torch.zeros(1, 2, 4, 4, dtype=D))
    with pytest.raises(ConfigError, match="eta"):
        d.ddim_sample_loop(TinyNet(), (2, 2, 4, 4), eta=1.5)
