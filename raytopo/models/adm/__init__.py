"""ADM: the improved-diffusion UNet with TopoDiffusionNet's count / object conditioning.

``UNetModel(UNetConfig(...))`` builds the network; ``load_improved_diffusion(path, **flags)`` builds it from
improved-diffusion/TDN flags and loads an original checkpoint by its parameter names.
"""

from raytopo.models.adm.checkpoint import (
    LoadReport,
    load_improved_diffusion,
    load_weights,
    read_state_dict,
    unet_config_from_flags,
)
from raytopo.models.adm.layers import timestep_embedding
from raytopo.models.adm.unet import COUNT_CONDS, DEFAULT_CHANNEL_MULT, UNetConfig, UNetModel

__all__ = [
    "COUNT_CONDS",
    "DEFAULT_CHANNEL_MULT",
    "LoadReport",
    "UNetConfig",
    "UNetModel",
    "load_improved_diffusion",
    "load_weights",
    "read_state_dict",
    "timestep_embedding",
    "unet_config_from_flags",
]
