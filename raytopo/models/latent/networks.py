"""The diffusers networks of the latent families, built small enough to train on a CPU (docs/latent.md).

* `build_autoencoder`: a KL autoencoder (``AutoencoderKL``) raytopo trains itself (stage 1; nothing is
  downloaded), or `load_autoencoder` of a local diffusers directory;
* `build_unet`: a class-conditional ``UNet2DConditionModel`` whose class enters through ``num_class_embeds``
  (added to the time embedding; the reference used a one-token cross-attention, which the brief measured at
  about twice the step time). Row K of the class table is the null class of classifier-free guidance;
* `build_controlnet`: ``ControlNetModel.from_unet`` with a one-channel mask input and zero-initialised output
  convolutions; its conditioning encoder downsamples by ``2 ** (len(channels) - 1)``, which must take the mask
  to exactly the latent size (checked here, at build time, with a one-line error).

Plain torch + diffusers: no Ray, no run config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError


@dataclass(frozen=True)
class AutoencoderSettings(Checked):
    """A small ``AutoencoderKL``: ``len(block_out_channels) - 1`` downsamplings of 2 (image -> latent).

    ``beta`` weighs the KL term of stage 1 (reconstruction MSE summed over pixels + beta * KL); ``steps`` is the
    length of stage 1 and ``lr_scale`` its learning rate relative to ``train.lr``.
    """

    block_out_channels: tuple[int, ...] = (32, 32)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_attention: bool = False
    beta: float = 1e-4
    steps: int = 500
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.block_out_channels or any(c < 1 or c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels: expected multiples of norm_num_groups "
                              f"({self.norm_num_groups}), got {list(self.block_out_channels)}")
        if self.latent_channels < 1 or self.layers_per_block < 1:
            raise ConfigError("latent_channels/layers_per_block: expected >= 1")
        if self.beta < 0 or self.steps < 1 or not self.lr_scale > 0:
            raise ConfigError(f"beta/steps/lr_scale: expected beta >= 0, steps >= 1, lr_scale > 0, got "
                              f"{self.beta}, {self.steps}, {self.lr_scale}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class UNetSettings(Checked):
    """A class-conditional ``UNet2DConditionModel`` without cross-attention (``num_class_embeds`` = classes + 1)."""

    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 2
    norm_num_groups: int = 16
    attention: bool = False     # True: the last down / first up block attend to themselves (no context)

    def __post_init__(self) -> None:
        if not self.block_out_channels or any(c < 1 or c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels: expected multiples of norm_num_groups "
                              f"({self.norm_num_groups}), got {list(self.block_out_channels)}")
        if self.layers_per_block < 1:
            raise ConfigError(f"layers_per_block: expected >= 1, got {self.layers_per_block}")


def build_autoencoder(settings: AutoencoderSettings, image_size: int, channels: int):
    """A fresh ``AutoencoderKL`` for ``channels``-channel images of side ``image_size``."""
    from diffusers import AutoencoderKL

    if image_size % settings.downsampling:
        raise ConfigError(f"model.autoencoder.block_out_channels: {len(settings.block_out_channels)} blocks "
                          f"downsample by {settings.downsampling}, which does not divide data.image_size {image_size}")
    blocks = len(settings.block_out_channels)
    return AutoencoderKL(in_channels=channels, out_channels=channels, latent_channels=settings.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks,
                         block_out_channels=tuple(settings.block_out_channels),
                         layers_per_block=settings.layers_per_block, norm_num_groups=settings.norm_num_groups,
                         sample_size=image_size, mid_block_add_attention=settings.mid_attention)


def read_autoencoder_config(path: str | Path) -> dict:
    """The ``config.json`` of a local diffusers ``AutoencoderKL`` directory, without loading its weights.

    Raises InputError (one line) when ``path`` is not such a directory.
    """
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        raise InputError(f"model.vae_path {path}: expected a diffusers AutoencoderKL directory (config.json + "
                         "weights, as save_pretrained writes it), found no config.json")
    try:
        values = json.loads(config.read_text())
    except ValueError:
        values = {}
    class_name = values.get("_class_name") if isinstance(values, dict) else None
    if class_name != "AutoencoderKL":
        raise InputError(f"model.vae_path {path}: expected a diffusers AutoencoderKL directory, its config.json "
                         f"names {class_name!r}")
    return values


def load_autoencoder(path: str | Path):
    """A local diffusers ``AutoencoderKL`` directory (``save_pretrained``), never downloaded; InputError (one
    line) when ``path`` is not one (`read_autoencoder_config`) or its weights do not load."""
    from diffusers import AutoencoderKL

    read_autoencoder_config(path)
    try:
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"model.vae_path {path}: cannot load the autoencoder: {str(error).splitlines()[0]}") from None


def autoencoder_geometry(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(image channels, latent channels, downsampling factor) of an ``AutoencoderKL`` config."""
    return (int(config["in_channels"]), int(config["latent_channels"]),
            2 ** (len(config["block_out_channels"]) - 1))


