"""Topo-GEN's convolutional VAE: shapes, the loss terms against independent formulas, and the identical pair.

Truth: torch.distributions' closed-form KL of two Gaussians, torch's own summed BCE (the reference's
``F.binary_cross_entropy(..., reduction="sum")``), and the layer arithmetic of stride-2 convolutions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence as torch_kl

from raytopo.errors import ConfigError
from raytopo.models.topovae import VAE, VAEConfig, VAEPair, kl_divergence, reconstruction_loss


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (16, 1)])
def test_vae_shapes_and_ranges(size, channels):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_size=size, in_channels=channels, c1=8, c2=16, hidden=32, n_latent=5))
    x = torch.rand(4, channels, size, size)
    out = vae(x)
    assert out.reconstruction.shape == x.shape
    assert out.mu.shape == out.logvar.shape == (4, 5)
    assert float(out.reconstruction.detach().min()) >= 0.0 and float(out.reconstruction.detach().max()) <= 1.0
    # the encoder halves the side twice: its linear layer takes c2 * (size / 4)^2 features
    assert vae.encoder[5].in_features == 16 * (size // 4) ** 2


def test_reference_architecture_by_default():
    vae = VAE()
    assert [type(m).__name__ for m in vae.encoder] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU"]
    first, second = vae.encoder[0], vae.encoder[2]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride, first.padding) == (1, 32, (4, 4), (2, 2), (1, 1))
    assert (second.in_channels, second.out_channels) == (32, 64)
    assert vae.encoder[5].in_features == 3136 and vae.encoder[5].out_features == 256
    assert vae.fc_mu.out_features == vae.fc_logvar.out_features == 10
    assert isinstance(vae.decoder[-1], torch.nn.Sigmoid)


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mu, logvar = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)


def test_batch_mean_equals_reference_loss():
    torch.manual_seed(2)
    vae = VAE(VAEConfig(image_size=16, c1=4, c2=8, hidden=16, n_latent=3))
    x = torch.rand(5, 1, 16, 16)
    out = vae(x, torch.randn(5, 3))
    per_sample = reconstruction_loss(out.reconstruction, x, "bce") + kl_divergence(out.mu, out.logvar)
    reference_bce = F.binary_cross_entropy(out.reconstruction, x, reduction="sum")
    reference_kld = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    torch.testing.assert_close(per_sample.mean(), (reference_bce + reference_kld) / 5)
    mse = reconstruction_loss(out.reconstruction, x, "mse")
    torch.testing.assert_close(mse, ((out.reconstruction - x) ** 2).reshape(5, -1).sum(1))


def test_same_noise_reparameterises_exactly():
    torch.manual_seed(3)
    vae = VAE(VAEConfig(image_size=8, c1=2, c2=4, hidden=8, n_latent=2))
    x, noise = torch.rand(3, 1, 8, 8), torch.randn(3, 2)
    out = vae(x, noise)
    mu, logvar = vae.encode(x)
    torch.testing.assert_close(out.reconstruction, vae.decode(mu + torch.exp(0.5 * logvar) * noise))
    with pytest.raises(Exception, match="noise"):
        vae(x, torch.randn(3, 5))


def test_pair_starts_identical_with_disjoint_parameters():
    torch.manual_seed(4)
    pair = VAEPair(VAEConfig(image_size=16, c1=4, c2=8, hidden=16, n_latent=3))
    vae_state, topo_state = pair.vae.state_dict(), pair.topovae.state_dict()
    assert vae_state.keys() == topo_state.keys()
    for key in vae_state:
        torch.testing.assert_close(vae_state[key], topo_state[key], rtol=0, atol=0)
        assert vae_state[key].data_ptr() != topo_state[key].data_ptr()  # copies, not shared tensors
    x = torch.rand(2, 1, 16, 16)
    outputs = pair(x)
    torch.testing.assert_close(outputs["vae"].reconstruction, outputs["topovae"].reconstruction)  # same noise
    single = VAEPair(VAEConfig(image_size=16, c1=4, c2=8, hidden=16, n_latent=3), compare=False)
    assert single.vae is None and list(single(x)) == ["topovae"]


@pytest.mark.parametrize("field,value", [("image_size", 30), ("c1", 0), ("n_latent", -1), ("hidden", 2.5)])
def test_bad_vae_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        VAEConfig(**{field: value})
    with pytest.raises(ConfigError, match="recon"):
        reconstruction_loss(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), "l1")
