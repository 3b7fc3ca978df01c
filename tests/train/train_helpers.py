"""Shared helper for the training tests: a tiny run config (the Ray fixture is in conftest.py).

The tiny config trains a 32-channel UNet on 16x16 synthetic shapes in a few seconds in local mode
(``ray.num_workers: 0``: the worker loop runs in the test process).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def tiny_config(storage: Path, name: str = "tiny", family: str = "tdn", **sections: dict[str, Any]) -> dict[str, Any]:
    """The plain dict of a tiny run; ``sections`` are merged into the matching section (e.g. train={...})."""
    model: dict[str, Any] = {
        "unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [8]},
        "diffusion": {"steps": 100},
    }
    if family == "tdn":
        model["topo"] = {"weight": 0.01, "selection": "match", "noisy": True}
    config: dict[str, Any] = {
        "family": family,
        "model": model,
        "data": {"source": "shapes", "image_size": 16, "num_images": 64, "max_count": 3},
        "train": {"steps": 6, "batch_size": 8, "microbatches": 2, "lr": 1.0e-3, "log_every": 2,
                  "checkpoint_every": 3, "ema_rate": 0.99},
        "ray": {"num_workers": 0, "persistence_actors": 2, "storage_path": str(storage), "name": name},
    }
    for section, values in sections.items():
        if isinstance(config.get(section), dict) and isinstance(values, dict):
            merged = copy.deepcopy(config[section])
            for key, value in values.items():
                if isinstance(merged.get(key), dict) and isinstance(value, dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            config[section] = merged
        else:
            config[section] = values
    return config


def checkpoint_at(run: Any, step: int):
    """The checkpoint a local run (``num_to_keep`` large enough) wrote after ``step``."""
    from raytopo.checkpoint import load_checkpoint

    return load_checkpoint(run.run_dir / "checkpoints" / f"checkpoint_{step:07d}")


def resume_from_copy(source: Any, step: int, run: Any) -> None:
    """Train ``run`` to its end, resumed from a copy of ``source``'s checkpoint after ``step`` (and nothing
    later): what a crash right after that checkpoint would leave."""
    import shutil

    from raytopo.train.trainer import run_training

    name = f"checkpoint_{step:07d}"
    target = run.run_dir / "checkpoints" / name
    target.parent.mkdir(parents=True)
    shutil.copytree(source.run_dir / "checkpoints" / name, target)
    run_training(run, resume=True)
