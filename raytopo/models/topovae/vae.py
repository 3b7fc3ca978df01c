"""Topo-GEN's convolutional VAE, its per-sample loss terms, and the VAE / TopoVAE pair trained side by side.

Architecture (docs/references.md, Topo-GEN A.5; Topo-GEN ``model.py``): encoder conv ``C -> c1`` and
``c1 -> c2`` (kernel 4, stride 2, padding 1, ReLU), a fully connected layer to ``hidden`` (ReLU), then two
heads for the mean ``mu`` and the log-variance ``logvar`` of ``q(z | x)``; the decoder mirrors it (``z ->
hidden -> c2 * (S/4)^2``, two transposed convolutions) and ends in a sigmoid, so reconstructions are in
[0, 1]. The reference is ``c1 = 32, c2 = 64, hidden = 256, n_latent = 10`` on 28 x 28 images.

Loss (Kingma & Welling 2014, eq. 10 and Appendix B): per sample, the reconstruction term summed over pixels
(binary cross-entropy, or the squared error) and ``KL(q(z|x) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 -
exp(logvar_j))`` summed over latent dimensions. The reference's batch loss ``(BCE_sum + KLD_sum) / B`` is the
batch mean of ``reconstruction_loss + kl_divergence``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError

Reconstruction = Literal["bce", "mse"]


@dataclass(frozen=True)
class VAEConfig(Checked):
    """Shape of the VAE; defaults are the reference's (FashionMNIST, 28 px, 10 latent dimensions)."""

    image_size: int = 28
    in_channels: int = 1
    c1: int = 32
    c2: int = 64
    hidden: int = 256
    n_latent: int = 10

    def __post_init__(self) -> None:
        for name in ("in_channels", "c1", "c2", "hidden", "n_latent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(self.image_size, int) or self.image_size < 4 or self.image_size % 4:
            raise ConfigError(f"image_size: expected a multiple of 4 (two stride-2 convolutions), got {self.image_size!r}")

    @property
    def feature_size(self) -> int:
        """Side of the encoder's last feature map (``image_size / 4``)."""
        return self.image_size // 4


class VAEOutput(NamedTuple):
    reconstruction: torch.Tensor   # [B, C, S, S] in [0, 1]
    mu: torch.Tensor               # [B, n_latent]
    logvar: torch.Tensor           # [B, n_latent]


class VAE(nn.Module):
    """The reference convolutional VAE; ``forward(x, noise)`` with ``x`` in [0, 1]."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else VAEConfig()
        flat = config.c2 * config.feature_size**2
        self.encoder = nn.Sequential(
            nn.Conv2d(config.in_channels, config.c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(config.c1, config.c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, config.hidden), nn.ReLU(),
        )
        self.fc_mu = nn.Linear(config.hidden, config.n_latent)
        self.fc_logvar = nn.Linear(config.hidden, config.n_latent)
        self.decoder = nn.Sequential(
            nn.Linear(config.n_latent, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, flat), nn.ReLU(),
            nn.Unflatten(1, (config.c2, config.feature_size, config.feature_size)),
            nn.ConvTranspose2d(config.c2, config.c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(config.c1, config.in_channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z | x)``, each ``[B, n_latent]``."""
        features = self.encoder(x)
        return self.fc_mu(features), self.fc_logvar(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, S, S]`` in [0, 1] from latents ``[B, n_latent]``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> VAEOutput:
        """Reconstruct ``x`` through ``z = mu + exp(logvar / 2) * noise`` (reparameterisation; ``noise``
        defaults to a fresh standard normal draw; pass the same noise to compare two models exactly)."""
        mu, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn_like(mu)
        if noise.shape != mu.shape:
            raise InputError(f"VAE noise: expected shape {tuple(mu.shape)}, got {tuple(noise.shape)}")
        return VAEOutput(self.decode(mu + torch.exp(0.5 * logvar) * noise), mu, logvar)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: Reconstruction = "bce") -> torch.Tensor:
    """Per-sample ``[B]`` reconstruction loss summed over pixels: binary cross-entropy (the reference's
    ``F.binary_cross_entropy(..., reduction="sum")`` split per sample) or the squared error."""
    if kind == "bce":
        pixels = F.binary_cross_entropy(reconstruction, target, reduction="none")
    elif kind == "mse":
        pixels = (reconstruction - target) ** 2
    else:
        raise ConfigError(f"recon: expected 'bce' or 'mse', got {kind!r}")
    return pixels.flatten(1).sum(dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, ``[B]``
    (Kingma & Welling 2014, Appendix B: ``-1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))``)."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


class VAEPair(nn.Module):
    """A plain VAE and a TopoVAE that start from identical weights (the reference's comparison, A.5).

    ``vae`` is None when only the TopoVAE is trained (``compare: false``). The two parameter sets are
    disjoint, so one Adam(W, weight decay 0) optimiser over both is two independent Adam optimisers, as in the
    reference, provided nothing couples their gradients (no global gradient-norm clipping).
    """

    def __init__(self, config: VAEConfig | None = None, compare: bool = True) -> None:
        super().__init__()
        self.topovae = VAE(config)
        self.vae: VAE | None = copy.deepcopy(self.topovae) if compare else None

    @property
    def config(self) -> VAEConfig:
        return self.topovae.config

    def models(self) -> dict[str, VAE]:
        """``{"vae": ..., "topovae": ...}`` (only ``topovae`` when not comparing), in that order."""
        return {"vae": self.vae, "topovae": self.topovae} if self.vae is not None else {"topovae": self.topovae}

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, VAEOutput]:
        """Both models on the same batch and the same reparameterisation noise."""
        if noise is None:
            noise = torch.randn(x.shape[0], self.config.n_latent, device=x.device, dtype=x.dtype)
        return {name: model(x, noise) for name, model in self.models().items()}
