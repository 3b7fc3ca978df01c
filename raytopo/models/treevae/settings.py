"""Shape settings of a TreeVAE (brief ``treevae.md`` section 1, MNIST ``cnn1`` configuration)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from raytopo.config import Checked
from raytopo.errors import ConfigError
from raytopo.models.treevae.layers import encoder_side
from raytopo.models.treevae.losses import Reconstruction


@dataclass(frozen=True)
class TreeVAESettings(Checked):
    """Shape of a TreeVAE; defaults are the reference's MNIST ``cnn1`` configuration (latent 8, MLP width 128,
    ``max_depth = len(mlp_layers) - 1 = 5``, sigmoid output with binary cross-entropy)."""

    image_size: int = 28
    channels: int = 1
    latent_dim: int = 8
    hidden: int = 128
    encoder_channels: tuple[int, int, int] = (8, 16, 32)
    max_depth: int = 5
    recon: Reconstruction = "bce"
    negative_slope: float = 0.3
    contrastive: bool = False  # adds a projection per bottom-up feature for the instance-wise contrastive term

    def __post_init__(self) -> None:
        for name in ("channels", "latent_dim", "hidden", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 16:
            raise ConfigError(f"image_size: expected an integer >= 16, got {self.image_size!r}")
        channels = tuple(self.encoder_channels) if isinstance(self.encoder_channels, (list, tuple)) else ()
        if len(channels) != 3 or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels):
            raise ConfigError(f"encoder_channels: expected three integers >= 1, got {self.encoder_channels!r}")
        object.__setattr__(self, "encoder_channels", channels)
        if self.recon not in ("bce", "mse"):
            raise ConfigError(f"recon: expected 'bce' or 'mse', got {self.recon!r}")

    def to_dict(self) -> dict:
        """JSON-able fields (``TreeVAESettings(**d)`` restores them)."""
        out = asdict(self)
        out["encoder_channels"] = list(self.encoder_channels)
        return out

    @property
    def feature_dims(self) -> list[int]:
        """Widths of ``[d_0, d_1, ..., d_max_depth]``: the flattened encoder output, then ``hidden``."""
        return [self.encoder_channels[-1] * encoder_side(self.image_size) ** 2] + [self.hidden] * self.max_depth

    def feature_dim(self, depth: int) -> int:
        """Width of the bottom-up feature read at ``depth`` (``d_{max_depth - depth}``)."""
        return self.feature_dims[self.max_depth - depth]
