"""TreeVAE's building blocks (Manduchi et al. 2023, CNN form; brief ``treevae.md`` section 1).

Every hidden layer is ``Linear (no bias) -> BatchNorm -> LeakyReLU(0.3)`` as in the reference; every Gaussian head
returns a mean and a **variance** (softplus), never a log-variance or a standard deviation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _hidden(in_features: int, out_features: int, slope: float) -> list[nn.Module]:
    """``Linear (no bias) -> BatchNorm1d -> LeakyReLU(slope)``."""
    return [nn.Linear(in_features, out_features, bias=False), nn.BatchNorm1d(out_features), nn.LeakyReLU(slope)]


def conv_side(size: int) -> int:
    """Side after one ``3 x 3`` stride-2 convolution without padding (28 -> 13 -> 6 -> 2)."""
    return (size - 3) // 2 + 1


def encoder_side(image_size: int) -> int:
    """Side of the encoder's last feature map after its three convolutions."""
    side = image_size
    for _ in range(3):
        side = conv_side(side)
    return side


def decoder_plan(image_size: int) -> tuple[int, int]:
    """``(start_side, output_padding)`` of the leaf decoder's first transposed convolution.

    The decoder decodes to ``T = 4 * ceil(S / 4)`` pixels and crops to ``S``: its last two transposed convolutions
    double the side exactly, and the first (``3 x 3``, stride 2, no padding) maps ``s0`` to ``2 s0 + 1 + op`` =
    ``T / 4``. For 28 px this is the reference's ``3 -> 7 -> 14 -> 28``.
    """
    quarter = math.ceil(image_size / 4)
    if quarter % 2:
        return (quarter - 1) // 2, 0
    return (quarter - 2) // 2, 1


class Encoder(nn.Module):
    """The ``cnn1`` encoder: three ``3 x 3`` stride-2 convolutions (no padding, no bias) with BatchNorm and
    LeakyReLU, flattened to ``d_0`` (``32 * 2 * 2 = 128`` features for 28 px and channels ``(8, 16, 32)``)."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int], slope: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=0, bias=False), nn.BatchNorm2d(width),
                       nn.LeakyReLU(slope)]
            previous = width
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BottomUp(nn.Module):
    """One bottom-up step ``d_{k-1} -> d_k`` (``Linear -> BN -> LeakyReLU``)."""

    def __init__(self, in_features: int, out_features: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(*_hidden(in_features, out_features, slope))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.net(d)


class GaussianHead(nn.Module):
    """The reference's ``Dense``: ``d -> (mu_hat, var_hat)`` with ``var_hat = softplus(Linear(d))``."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(in_features, latent_dim)
        self.var = nn.Linear(in_features, latent_dim)

    def forward(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(d), F.softplus(self.var(d))


class Transformation(nn.Module):
    """The reference's ``MLP``: ``Linear -> BN -> LeakyReLU`` then a Gaussian head. As the top-down prior
    ``p(z_n | z_parent) = N(mu_p, var_p)`` it maps a latent to a latent; with ``in_features`` it is a contrastive
    projection of a bottom-up feature (only its mean is used)."""

    def __init__(self, latent_dim: int, hidden: int, slope: float, in_features: int | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(*_hidden(in_features or latent_dim, hidden, slope))
        self.head = GaussianHead(hidden, latent_dim)

    def forward(self, z_parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(z_parent))


class Router(nn.Module):
    """Probability of going left, ``[B]``: ``(Linear -> BN -> LeakyReLU) x 2 -> Linear -> sigmoid``.

    Used as ``p(left | z_n)`` (``router``) and ``q(left | d)`` (``router_q``). The output keeps the batch
    dimension for batch size 1 (the reference's ``.squeeze()`` dropped it; brief section 4, bug 4).
    """

    def __init__(self, in_features: int, hidden: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(*_hidden(in_features, hidden, slope), *_hidden(hidden, hidden, slope),
                                 nn.Linear(hidden, 1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(inputs))[:, 0]


class LeafDecoder(nn.Module):
    """Leaf decoder ``z -> x_hat``: ``Linear -> BN -> LeakyReLU`` to ``c3 x s0 x s0``, three ``3 x 3`` stride-2
    transposed convolutions (BN and LeakyReLU between), cropped to ``image_size``; sigmoid for ``bce``."""

    def __init__(self, latent_dim: int, out_channels: int, channels: tuple[int, int, int], image_size: int,
                 slope: float, sigmoid: bool) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.start, output_padding = decoder_plan(image_size)
        self.image_size = image_size
        self.sigmoid = sigmoid
        self.dense = nn.Sequential(*_hidden(latent_dim, c3 * self.start * self.start, slope))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 3, stride=2, output_padding=output_padding, bias=False),
            nn.BatchNorm2d(c2), nn.LeakyReLU(slope),
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(c1), nn.LeakyReLU(slope),
            nn.ConvTranspose2d(c1, out_channels, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(z.shape[0], -1, self.start, self.start)
        x = self.deconv(h)[..., : self.image_size, : self.image_size]
        return torch.sigmoid(x) if self.sigmoid else x
