"""A family built on another family's trained checkpoint, kept frozen (the ControlNet on an LDM, the
Diffuse-TreeVAE refiner on a TreeVAE): reading that checkpoint's config, loading its model, and refusing a
checkpoint of another family or, on resume, of other weights. One implementation for every such family.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from raytopo.config import from_dict
from raytopo.errors import InputError


@dataclass(frozen=True)
class BaseRunView:
    """The parts of a base checkpoint's run config that rebuild its model (``family``, ``model``, ``data``)."""

    family: str
    model: dict
    data: Any


@functools.lru_cache(maxsize=8)
def _checkpoint_config(path: str) -> dict[str, Any]:
    from raytopo.checkpoint import load_checkpoint_config

    return load_checkpoint_config(path)


def base_run(path: str, family: str, field: str) -> BaseRunView:
    """The run view of the checkpoint at ``path`` (the config field ``field`` names it); InputError in one line
    when it is missing or of another family than ``family``."""
    from raytopo.data.config import DataConfig

    try:
        config = _checkpoint_config(str(path))
    except (InputError, OSError) as error:
        raise InputError(f"{field} {path}: {error}") from None
    if config.get("family") != family:
        raise InputError(f"{field} {path}: expected a checkpoint of family {family!r}, it is of family "
                         f"{config.get('family')!r}")
    return BaseRunView(family, config.get("model") or {}, from_dict(DataConfig, config.get("data"), "data"))


def base_structure(path: str) -> dict[str, Any]:
    """The base checkpoint's ``structure`` (its ``state.json``), without loading weights."""
    from raytopo.checkpoint import read_state
    from raytopo.pretrained import resolve

    return dict(read_state(resolve(path)).get("structure", {}))


def load_base(path: str, family: str, field: str) -> torch.nn.Module:
    """The trained model of a base checkpoint: EMA weights, strict load, built from its own structure."""
    from raytopo.checkpoint import load_checkpoint, load_weights
    from raytopo.registry import get_family

    run = base_run(path, family, field)
    data = load_checkpoint(path, with_optimizer=False)
    model = get_family(family).build(run, data.structure or None)
    load_weights(model, data.ema, path)
    return model


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names and values: tells apart two bases a family might be paired with."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_pairing(path: str, family: str, field: str, expected: str | None) -> None:
    """A checkpoint built on one base, resumed with ``field`` naming a base of other weights: InputError.
    A moved or deleted base does not matter (the checkpoint holds its frozen base)."""
    from raytopo.pretrained import resolve

    if not expected or not resolve(path).is_dir():
        return
    found = weights_fingerprint(load_base(path, family, field).state_dict())
    if found != expected:
        raise InputError(f"{field} {path}: this model was built from another {family} checkpoint (weights "
                         f"{expected}, this one {found}); expected the checkpoint it was trained on")


