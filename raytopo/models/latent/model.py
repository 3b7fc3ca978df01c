"""The latent diffusion model (Rombach et al. 2022) and its mask ControlNet (Zhang et al. 2023) as modules.

`LatentDiffusion` holds the autoencoder, the class-conditional UNet and the latent scale (a buffer, so it is
saved in every checkpoint): ``z = scale * E(x)``, the UNet predicts the noise of ``z_t`` (Ho et al. 2020,
eq. 14), ``x = D(z / scale)``. `ControlledLatentDiffusion` adds a ControlNet whose residuals are added to the
UNet's skip connections and middle block; both nets see the same class labels, so classifier-free guidance on
the class keeps working under mask control (the reference dropped the class embedder, docs/latent.md).

Both are called as ``model(z_t, t, label=..., [mask=...])`` -> epsilon, the signature
`raytopo.diffusion.gaussian.GaussianDiffusion.call_model` uses, so training losses and every raytopo sampler
work on them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentDiffusion(nn.Module):
    """Autoencoder + class-conditional UNet; class ``num_classes`` is the null class of guidance."""

    def __init__(self, vae: nn.Module, unet: nn.Module, num_classes: int, latent_scale: float = 1.0) -> None:
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.num_classes = num_classes
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

    @property
    def null_class(self) -> int:
        return self.num_classes

    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Scaled latents of images in [-1, 1]: a draw from the posterior (as the reference) or its mean."""
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mode()
        return latents * self.latent_scale

    def decode(self, latents: Tensor) -> Tensor:
        """Images (unclamped, about [-1, 1]) of scaled latents."""
        return self.vae.decode(latents / self.latent_scale).sample

    def forward(self, z_t: Tensor, t: Tensor, label: Tensor,
                residuals: tuple[tuple[Tensor, ...], Tensor] | None = None) -> Tensor:
        """The predicted noise of ``z_t`` at steps ``t`` for classes ``label`` (``null_class``: unconditional)."""
        down, middle = residuals if residuals is not None else (None, None)
        return self.unet(z_t, t, encoder_hidden_states=None, class_labels=label,
                         down_block_additional_residuals=down, mid_block_additional_residual=middle).sample


class ControlledLatentDiffusion(nn.Module):
    """A `LatentDiffusion` steered by a ControlNet on a one-channel mask in [-1, 1] (image resolution)."""

    def __init__(self, ldm: LatentDiffusion, controlnet: nn.Module, conditioning_scale: float = 1.0) -> None:
        super().__init__()
        self.ldm = ldm
        self.controlnet = controlnet
        self.conditioning_scale = conditioning_scale

    @property
    def null_class(self) -> int:
        return self.ldm.null_class

    def residuals(self, z_t: Tensor, t: Tensor, label: Tensor, mask: Tensor,
                  scale: float | None = None) -> tuple[tuple[Tensor, ...], Tensor]:
        """The ControlNet's down-block and middle residuals, multiplied by the conditioning scale."""
        down, middle = self.controlnet(z_t, t, encoder_hidden_states=None, controlnet_cond=mask, class_labels=label,
                                       conditioning_scale=self.conditioning_scale if scale is None else scale,
                                       return_dict=False)
        return tuple(down), middle

    def forward(self, z_t: Tensor, t: Tensor, label: Tensor, mask: Tensor, scale: float | None = None) -> Tensor:
        return self.ldm(z_t, t, label, residuals=self.residuals(z_t, t, label, mask, scale))
