"""Forward process, posterior, parameterisation and likelihood helpers against independent closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from raytopo.diffusion.gaussian import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from raytopo.diffusion.schedules import cosine_betas, linear_betas
from raytopo.errors import InputError

D = torch.float64


def _diffusion(**kw):
    return GaussianDiffusion(cosine_betas(100), **kw)


def _abar(betas, t):
    """alpha_bar after 0-based step t, straight from the product definition."""
    return float(np.prod(1.0 - np.asarray(betas)[: t + 1]))


def test_q_sample_with_given_noise_is_eq4():
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas)
    x0 = torch.linspace(-1, 1, 2 * 3 * 4, dtype=D).reshape(2, 3, 4)
    noise = torch.randn(2, 3, 4, dtype=D, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([7, 93])
    got = d.q_sample(x0, t, noise)
    for i in range(2):
        a = _abar(betas, int(t[i]))
        torch.testing.assert_close(got[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])


def test_q_sample_statistics():
    betas = linear_betas(1000)
    d = GaussianDiffusion(betas)
    n = 40_000
    t = torch.tensor([0, 300, 999])
    x0 = torch.tensor([0.8, -0.5, 1.0], dtype=D).reshape(3, 1).expand(3, n).contiguous()
    xt = d.q_sample(x0, t, generator=torch.Generator().manual_seed(1))
    for i in range(3):
        a = _abar(betas, int(t[i]))
        mean, var = math.sqrt(a) * float(x0[i, 0]), 1.0 - a
        assert abs(xt[i].mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(xt[i].var().item() - var) < 5 * var * math.sqrt(2.0 / n)


def test_q_mean_variance():
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas)
    x0 = torch.full((1, 2), 0.3, dtype=D)
    mean, var, log_var = d.q_mean_variance(x0, torch.tensor([50]))
    a = _abar(betas, 50)
    torch.testing.assert_close(mean, torch.full((1, 2), 0.3 * math.sqrt(a), dtype=D))
    torch.testing.assert_close(var, torch.full((1, 2), 1 - a, dtype=D))
    torch.testing.assert_close(log_var, torch.log(var))


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): product of two Gaussians in x_{t-1}."""
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas)
    gen = torch.Generator().manual_seed(2)
    ts = [1, 2, 40, 99]
    x0 = torch.rand(len(ts), 5, dtype=D, generator=gen) * 2 - 1
    xt = torch.randn(len(ts), 5, dtype=D, generator=gen)
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, torch.tensor(ts))
    for i, t in enumerate(ts):
        beta, a_prev = betas[t], _abar(betas, t - 1)
        # likelihood in x_{t-1}: N(x_t; sqrt(1-beta) x_{t-1}, beta); prior: N(sqrt(a_prev) x0, 1 - a_prev)
        precision = (1 - beta) / beta + 1 / (1 - a_prev)
        expected_var = 1 / precision
        expected_mean = expected_var * (math.sqrt(1 - beta) * xt[i] / beta + math.sqrt(a_prev) * x0[i] / (1 - a_prev))
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var[i], torch.full((5,), expected_var, dtype=D), rtol=1e-10, atol=0)
        torch.testing.assert_close(log_var[i], torch.log(var[i]), rtol=1e-10, atol=0)


def test_posterior_at_first_step_is_x0_with_clipped_log_variance():
    d = _diffusion()
    x0, xt = torch.full((1, 3), 0.25, dtype=D), torch.full((1, 3), -2.0, dtype=D)
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, torch.tensor([0]))
    torch.testing.assert_close(mean, x0)
    assert torch.all(var == 0)
    torch.testing.assert_close(log_var, torch.full((1, 3), math.log(d.posterior_variance[1]), dtype=D))


def test_normal_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(50, dtype=D, generator=gen), torch.randn(50, dtype=D, generator=gen)
    lv1, lv2 = torch.randn(50, dtype=D, generator=gen), torch.randn(50, dtype=D, generator=gen)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    torch.testing.assert_close(normal_kl(m1, 0.0, m1, 0.0), torch.zeros(50, dtype=D))


BINS = torch.arange(256, dtype=D) / 127.5 - 1.0


@pytest.mark.parametrize("mean,scale", [(0.0, 0.1), (0.9, 0.02), (-1.0, 0.5), (0.3, 0.004)])
def test_discretized_likelihood_is_a_distribution_over_256_bins(mean, scale):
    means = torch.full((256,), mean, dtype=D)
    log_scales = torch.full((256,), math.log(scale), dtype=D)
    log_p = discretized_gaussian_log_likelihood(BINS, means, log_scales)
    assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-6)
    # each bin against the exact normal CDF over [x - 1/255, x + 1/255] (edge bins open-ended)
    upper = np.append(BINS[:-1].numpy() + 1 / 255, np.inf)
    lower = np.append(-np.inf, BINS[1:].numpy() - 1 / 255)
    exact = norm.cdf(upper, mean, scale) - norm.cdf(lower, mean, scale)
    np.testing.assert_allclose(torch.exp(log_p).numpy(), exact, atol=1e-3)


