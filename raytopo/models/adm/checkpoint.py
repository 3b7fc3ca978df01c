"""Load improved-diffusion and TopoDiffusionNet checkpoints by their original flags and parameter names.

``load_improved_diffusion(path, **flags)`` takes the flag names of improved-diffusion's ``script_util.py`` (as
extended by TDN), builds the matching ``UNetModel`` and loads the state dict with
``torch.load(weights_only=True, map_location="cpu")`` (no pickled code is ever run).

Flag mapping (``unet_config_from_flags``); an omitted flag takes TDN's ``model_and_diffusion_defaults`` value:

================================  ==========================================================================
flag                              UNetConfig
================================  ==========================================================================
image_size, num_res_blocks,       same names
num_heads, num_heads_upsample,
dropout, learn_sigma,
use_scale_shift_norm
num_channels                      model_channels
num_colors                        in_channels (out_channels = 2x with learn_sigma)
attention_resolutions "16,8"      attention_resolutions (16, 8)
class_cond                        count_cond="linear" (TDN), "sinusoidal" with as_time_enc
class_cond + upstream_class_      num_classes = ``num_classes`` flag (default 1000): upstream's
embedding                         ``label_emb = nn.Embedding(num_classes, 4 * num_channels)``
two_cls_cond                      two_counts=True
obj_cond (needs class_cond)       num_objects = ``num_classes`` flag (default 10, TDN's NUM_CLASSES)
use_checkpoint, use_fp16 and the  ignored (they do not change the weights)
diffusion flags
================================  ==========================================================================

Upstream vs TDN ``class_cond``: both name the layer ``label_emb``; TDN replaced upstream's class table with an MLP
over the count. ``load_improved_diffusion`` tells them apart from the state dict when ``upstream_class_embedding``
is not given: a 2-D ``label_emb.weight`` is upstream's table (its row count gives ``num_classes``), ``label_emb.0.*``
is TDN's MLP. ``unet_config_from_flags`` (no state dict) treats an unset ``upstream_class_embedding`` as False.

The ADM -> ADM-T staged fine-tune loads an unconditional checkpoint into a count-conditioned model with
``strict=False``: the new ``label_emb.*`` layers stay at their initialisation and are logged as new.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from raytopo.errors import ConfigError, InputError
from raytopo.models.adm.unet import UNetConfig, UNetModel

log = logging.getLogger(__name__)

TDN_NUM_OBJECTS = 10
"""TDN's hard-coded ``NUM_CLASSES`` (size of ``obj_emb``)."""
UPSTREAM_NUM_CLASSES = 1000
"""improved-diffusion's ``NUM_CLASSES`` (size of the upstream ``label_emb`` table)."""

MODEL_FLAG_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "learn_sigma": False,
    "class_cond": False,
    "use_scale_shift_norm": True,
    "num_colors": 3,
    "obj_cond": False,
    "two_cls_cond": False,
    "as_time_enc": False,
    "upstream_class_embedding": None,
    "num_classes": None,
}
"""Model flags (TDN's ``model_and_diffusion_defaults``) plus raytopo's two extras."""

IGNORED_FLAGS = frozenset(
    {
        "use_checkpoint",
        "use_fp16",
        "sigma_small",
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "weight_topo",
        "weight_timestep",
    }
)
"""Flags accepted and ignored: gradient checkpointing, fp16, and diffusion settings do not change the weights."""

_BOOL_FLAGS = ("learn_sigma", "class_cond", "use_scale_shift_norm", "obj_cond", "two_cls_cond", "as_time_enc")
_INT_FLAGS = ("image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample", "num_colors")


@dataclass(frozen=True)
class LoadReport:
    """What a (non-strict) load left out: model keys absent from the checkpoint, and checkpoint keys not used."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def _flag_bool(name: str, value: Any) -> bool:
    """A bool flag: a bool, or a string improved-diffusion's ``str2bool`` accepts."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"):
        return value.lower() in ("yes", "true", "t", "y", "1")
    raise ConfigError(f"flag {name}: expected True or False, got {value!r}")


