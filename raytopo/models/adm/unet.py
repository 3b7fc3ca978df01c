"""The ADM UNet of improved-diffusion with TopoDiffusionNet's condition embeddings.

Calling convention (the "denoiser" convention every diffusion sampler in raytopo uses)::

    out = model(x_t, t, **model_kwargs)

- ``x_t``: ``[B, in_channels, H, W]`` float; ``H`` and ``W`` divisible by ``2 ** (len(channel_mult) - 1)``.
- ``t``: ``[B]`` timesteps (int or float; fractional values are fine).
- ``model_kwargs`` holds the conditioning, exactly the keys the model was built for:
  ``counts`` -- float ``[B]`` (``count_cond`` "linear"/"sinusoidal") or ``[B, 2]`` = (components, holes)
  (``two_counts``); ``objects`` -- int64 ``[B]`` object indices (``num_objects > 0``); ``classes`` -- int64 ``[B]``
  (``num_classes > 0``, upstream improved-diffusion's class embedding). A missing or superfluous key is an
  ``InputError``, never silently ignored.
- ``out``: ``[B, out_channels, H, W]``; with ``learn_sigma`` the first ``in_channels`` channels are the noise
  prediction and the rest the variance interpolation values.

Every condition embedding is ADDED to the time embedding ``time_embed(sinusoid(t))`` (TDN, section 3), in TDN's
order: counts (or classes), objects, then the two-count embeddings.

State-dict keys are those of TDN's ``improved_diffusion/unet.py``: ``time_embed``, ``label_emb`` (one count, or
upstream's class table), ``obj_emb``, ``zeroCC_emb`` / ``oneHoles_emb`` (two counts), ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError
from raytopo.models.adm.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    Upsample,
    linear_count_mlp,
    normalization,
    sinusoidal_mlp,
    timestep_embedding,
    zero_module,
)

CountCond = Literal["none", "linear", "sinusoidal"]
COUNT_CONDS: tuple[str, ...] = get_args(CountCond)

DEFAULT_CHANNEL_MULT: dict[int, tuple[int, ...]] = {
    256: (1, 1, 2, 2, 4, 4),  # improved-diffusion script_util
    128: (1, 1, 2, 3, 4),  # guided-diffusion
    64: (1, 2, 3, 4),  # improved-diffusion script_util
    32: (1, 2, 2, 2),  # improved-diffusion script_util
    28: (1, 2, 2),  # raytopo: MNIST-sized masks
    16: (1, 2, 2),  # raytopo: tiny test models
}
"""``channel_mult`` used when a config leaves it unset, by image size."""


@dataclass(frozen=True)
class UNetConfig(Checked):
    """Hyper-parameters of the ADM UNet; validated on construction (``ConfigError`` names the field).

    ``attention_resolutions`` are feature-map sizes (e.g. ``(16, 8)``) at which attention is used, converted to
    downsample factors ``image_size // res`` as improved-diffusion does. ``channel_mult=None`` takes the default
    for ``image_size`` from ``DEFAULT_CHANNEL_MULT``. ``num_heads_upsample=-1`` means ``num_heads``.

    Conditioning: ``count_cond`` embeds one topological count (TDN ``class_cond``: "linear"; with ``as_time_enc``:
    "sinusoidal"); ``two_counts`` embeds (components, holes) with two sinusoidal MLPs (TDN ``two_cls_cond``);
    ``num_objects > 0`` adds an object-class table (TDN ``obj_cond``); ``num_classes > 0`` adds upstream
    improved-diffusion's class table ``label_emb = nn.Embedding(num_classes, 4 * model_channels)``.
    """

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = 0.0
    channel_mult: tuple[int, ...] | None = None
    conv_resample: bool = True
    num_heads: int = 4
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    learn_sigma: bool = False
    count_cond: CountCond = "none"
    two_counts: bool = False
    num_objects: int = 0
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("attention_resolutions", "channel_mult"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _validate(self)

    @property
    def out_channels(self) -> int:
        """Output channels: ``in_channels``, doubled with ``learn_sigma``."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def levels(self) -> tuple[int, ...]:
        """The channel multipliers actually used (``channel_mult`` or the image-size default)."""
        return self.channel_mult if self.channel_mult is not None else DEFAULT_CHANNEL_MULT[self.image_size]

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors at which attention is used (``image_size // res`` per resolution)."""
        return tuple(self.image_size // res for res in self.attention_resolutions)

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (and every condition) embedding: ``4 * model_channels``."""
        return 4 * self.model_channels

    @property
    def heads_upsample(self) -> int:
        """Attention heads in the decoder (``num_heads_upsample``, or ``num_heads`` when -1)."""
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map sizes the UNet visits, from ``image_size`` down to the bottleneck."""
        return tuple(self.image_size // 2**level for level in range(len(self.levels)))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) for JSON/YAML and Ray."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; an unknown key is a ``ConfigError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"UNetConfig: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        return cls(**data)


def _require(ok: bool, field: str, message: str) -> None:
    """Raise ``ConfigError("UNetConfig.<field>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"UNetConfig.{field}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(cfg: UNetConfig) -> None:
    """Check every field of ``cfg``; the first violation raises ``ConfigError``."""
    for name in ("conv_resample", "use_scale_shift_norm", "learn_sigma", "two_counts"):
        _require(isinstance(getattr(cfg, name), bool), name, f"must be True or False, got {getattr(cfg, name)!r}")
    for name in ("in_channels", "num_res_blocks", "num_heads"):
        value = getattr(cfg, name)
        _require(_is_int(value) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
    for name in ("num_objects", "num_classes"):
        value = getattr(cfg, name)
        _require(_is_int(value) and value >= 0, name, f"must be an integer >= 0, got {value!r}")
    _require(
        _is_int(cfg.model_channels) and cfg.model_channels > 0 and cfg.model_channels % 32 == 0,
        "model_channels",
        f"must be a positive multiple of 32 (GroupNorm uses 32 groups), got {cfg.model_channels!r}",
    )
    _require(
        _is_int(cfg.num_heads_upsample) and (cfg.num_heads_upsample == -1 or cfg.num_heads_upsample >= 1),
        "num_heads_upsample",
        f"must be -1 (same as num_heads) or an integer >= 1, got {cfg.num_heads_upsample!r}",
    )
    _require(
        isinstance(cfg.dropout, (int, float)) and 0.0 <= cfg.dropout < 1.0,
        "dropout",
        f"must be in [0, 1), got {cfg.dropout!r}",
    )
    _require(cfg.count_cond in COUNT_CONDS, "count_cond", f"must be one of {COUNT_CONDS}, got {cfg.count_cond!r}")
    _require(
        not (cfg.two_counts and cfg.count_cond != "none"),
        "two_counts",
        f"True cannot be combined with count_cond={cfg.count_cond!r}; use count_cond='none' with two_counts",
    )
    _require(
        not (cfg.num_classes and cfg.count_cond != "none"),
        "num_classes",
        f"> 0 (upstream class embedding) cannot be combined with count_cond={cfg.count_cond!r}: both are label_emb",
    )
    _validate_geometry(cfg)


def _validate_geometry(cfg: UNetConfig) -> None:
    """Check image size, channel multipliers, attention resolutions and head counts."""
    size = cfg.image_size
    _require(_is_int(size) and size > 0, "image_size", f"must be a positive integer, got {size!r}")
    if cfg.channel_mult is None:
        allowed = ", ".join(str(s) for s in sorted(DEFAULT_CHANNEL_MULT))
        _require(
            cfg.image_size in DEFAULT_CHANNEL_MULT,
            "image_size",
            f"{cfg.image_size} has no default channel_mult; allowed: {allowed} "
            "(or set channel_mult, with image_size divisible by 2 ** (len(channel_mult) - 1))",
        )
    else:
        mult = cfg.channel_mult
        _require(
            isinstance(mult, tuple) and len(mult) > 0 and all(_is_int(m) and m >= 1 for m in mult),
            "channel_mult",
            f"must be a non-empty tuple of integers >= 1, got {mult!r}",
        )
        factor = 2 ** (len(mult) - 1)
        _require(
            cfg.image_size % factor == 0,
            "image_size",
            f"{cfg.image_size} must be divisible by 2 ** (len(channel_mult) - 1) = {factor} for channel_mult {mult}",
        )
    res = cfg.attention_resolutions
    _require(
        isinstance(res, tuple) and all(_is_int(r) for r in res) and set(res) <= set(cfg.resolutions),
        "attention_resolutions",
        f"must be a tuple of resolutions this UNet visits, a subset of {cfg.resolutions}, got {res!r}",
    )
    _validate_heads(cfg)


def _validate_heads(cfg: UNetConfig) -> None:
    """Each attention block's channel count must split evenly into its heads."""
    widths = [cfg.model_channels * m for m in cfg.levels]
    attn_widths = [w for w, r in zip(widths, cfg.resolutions) if r in cfg.attention_resolutions]
    for heads, field, chans in (
        (cfg.num_heads, "num_heads", attn_widths + widths[-1:]),
        (cfg.heads_upsample, "num_heads_upsample", attn_widths),
    ):
        bad = [c for c in chans if c % heads]
        _require(not bad, field, f"{heads} does not divide the {bad[0] if bad else 0} channels of an attention block")


class UNetModel(nn.Module):
    """ADM UNet (improved-diffusion) with TDN's count / object conditioning. See the module docstring."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = sinusoidal_mlp(mc, emb_dim)
        self._build_condition_embeddings(config)
        skip_channels = self._build_encoder(config)
        ch = mc * config.levels[-1]
        self.middle_block = EmbedSequential(
            ResBlock(ch, emb_dim, config.dropout, use_scale_shift_norm=config.use_scale_shift_norm),
            AttentionBlock(ch, num_heads=config.num_heads),
            ResBlock(ch, emb_dim, config.dropout, use_scale_shift_norm=config.use_scale_shift_norm),
        )
        ch = self._build_decoder(config, skip_channels)
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1)),
        )

    def _build_condition_embeddings(self, cfg: UNetConfig) -> None:
        """Create ``label_emb`` / ``obj_emb`` / ``zeroCC_emb`` / ``oneHoles_emb`` as TDN names them."""
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        if cfg.count_cond == "linear":
            self.label_emb: nn.Module = linear_count_mlp(emb_dim)
        elif cfg.count_cond == "sinusoidal":
            self.label_emb = sinusoidal_mlp(mc, emb_dim)
        elif cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)
        if cfg.num_objects:
            self.obj_emb = nn.Embedding(cfg.num_objects, emb_dim)
        if cfg.two_counts:
            self.zeroCC_emb = sinusoidal_mlp(mc, emb_dim)
            self.oneHoles_emb = sinusoidal_mlp(mc, emb_dim)

    def _res_block(self, cfg: UNetConfig, channels: int, out_channels: int) -> ResBlock:
        return ResBlock(
            channels, cfg.time_embed_dim, cfg.dropout, out_channels, use_scale_shift_norm=cfg.use_scale_shift_norm
        )

    def _build_encoder(self, cfg: UNetConfig) -> list[int]:
        """Create ``input_blocks``; return the channel count of every skip connection, in order."""
        mc = cfg.model_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.levels):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [self._res_block(cfg, ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.levels) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch, cfg.conv_resample)))
                skip_channels.append(ch)
                ds *= 2
        return skip_channels

    def _build_decoder(self, cfg: UNetConfig, skip_channels: list[int]) -> int:
        """Create ``output_blocks`` (consuming ``skip_channels``); return the final channel count."""
        mc = cfg.model_channels
        ch, ds = mc * cfg.levels[-1], 2 ** (len(cfg.levels) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.levels))):
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res_block(cfg, ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=cfg.heads_upsample))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        return ch

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        counts: Tensor | None = None,
        objects: Tensor | None = None,
        classes: Tensor | None = None,
    ) -> Tensor:
        """Predict the model output for ``x_t`` at ``timesteps``; see the module docstring for shapes."""
        self._check_input(x, timesteps)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        emb = emb + self._condition_embedding(x.shape[0], counts, objects, classes, emb)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def _check_input(self, x: Tensor, timesteps: Tensor) -> None:
        cfg = self.config
        factor = 2 ** (len(cfg.levels) - 1)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise InputError(
                f"x: expected [B, {cfg.in_channels}, H, W] with H and W divisible by {factor}, got {list(x.shape)}"
            )
        if timesteps.shape != (x.shape[0],):
            raise InputError(f"timesteps: expected shape [{x.shape[0]}] (one per sample), got {list(timesteps.shape)}")

    def _condition_embedding(
        self, batch: int, counts: Tensor | None, objects: Tensor | None, classes: Tensor | None, like: Tensor
    ) -> Tensor | float:
        """Sum of the condition embeddings (0.0 for an unconditional model), in TDN's order."""
        cfg = self.config
        mc = cfg.model_channels
        takes_counts = cfg.count_cond != "none" or cfg.two_counts
        _check_presence("counts", counts, takes_counts, "count_cond != 'none' or two_counts")
        _check_presence("objects", objects, cfg.num_objects > 0, "num_objects > 0")
        _check_presence("classes", classes, cfg.num_classes > 0, "num_classes > 0")
        total: Tensor | float = 0.0
        if counts is not None:
            counts = _check_counts(counts, batch, cfg.two_counts).to(like.dtype)
        if counts is not None and cfg.count_cond == "linear":
            total = total + self.label_emb(counts[:, None])
        elif counts is not None and cfg.count_cond == "sinusoidal":
            total = total + self.label_emb(timestep_embedding(counts, mc))
        if classes is not None:
            total = total + self.label_emb(_check_index("classes", classes, batch))
        if objects is not None:
            total = total + self.obj_emb(_check_index("objects", objects, batch))
        if counts is not None and cfg.two_counts:
            total = total + self.zeroCC_emb(timestep_embedding(counts[:, 0], mc))
            total = total + self.oneHoles_emb(timestep_embedding(counts[:, 1], mc))
        return total


def _check_presence(name: str, value: Tensor | None, expected: bool, condition: str) -> None:
    """``value`` must be given exactly when the model was built for it."""
    if expected and value is None:
        raise InputError(f"{name}: this model is conditioned ({condition}) and needs {name}=...; none was given")
    if not expected and value is not None:
        raise InputError(f"{name}: this model was built without {name} conditioning ({condition} is False); "
                         f"do not pass {name}")


def _check_counts(counts: Tensor, batch: int, two_counts: bool) -> Tensor:
    """``counts`` must be ``[B]`` (one count) or ``[B, 2]`` (components, holes) with ``two_counts``."""
    expected = (batch, 2) if two_counts else (batch,)
    if tuple(counts.shape) != expected:
        meaning = " (components, holes)" if two_counts else ""
        raise InputError(f"counts: expected shape {list(expected)}{meaning}, got {list(counts.shape)}")
    return counts


def _check_index(name: str, index: Tensor, batch: int) -> Tensor:
    """Class/object indices must be an integer ``[B]`` tensor."""
    if tuple(index.shape) != (batch,) or index.dtype.is_floating_point or index.dtype == torch.bool:
        got = f"{index.dtype} {list(index.shape)}"
        raise InputError(f"{name}: expected an integer tensor of shape [{batch}], got {got}")
    return index
