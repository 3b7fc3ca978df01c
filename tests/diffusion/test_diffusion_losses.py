"""training_losses: keys and shapes for every configuration, gradient paths, and values vs closed forms."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from raytopo.diffusion.gaussian import LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion
from raytopo.diffusion.schedules import cosine_betas, linear_betas

D = torch.float64
KEYS = {"mse", "vb", "loss", "pred_x0"}


class TinyNet(nn.Module):
    """A 3x3 conv whose output also depends on the timestep it is given."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1).double()
        self.time = nn.Parameter(torch.ones(1, out_channels, 1, 1, dtype=D))
        self.seen_t = None

    def forward(self, x, t):
        self.seen_t = t
        return self.conv(x) + self.time * (t.to(D) / 1000.0).reshape(-1, 1, 1, 1)


def _batch(b=4, c=2, hw=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, hw, hw, dtype=D, generator=gen) * 2 - 1
    noise = torch.randn(b, c, hw, hw, dtype=D, generator=gen)
    return x0, noise


@pytest.mark.parametrize("mean_type,var_type,loss_type", list(itertools.product(MEAN_TYPES, VAR_TYPES, LOSS_TYPES)))
def test_keys_shapes_and_composition(mean_type, var_type, loss_type):
    d = GaussianDiffusion(cosine_betas(100), mean_type, var_type, loss_type)
    x0, noise = _batch()
    model = TinyNet(2, 4 if var_type == "learned_range" else 2)
    t = torch.tensor([0, 1, 50, 99])
    out = d.training_losses(model, x0, t, noise=noise)
    assert set(out) == KEYS
    for key in ("mse", "vb", "loss"):
        assert out[key].shape == (4,) and torch.isfinite(out[key]).all(), key
    assert out["pred_x0"].shape == x0.shape and out["pred_x0"].abs().max() <= 1.0
    assert torch.equal(model.seen_t, t)
    if loss_type in ("kl", "rescaled_kl"):
        torch.testing.assert_close(out["loss"], out["vb"])
        assert (out["vb"] > 0).all()
    else:
        torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])
        if var_type == "learned_range":
            assert (out["vb"] > 0).all()
        else:
            assert torch.equal(out["vb"], torch.zeros(4, dtype=D)) and not out["vb"].requires_grad
    # mse is L_simple against the noise (epsilon) or the clean image (x0), per sample
    raw = model(d.q_sample(x0, t, noise), t)[:, :2]
    target = noise if mean_type == "epsilon" else x0
    torch.testing.assert_close(out["mse"], ((raw - target) ** 2).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_gradient_reaches_the_model_through_pred_x0(mean_type):
    d = GaussianDiffusion(cosine_betas(100), mean_type, "learned_range", "mse")
    model = TinyNet(2, 4)
    x0, noise = _batch()
    out = d.training_losses(model, x0, torch.tensor([3, 20, 40, 60]), noise=noise)
    out["pred_x0"].sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0


def test_pred_x0_chain_factor_and_clamp():
    """d x0_hat / d eps = -sqrt(1/abar_t - 1) where unclamped, 0 where the clamp is active (docs/references.md, TDN 2.7)."""
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas, "epsilon", "fixed_large", "mse")
    x0, noise = _batch(b=2)
    t = torch.tensor([10, 70])
    xt = d.q_sample(x0, t, noise)
    eps_hat = (noise + 0.3 * torch.randn_like(noise)).requires_grad_(True)
    out = d.losses_from_output(eps_hat, x0, xt, t, noise)
    out["pred_x0"].sum().backward()
    unclamped = (d.predict_x0_from_eps(xt, t, eps_hat.detach()).abs() < 1.0)
    assert unclamped.any() and (~unclamped).any()
    for i in range(2):
        factor = math.sqrt(1.0 / np.prod(1 - betas[: int(t[i]) + 1]) - 1.0)
        g = eps_hat.grad[i]
        torch.testing.assert_close(g[unclamped[i]], torch.full_like(g[unclamped[i]], -factor))
        assert torch.all(g[~unclamped[i]] == 0)


@pytest.mark.parametrize("loss_type", ["mse", "rescaled_mse"])
def test_hybrid_vb_trains_only_the_variance_channels(loss_type):
    d = GaussianDiffusion(cosine_betas(100), "epsilon", "learned_range", loss_type)
    x0, noise = _batch()
    t = torch.tensor([0, 5, 50, 90])
    xt = d.q_sample(x0, t, noise)
    output = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    out = d.losses_from_output(output, x0, xt, t, noise)
    (vb_grad,) = torch.autograd.grad(out["vb"].sum(), output, retain_graph=True)
    assert torch.all(vb_grad[:, :2] == 0) and vb_grad[:, 2:].abs().sum() > 0
    (mse_grad,) = torch.autograd.grad(out["mse"].sum(), output)
    assert torch.all(mse_grad[:, 2:] == 0) and mse_grad[:, :2].abs().sum() > 0


