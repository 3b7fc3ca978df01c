"""Two random views of each image for TreeVAE's contrastive term (the reference's augmented pairs ``[X'; X'']``,
``utils/data_utils.py``): a random resized crop, a horizontal flip and a brightness / contrast jitter, done on the
batch in torch from a seeded generator so a step is reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from raytopo.config import Checked


@dataclass(frozen=True)
class ViewSettings(Checked):
    """Strength of the augmentations: a crop keeps ``crop_scale`` of the area (uniform in the range), images flip
    with probability ``flip``, and brightness / contrast move by up to ``jitter``."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: float = 0.5
    jitter: float = 0.2


def random_view(images: torch.Tensor, generator: torch.Generator | None, settings: ViewSettings = ViewSettings()
                ) -> torch.Tensor:
    """One random view of ``images`` ``[B, C, H, W]`` in [0, 1], the same shape and range."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        draws = torch.rand(batch, generator=generator, device=images.device, dtype=images.dtype)
        return low + (high - low) * draws

    side = uniform(*settings.crop_scale).sqrt()                          # crop side as a fraction of the image
    flip = torch.where(uniform(0, 1) < settings.flip, -1.0, 1.0)
    shift_x, shift_y = (uniform(-1, 1) * (1 - side) for _ in range(2))
    theta = images.new_zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    cropped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(1 - settings.jitter, 1 + settings.jitter).view(-1, 1, 1, 1)
    brightness = uniform(-settings.jitter, settings.jitter).view(-1, 1, 1, 1)
    mean = cropped.mean(dim=(1, 2, 3), keepdim=True)
    return ((cropped - mean) * contrast + mean + brightness).clamp(0, 1)


def paired_views(images: torch.Tensor, generator: torch.Generator | None,
                 settings: ViewSettings = ViewSettings()) -> torch.Tensor:
    """``[view 1; view 2]`` ``[2B, C, H, W]``: two independent random views of every image."""
    return torch.cat([random_view(images, generator, settings), random_view(images, generator, settings)])
