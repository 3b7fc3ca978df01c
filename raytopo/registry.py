"""Family name -> Family object. Adding a family means registering it here, never touching the trainer."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from raytopo.errors import ConfigError

_FACTORIES: dict[str, Callable[[], Any]] = {}
_INSTANCES: dict[str, Any] = {}


def register(name: str, factory: Callable[[], Any]) -> None:
    """Register a family factory under a stable short name (called lazily, on first use)."""
    _FACTORIES[name] = factory


def family_names() -> list[str]:
    return sorted(_FACTORIES)


def get_family(name: str) -> Any:
    """The family registered as ``name``; an unknown name raises ConfigError listing the known ones."""
    if name not in _FACTORIES:
        raise ConfigError(f"family: unknown family {name!r}; expected one of {', '.join(family_names())}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def _lazy(module: str, class_name: str, **kwargs: Any) -> Callable[[], Any]:
    """A factory that imports ``module`` only when the family is first used (keeps ``import raytopo`` light)."""

    def factory() -> Any:
        return getattr(importlib.import_module(module), class_name)(**kwargs)

    return factory


register("adm", _lazy("raytopo.families.tdn", "TDNFamily", name="adm", conditioned=False, topology=False))
register("adm_t", _lazy("raytopo.families.tdn", "TDNFamily", name="adm_t", conditioned=True, topology=False))
register("tdn", _lazy("raytopo.families.tdn", "TDNFamily", name="tdn", conditioned=True, topology=True))
register("equivariant", _lazy("raytopo.families.equivariant", "EquivariantFamily"))
register("topovae", _lazy("raytopo.families.topovae", "TopoVAEFamily"))
register("ldm", _lazy("raytopo.families.latent", "LatentDiffusionFamily"))
register("controlnet", _lazy("raytopo.families.controlnet", "ControlNetFamily"))
register("treevae", _lazy("raytopo.families.treevae", "TreeVAEFamily"))
register("diffuse_treevae", _lazy("raytopo.families.refiner", "RefinerFamily"))