def test_kl_loss_trains_the_mean_too():
    d = GaussianDiffusion(cosine_betas(100), "epsilon", "learned_range", "kl")
    x0, noise = _batch()
    t = torch.tensor([1, 5, 50, 90])
    output = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    out = d.losses_from_output(output, x0, d.q_sample(x0, t, noise), t, noise)
    (grad,) = torch.autograd.grad(out["loss"].sum(), output)
    assert grad[:, :2].abs().sum() > 0 and grad[:, 2:].abs().sum() > 0


def test_vb_is_zero_for_an_exact_model_and_matches_gaussian_kl_for_an_offset():
    """fixed_small: model variance = true posterior variance, so KL = (mu~ - mu)^2 / (2 var) nats per element."""
    betas = cosine_betas(100)
    d = GaussianDiffusion(betas, "epsilon", "fixed_small", "kl")
    x0, noise = _batch(b=3)
    t = torch.tensor([1, 30, 80])
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.losses_from_output(noise, x0, xt, t, noise)["vb"], torch.zeros(3, dtype=D))
    delta = 0.05
    vb = d.losses_from_output(noise + delta, x0, xt, t, noise)["vb"]
    for i, step in enumerate(t.tolist()):
        abar = np.prod(1 - betas[: step + 1])
        abar_prev = np.prod(1 - betas[:step])
        coef_x0 = betas[step] * math.sqrt(abar_prev) / (1 - abar)  # Ho et al. eq. 7
        dmean = coef_x0 * math.sqrt(1 / abar - 1) * delta
        var = betas[step] * (1 - abar_prev) / (1 - abar)
        assert vb[i].item() == pytest.approx(dmean**2 / (2 * var) / math.log(2), rel=1e-9)


def test_vb_at_t0_is_the_discretized_decoder_nll_in_bits():
    betas = linear_betas(100)
    d = GaussianDiffusion(betas, "x0", "fixed_large", "kl")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (2, 1, 4, 4), generator=gen).to(D) / 127.5 - 1.0
    mu = (x0 + 0.01 * torch.randn(x0.shape, dtype=D, generator=gen)).clamp(-1, 1)
    t = torch.zeros(2, dtype=torch.long)
    xt = d.q_sample(x0, t, torch.zeros_like(x0))
    vb = d.losses_from_output(mu, x0, xt, t, torch.zeros_like(x0))["vb"]
    # at t = 0 the model mean is the predicted x0 itself and the variance is beta~_1 (fixed_large)
    abar = np.cumprod(1 - betas)
    sigma = math.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))
    x, m = x0.numpy(), mu.numpy()
    upper = np.where(x > 0.999, np.inf, x + 1 / 255)
    lower = np.where(x < -0.999, -np.inf, x - 1 / 255)
    p = norm.cdf(upper, m, sigma) - norm.cdf(lower, m, sigma)
    expected = -np.log2(p).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(vb.numpy(), expected, rtol=2e-2)


def test_rescaled_losses_scale_vb():
    x0, noise = _batch()
    t = torch.tensor([0, 10, 100, 300])
    model = TinyNet(2, 4)
    base = {}
    for loss_type in LOSS_TYPES:
        d = GaussianDiffusion(cosine_betas(400), "epsilon", "learned_range", loss_type)
        base[loss_type] = d.training_losses(model, x0, t, noise=noise)["vb"]
    torch.testing.assert_close(base["rescaled_mse"], base["mse"] * 400 / 1000)
    torch.testing.assert_close(base["rescaled_kl"], base["kl"] * 400)


def test_generator_makes_losses_reproducible():
    d = GaussianDiffusion(cosine_betas(100), "epsilon", "learned_range", "mse")
    model = TinyNet(2, 4)
    x0, _ = _batch()
    t = torch.tensor([1, 2, 3, 4])
    a = d.training_losses(model, x0, t, generator=torch.Generator().manual_seed(7))["loss"]
    b = d.training_losses(model, x0, t, generator=torch.Generator().manual_seed(7))["loss"]
    c = d.training_losses(model, x0, t, generator=torch.Generator().manual_seed(8))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_kwargs_reach_the_model():
    d = GaussianDiffusion(cosine_betas(100), "epsilon", "fixed_large", "mse")
    seen = {}

    def model(x, t, y=None):
        seen["y"] = y
        return torch.zeros_like(x)

    x0, noise = _batch()
    d.training_losses(model, x0, torch.tensor([1, 2, 3, 4]), model_kwargs={"y": 5}, noise=noise)
    assert seen["y"] == 5