def build_unet(settings: UNetSettings, latent_size: int, latent_channels: int, num_classes: int):
    """A ``UNet2DConditionModel`` over ``latent_channels x latent_size^2`` latents with ``num_classes + 1``
    class embeddings (the last one is the null class). Called with ``encoder_hidden_states=None``."""
    from diffusers import UNet2DConditionModel

    blocks = len(settings.block_out_channels)
    if latent_size % 2 ** (blocks - 1):
        raise ConfigError(f"model.unet.block_out_channels: {blocks} blocks downsample the {latent_size}-pixel "
                          f"latent by {2 ** (blocks - 1)}; expected a factor that divides it")
    down = ["DownBlock2D"] * blocks
    up = ["UpBlock2D"] * blocks
    if settings.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DConditionModel(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                                down_block_types=tuple(down), up_block_types=tuple(up),
                                mid_block_type="UNetMidBlock2D", block_out_channels=tuple(settings.block_out_channels),
                                layers_per_block=settings.layers_per_block, norm_num_groups=settings.norm_num_groups,
                                num_class_embeds=num_classes + 1)


def build_controlnet(unet, conditioning_channels: tuple[int, ...], mask_size: int, latent_size: int):
    """``ControlNetModel.from_unet`` with a 1-channel mask input: the encoder, time and class embeddings are
    copies of ``unet``'s and every output ("zero") convolution starts at zero, so at initialisation the UNet
    plus its residuals is exactly the UNet.

    Raises ConfigError when the conditioning encoder (``len(conditioning_channels) - 1`` stride-2 convolutions)
    cannot take a ``mask_size`` mask to the ``latent_size`` latent.
    """
    from diffusers import ControlNetModel

    check_conditioning(tuple(conditioning_channels), mask_size, latent_size)
    return ControlNetModel.from_unet(unet, conditioning_channels=1,
                                     conditioning_embedding_out_channels=tuple(conditioning_channels))


def _entries_for(mask_size: int, latent_size: int) -> str:
    ratio = mask_size // max(latent_size, 1)
    if ratio < 1 or ratio & (ratio - 1) or ratio * latent_size != mask_size:
        return f"a power-of-two ratio between mask and latent (got {mask_size}/{latent_size})"
    return f"{ratio.bit_length()} entries (log2({ratio}) + 1), e.g. {[16 * 2 ** i for i in range(ratio.bit_length())]}"


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_conditioning(conditioning_channels: tuple[int, ...], mask_size: int, latent_size: int) -> None:
    """ConfigError unless ``len(conditioning_channels) - 1`` stride-2 convolutions take the mask to the latent."""
    factor = 2 ** (len(conditioning_channels) - 1)
    if mask_size != latent_size * factor:
        raise ConfigError(f"model.conditioning_channels: {len(conditioning_channels)} entries downsample the "
                          f"{mask_size}-pixel mask by {factor} to {mask_size / factor:g}, but the latent is "
                          f"{latent_size}; expected {_entries_for(mask_size, latent_size)}")