def test_discretized_likelihood_shape_mismatch():
    with pytest.raises(InputError, match="one shape"):
        discretized_gaussian_log_likelihood(BINS, torch.zeros(3, dtype=D), torch.zeros(256, dtype=D))


def test_x0_eps_conversions_invert_q_sample():
    d = _diffusion()
    gen = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 2, 4, dtype=D, generator=gen) * 2 - 1
    eps = torch.randn(3, 2, 4, dtype=D, generator=gen)
    t = torch.tensor([0, 50, 99])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(d.predict_eps_from_x0(xt, t, x0), eps)


def test_epsilon_mean_is_ho_eq11_without_clipping():
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas, mean_type="epsilon", var_type="fixed_small")
    gen = torch.Generator().manual_seed(5)
    xt, eps = torch.randn(2, 1, 3, 3, dtype=D, generator=gen), torch.randn(2, 1, 3, 3, dtype=D, generator=gen)
    t = torch.tensor([10, 80])
    out = d.p_mean_variance(eps, xt, t, clip=False)
    for i in range(2):
        b, a = betas[int(t[i])], _abar(betas, int(t[i]))
        expected = (xt[i] - b / math.sqrt(1 - a) * eps[i]) / math.sqrt(1 - b)
        torch.testing.assert_close(out["mean"][i], expected)


def test_x0_mean_type_uses_output_as_x0_and_clips():
    d = _diffusion(mean_type="x0", var_type="fixed_large")
    xt = torch.zeros(1, 1, 2, 2, dtype=D)
    out = d.p_mean_variance(torch.full((1, 1, 2, 2), 3.0, dtype=D), xt, torch.tensor([5]), clip=True)
    torch.testing.assert_close(out["pred_x0"], torch.ones(1, 1, 2, 2, dtype=D))
    mean, _, _ = d.q_posterior_mean_variance(out["pred_x0"], xt, torch.tensor([5]))
    torch.testing.assert_close(out["mean"], mean)


def test_variance_types():
    betas = cosine_betas(100)
    post = betas[1:] * (1 - np.cumprod(1 - betas)[:-1]) / (1 - np.cumprod(1 - betas)[1:])
    xt = torch.zeros(3, 1, 2, 2, dtype=D)
    t = torch.tensor([0, 1, 60])
    eps = torch.zeros_like(xt)

    small = GaussianDiffusion(betas, var_type="fixed_small").p_mean_variance(eps, xt, t)["variance"][:, 0, 0, 0]
    np.testing.assert_allclose(small.numpy(), [post[0], post[0], post[59]], rtol=1e-10)  # t=0 clipped to t=1

    large = GaussianDiffusion(betas, var_type="fixed_large").p_mean_variance(eps, xt, t)["variance"][:, 0, 0, 0]
    np.testing.assert_allclose(large.numpy(), [post[0], betas[1], betas[60]], rtol=1e-10)

    learned = GaussianDiffusion(betas, var_type="learned_range")
    for v, expected in [(1.0, [betas[0], betas[1], betas[60]]), (-1.0, small.numpy()),
                        (0.0, np.sqrt(small.numpy() * np.array([betas[0], betas[1], betas[60]])))]:
        out = learned.p_mean_variance(torch.cat([eps, torch.full_like(xt, v)], dim=1), xt, t)
        np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), expected, rtol=1e-10)
        torch.testing.assert_close(out["log_variance"], torch.log(out["variance"]))


def test_output_shape_and_t_are_checked():
    d = _diffusion(var_type="learned_range")
    xt = torch.zeros(2, 3, 4, 4)
    with pytest.raises(InputError, match=r"expected shape \(2, 6, 4, 4\) for var_type learned_range"):
        d.p_mean_variance(torch.zeros(2, 3, 4, 4), xt, torch.tensor([1, 2]))
    with pytest.raises(InputError, match="t: expected shape"):
        d.p_mean_variance(torch.zeros(2, 6, 4, 4), xt, torch.tensor([1]))


@pytest.mark.parametrize("bad", [[0.1], [0.1, 1.0], [0.0, 0.1], [[0.1, 0.2]], [0.1, float("nan")]])
def test_betas_are_validated(bad):
    with pytest.raises(InputError, match="betas"):
        GaussianDiffusion(bad)


def test_model_timesteps_rescale():
    t = torch.tensor([0, 50, 99])
    assert torch.equal(_diffusion().model_timesteps(t), t)
    scaled = GaussianDiffusion(cosine_betas(100), rescale_timesteps=True).model_timesteps(t)
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, torch.tensor([0.0, 500.0, 990.0]))
