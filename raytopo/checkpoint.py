"""Checkpoint directories (docs/references.md, Design 4).

A checkpoint is a directory holding::

    model.pt       model state dict
    ema.pt         the EMA entries that differ from model.pt (the weights to sample from are model.pt
                   overlaid with these): frozen modules, identical in both, are saved once
    optimizer.pt   optimizer state dict
    state.json     {"step": completed optimisation steps, "family": ...,
                    "stage": index of the stage it was saved in, "structure": the model's shape,
                    "data": {"epoch", "consumed", "world"}: where the training stream's next batch starts}
                   (``stage`` and ``structure`` only for staged families or models whose shape changes)
    config.json    the full run config, enough to rebuild the model and resume without repeating flags

A *weights-only* checkpoint (what `export_weights` writes, e.g. the models shipped in ``raytopo.pretrained``) has
only ``ema.pt``, ``state.json`` and ``config.json``: it samples and initialises fine-tuning, and its model weights
are the EMA weights. ``pretrained:<name>`` names a shipped one wherever a checkpoint directory is expected.

It is written to a temporary sibling and renamed into place, so a crash never leaves a half-written
checkpoint under the final name. Loading uses ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raytopo.errors import InputError

_FILES = ("ema.pt", "state.json", "config.json")   # model.pt too, except in a weights-only checkpoint


@dataclass
class CheckpointData:
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    step: int
    family: str
    config: dict[str, Any]
    stage: int = 0
    structure: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)   # the training stream's position (raytopo.data.order)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, step: int, config: dict[str, Any],
                    stage: int = 0, structure: dict[str, Any] | None = None,
                    data: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (temporary sibling + rename) and return its path; ``data`` is the
    training stream's position (``state.json``'s ``"data"``), so a resume continues the epoch."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    state = _state(step, config.get("family"), stage, structure)
    if data:
        state["data"] = data
    try:
        weights = _plain_state(model)
        torch.save(weights, staging / "model.pt")
        torch.save(_differing(_plain_state(ema), weights), staging / "ema.pt")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps(state))
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_checkpoint(directory: str | Path, with_optimizer: bool = True) -> CheckpointData:
    """Read a checkpoint directory; a missing or incomplete one raises InputError naming what is missing."""
    from raytopo.pretrained import resolve

    path = resolve(directory)
    if not path.is_dir():
        raise InputError(f"{path}: no such checkpoint directory")
    missing = [name for name in _FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"{path}: not a raytopo checkpoint (missing {', '.join(missing)})")
    state = read_state(path)
    optimizer = None
    if with_optimizer and (path / "optimizer.pt").is_file():
        optimizer = _load(path / "optimizer.pt")
    ema = _load(path / "ema.pt")
    model = _load(path / "model.pt") if (path / "model.pt").is_file() else ema
    return CheckpointData(
        model=model,
        ema={**model, **ema},
        optimizer=optimizer,
        step=int(state["step"]),
        family=str(state.get("family")),
        config=read_json_object(path / "config.json", "the run config"),
        stage=int(state.get("stage", 0)),
        structure=dict(state.get("structure", {})),
        data=dict(state.get("data", {})),
    )


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: str | Path) -> None:
    """``model.load_state_dict(weights)`` (strict); weights that do not fit the model its config and structure
    describe (a tree edited by hand, a file from another run) raise one InputError line naming the checkpoint."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise InputError(f"{checkpoint}: its weights do not fit the model its config and structure describe "
                         f"({first[:240]})") from None


def load_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """The run config a checkpoint was written with (its ``config.json``), without loading any weights."""
    from raytopo.pretrained import resolve

    path = resolve(directory) / "config.json"
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such checkpoint directory")
    if not path.is_file():
        raise InputError(f"{path.parent}: not a raytopo checkpoint (missing config.json)")
    return read_json_object(path, "the run config")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; InputError naming the file when it is unreadable, truncated or not an
    object (a damaged checkpoint fails in one line, not a JSONDecodeError traceback)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: damaged checkpoint file, expected {what} as JSON "
                         f"({error.__class__.__name__})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: damaged checkpoint file, expected {what} as a JSON object, got "
                         f"{type(value).__name__}")
    return value


def read_state(directory: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint directory, with an integer ``step`` >= 0 (InputError naming it if not)."""
    path = directory / "state.json"
    state = read_json_object(path, "the training state")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"{path}: damaged checkpoint file, expected a whole 'step' >= 0, got {step!r}")
    return state


def export_weights(checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the weights-only checkpoint of ``checkpoint`` to the new folder ``out``: its EMA weights cast to
    ``dtype`` (floating tensors only), its ``config.json`` and ``state.json``. ``out`` must not exist yet."""
    data = load_checkpoint(checkpoint, with_optimizer=False)
    target = Path(out)
    if target.exists():
        raise InputError(f"{target}: already exists; choose a new folder for the exported weights")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=_existing_parent(target)))
    try:
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in data.ema.items()}
        torch.save(weights, staging / "ema.pt")
        (staging / "state.json").write_text(json.dumps(_state(data.step, data.family, 0, data.structure)))
        (staging / "config.json").write_text(json.dumps(data.config, indent=2))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _existing_parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, or a pickle that is not plain tensors
        raise InputError(f"{path}: unreadable checkpoint file ({error.__class__.__name__})") from None


def _differing(ema: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA entries that are not exactly the model's (frozen parameters and copied buffers are left out)."""
    return {key: value for key, value in ema.items() if key not in model or not torch.equal(value, model[key])}


def _state(step: int, family: Any, stage: int, structure: dict[str, Any] | None) -> dict[str, Any]:
    """``state.json``: step and family, plus stage and structure only when a staged or growing model has them."""
    state: dict[str, Any] = {"step": int(step), "family": family}
    if stage or structure:
        state.update(stage=int(stage), structure=structure or {})
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper, if Ray's prepare_model added one (the model itself otherwise)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU state dict without DDP's ``module.`` prefix."""
    return {key: value.detach().cpu() for key, value in unwrap(module).state_dict().items()}


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint directory under a run directory (Ray's ``checkpoint_*`` folders), or None.

    A damaged checkpoint (an unreadable or truncated ``state.json`` or ``config.json``) among them is an
    InputError naming it and the newest intact one, since resuming from an older one silently would redo steps.
    """
    candidates = [p.parent for p in Path(root).glob("**/state.json") if not p.parent.name.startswith(".")]
    intact: list[tuple[int, Path]] = []
    damaged: list[tuple[Path, str]] = []
    for directory in candidates:
        try:
            intact.append((read_state(directory)["step"], directory))
            read_json_object(directory / "config.json", "the run config")
        except InputError as error:
            intact = [item for item in intact if item[1] != directory]
            damaged.append((directory, str(error)))
    newest = max(intact, default=None, key=lambda item: item[0])
    if damaged:
        where = f"the newest intact one is {newest[1]}" if newest else "no intact checkpoint is left"
        raise InputError(f"{damaged[0][1]} ({where}; move the damaged one aside to resume from it)")
    return newest[1] if newest else None
