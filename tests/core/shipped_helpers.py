"""What every shipped model owes its config: ``pretrained:<name>`` is exactly what ``configs/<config>`` trains,
stored as small float16 EMA weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raytopo.checkpoint import CheckpointData, load_checkpoint
from raytopo.pretrained import resolve
from raytopo.train.config import load_run_config, parse_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def checked_shipped_model(name: str, config: str, family: str, max_bytes: float) -> CheckpointData:
    """The shipped checkpoint ``name``, after asserting that its run config equals ``configs/<config>`` parsed, that
    it holds the config's last step of ``family``, that its floating weights are float16 and that its folder is
    smaller than ``max_bytes``."""
    shipped = load_checkpoint(name, with_optimizer=False)
    expected = load_run_config(CONFIGS / config).to_plain()
    # re-parsed, so that settings added after the model was trained read as their defaults on both sides
    assert json.loads(json.dumps(parse_run_config(shipped.config).to_plain())) == json.loads(json.dumps(expected))
    assert shipped.step == expected["train"]["steps"] and shipped.family == family
    assert all(value.dtype == torch.float16 for value in shipped.ema.values() if value.is_floating_point())
    assert sum(p.stat().st_size for p in resolve(name).iterdir()) < max_bytes
    return shipped
