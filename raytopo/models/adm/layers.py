"""Building blocks of the ADM UNet (openai/improved-diffusion, as forked by TopoDiffusionNet).

The math is that of ``improved_diffusion/nn.py`` and ``improved_diffusion/unet.py``. Attribute names and the
positions of layers inside ``nn.Sequential`` containers are the original ones, because they ARE the state-dict
keys of every improved-diffusion / TDN checkpoint:

- ``ResBlock``: ``in_layers`` = [norm, SiLU, conv], ``emb_layers`` = [SiLU, linear],
  ``out_layers`` = [norm, SiLU, dropout, zero conv], ``skip_connection`` (identity or 1x1 conv).
- ``AttentionBlock``: ``norm``, ``qkv`` (1-D conv, C -> 3C), ``proj_out`` (1-D zero conv).
- ``Downsample``: ``op`` (stride-2 conv or 2x2 average pool). ``Upsample``: ``conv``.

Only the 2-D case is implemented (images); gradient checkpointing and fp16 master weights are not.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GROUP_NORM_GROUPS = 32
"""Groups of every GroupNorm in the network (improved-diffusion's ``normalization``)."""


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a 1-D batch of (possibly fractional) values.

    Returns ``[N, dim]``: ``cos(t * f_i)`` for the first half and ``sin(t * f_i)`` for the second, with
    ``f_i = max_period ** (-i / half)``, ``half = dim // 2``; an odd ``dim`` gets one trailing zero column.
    Used for timesteps and, in TDN, for topological counts.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in at least float32 and cast back to the input dtype (stable under fp16/bf16)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x``; half-precision inputs (and parameters) are upcast to float32 for the statistics."""
        if x.dtype.itemsize >= 4:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The network's normalisation layer: GroupNorm with 32 groups over ``channels``."""
    return GroupNorm32(GROUP_NORM_GROUPS, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    for param in module.parameters():
        param.detach().zero_()
    return module


def sinusoidal_mlp(model_channels: int, embed_dim: int) -> nn.Sequential:
    """The MLP applied to a sinusoidal embedding: Linear -> SiLU -> Linear (keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(
        nn.Linear(model_channels, embed_dim),
        nn.SiLU(),
        nn.Linear(embed_dim, embed_dim),
    )


def linear_count_mlp(embed_dim: int) -> nn.Sequential:
    """TDN's default count embedding: scalar -> Linear(1, D/2) -> ReLU -> Linear(D/2, D) -> ReLU."""
    return nn.Sequential(
        nn.Linear(1, embed_dim // 2),
        nn.ReLU(),
        nn.Linear(embed_dim // 2, embed_dim),
        nn.ReLU(),
    )


class EmbedBlock(nn.Module):
    """A module whose ``forward`` takes the conditioning embedding as a second argument."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # pragma: no cover - interface
        """Apply the block to ``x`` given the ``[N, D]`` embedding ``emb``."""
        raise NotImplementedError


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that hands the embedding to the children that take one (improved-diffusion's
    ``TimestepEmbedSequential``)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        """Run the children in order."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, EmbedBlock) else layer(x)
        return x


class ResBlock(EmbedBlock):
    """Residual block conditioned on the embedding, optionally changing the channel count.

    With ``use_scale_shift_norm`` the embedding gives a per-channel scale and shift applied after the second
    normalisation (``norm(h) * (1 + scale) + shift``); otherwise it is added before it.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x``: ``[N, C, H, W]``; ``emb``: ``[N, D]``. Returns ``[N, out_channels, H, W]``."""
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: Tensor, num_heads: int) -> Tensor:
    """Multi-head self-attention on a fused ``[N, 3C, T]`` tensor; returns ``[N, C, T]``.

    Head layout is improved-diffusion's (legacy) one: the ``3C`` channels are split into ``num_heads`` consecutive
    groups of ``3C / num_heads``, each holding that head's q, k and v in turn. Scores are scaled by
    ``1 / sqrt(C / num_heads)`` and softmaxed over the keys.
    """
    batch, width, length = qkv.shape
    channels = width // 3
    q, k, v = qkv.reshape(batch * num_heads, width // num_heads, length).chunk(3, dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(batch, channels, length)


class AttentionBlock(nn.Module):
    """Residual spatial self-attention: ``x + proj_out(attention(qkv(norm(x))))``."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[N, C, H, W]`` -> same shape."""
        batch, channels, *spatial = x.shape
        flat = x.reshape(batch, channels, -1)
        h = qkv_attention(self.qkv(self.norm(flat)), self.num_heads)
        return (flat + self.proj_out(h)).reshape(batch, channels, *spatial)


class Downsample(nn.Module):
    """Halve the spatial size with a stride-2 3x3 conv (``conv_resample``) or a 2x2 average pool."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(kernel_size=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, C, H/2, W/2]``."""
        return self.op(x)


class Upsample(nn.Module):
    """Double the spatial size (nearest neighbour), then an optional 3x3 conv (``conv_resample``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, C, 2H, 2W]``."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x