def _flag_int(name: str, value: Any) -> int:
    """An int flag: an int or a decimal string."""
    if isinstance(value, bool):
        raise ConfigError(f"flag {name}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"flag {name}: expected an integer, got {value!r}") from None


def _flag_resolutions(value: Any) -> tuple[int, ...]:
    """``attention_resolutions``: the comma string ``"16,8"`` (or an iterable of ints)."""
    parts: Iterable[Any] = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    try:
        return tuple(_flag_int("attention_resolutions", p) for p in parts)
    except (ConfigError, TypeError):
        raise ConfigError(
            f"flag attention_resolutions: expected comma-separated integers like '16,8', got {value!r}"
        ) from None


def unet_config_from_flags(**flags: Any) -> UNetConfig:
    """Map improved-diffusion / TDN model flags to a ``UNetConfig`` (see the module docstring for the table)."""
    unknown = sorted(set(flags) - set(MODEL_FLAG_DEFAULTS) - IGNORED_FLAGS)
    if unknown:
        allowed = ", ".join(sorted(set(MODEL_FLAG_DEFAULTS) | IGNORED_FLAGS))
        raise ConfigError(f"flag {unknown[0]}: not an improved-diffusion model flag; allowed: {allowed}")
    f = {**MODEL_FLAG_DEFAULTS, **{k: v for k, v in flags.items() if k not in IGNORED_FLAGS}}
    b = {name: _flag_bool(name, f[name]) for name in _BOOL_FLAGS}
    i = {name: _flag_int(name, f[name]) for name in _INT_FLAGS}
    upstream = f["upstream_class_embedding"] is not None and _flag_bool(
        "upstream_class_embedding", f["upstream_class_embedding"]
    )
    if b["obj_cond"] and not b["class_cond"]:
        raise ConfigError("flag obj_cond: True needs class_cond True (TDN builds obj_emb only for class_cond models)")
    if upstream and (b["as_time_enc"] or b["obj_cond"]):
        raise ConfigError("flag upstream_class_embedding: cannot be combined with as_time_enc or obj_cond (TDN-only)")
    count_cond = "none"
    if b["class_cond"] and not upstream:
        count_cond = "sinusoidal" if b["as_time_enc"] else "linear"
    table_default = UPSTREAM_NUM_CLASSES if upstream else TDN_NUM_OBJECTS
    table = table_default if f["num_classes"] is None else _flag_int("num_classes", f["num_classes"])
    return UNetConfig(
        image_size=i["image_size"],
        in_channels=i["num_colors"],
        model_channels=i["num_channels"],
        num_res_blocks=i["num_res_blocks"],
        attention_resolutions=_flag_resolutions(f["attention_resolutions"]),
        dropout=float(f["dropout"]),
        num_heads=i["num_heads"],
        num_heads_upsample=i["num_heads_upsample"],
        use_scale_shift_norm=b["use_scale_shift_norm"],
        learn_sigma=b["learn_sigma"],
        count_cond=count_cond,  # type: ignore[arg-type]
        two_counts=b["two_cls_cond"],
        num_objects=table if b["obj_cond"] else 0,
        num_classes=table if (b["class_cond"] and upstream) else 0,
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(weights_only=True, map_location="cpu")``.

    A leading ``module.`` (a DDP-wrapped save) is stripped from every key. A missing file, a file that is not a
    weights-only torch save, or one that does not hold a ``{name: tensor}`` mapping raises ``InputError``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path}: file not found; expected an improved-diffusion state dict (.pt)")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(
            f"checkpoint {path}: not a weights-only torch state dict ({type(err).__name__}): either not a torch "
            "save, or it holds pickled objects other than tensors, which raytopo never unpickles"
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        kind = type(obj).__name__
        raise InputError(f"checkpoint {path}: expected a mapping of parameter names to tensors, got {kind}")
    if obj and all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(
    model: torch.nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True, source: str = "state dict"
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` by name; return the missing and unexpected keys.

    Shapes are checked first: the first key present in both with different shapes raises ``InputError`` naming
    the key and both shapes. With ``strict`` any missing or unexpected key raises ``InputError``; without it the
    shared keys are loaded and the rest reported. ``source`` names the origin in messages (e.g. the path).
    """
    own = model.state_dict()
    for key, param in own.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(param.shape):
            raise InputError(
                f"{source}: key {key!r} has shape {list(state_dict[key].shape)} in the checkpoint but "
                f"{list(param.shape)} in the model"
            )
    report = LoadReport(
        missing=tuple(k for k in own if k not in state_dict),
        unexpected=tuple(k for k in state_dict if k not in own),
    )
    if strict and (report.missing or report.unexpected):
        raise InputError(
            f"{source}: does not match the model: {len(report.missing)} missing keys {_first(report.missing)}, "
            f"{len(report.unexpected)} unexpected keys {_first(report.unexpected)}; check the flags, or pass "
            "strict=False to load the shared keys"
        )
    model.load_state_dict(state_dict, strict=False)
    return report


def _first(keys: tuple[str, ...], n: int = 3) -> str:
    """``[a, b, c, ...]`` preview of a key list."""
    more = ", ..." if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + more + "]"


def _detect_upstream_class_embedding(flags: dict[str, Any], state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Fill ``upstream_class_embedding`` (and ``num_classes``) from the state dict when the flag is unset."""
    if flags.get("upstream_class_embedding") is not None:
        return flags
    table = state_dict.get("label_emb.weight")
    if table is None or table.ndim != 2:
        return flags
    detected = {**flags, "upstream_class_embedding": True}
    if flags.get("num_classes") is None:
        detected["num_classes"] = int(table.shape[0])
    return detected


def load_improved_diffusion(path: str | Path, *, strict: bool = True, **flags: Any) -> UNetModel:
    """Build the UNet described by improved-diffusion/TDN ``flags`` and load the checkpoint at ``path``.

    ``strict=False`` is the explicit ADM -> ADM-T load: keys new in the model keep their initialisation and are
    logged at INFO, checkpoint keys the model lacks are logged at WARNING. Use ``read_state_dict`` +
    ``load_weights`` to get the ``LoadReport`` itself. Errors: ``InputError`` (file, shapes, keys),
    ``ConfigError`` (flags).
    """
    state_dict = read_state_dict(path)
    config = unet_config_from_flags(**_detect_upstream_class_embedding(dict(flags), state_dict))
    model = UNetModel(config)
    report = load_weights(model, state_dict, strict=strict, source=f"checkpoint {path}")
    if report.missing:
        new = ", ".join(report.missing)
        log.info("loaded %s; %d keys are new and stay at init: %s", path, len(report.missing), new)
    if report.unexpected:
        unused = ", ".join(report.unexpected)
        log.warning("loaded %s; %d checkpoint keys unused: %s", path, len(report.unexpected), unused)
    return model
