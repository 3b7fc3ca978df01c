"""Helpers of the Tune tests: a tiny run config and space (``ray_local`` lives in tests/conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def tiny_base(storage: Path) -> dict[str, Any]:
    """A tiny TDN run config: 16 px shapes, 32-channel UNet, 100 diffusion steps, 4 training steps."""
    return {
        "family": "tdn",
        "model": {
            "unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [8]},
            "diffusion": {"steps": 100},
            "topo": {"weight": 0.01, "selection": "match", "noisy": True},
        },
        "data": {"source": "shapes", "image_size": 16, "num_images": 32, "max_count": 3},
        "train": {"steps": 4, "batch_size": 4, "lr": 1.0e-3, "log_every": 2, "checkpoint_every": 2,
                  "ema_rate": 0.9},
        "ray": {"num_workers": 1, "cpus_per_worker": 0.5, "persistence_actors": 1, "cpus_per_actor": 0.5,
                "storage_path": str(storage), "name": "tiny"},
    }


def tiny_space(storage: Path, **changes: Any) -> dict[str, Any]:
    """A plain space mapping around `tiny_base`; ``changes`` replace top-level entries."""
    space: dict[str, Any] = {
        "name": "tiny_sweep",
        "base": tiny_base(storage),
        "params": {"train.lr": {"grid": [5.0e-4, 1.0e-3]}, "sample.steps": {"choice": [4, 5]}},
        "metric": "dim0_conn4_accuracy",
        "mode": "max",
        "scheduler": "fifo",
        "num_samples": 1,
        # 0.5 + 0.25 + 0.25 = 1 CPU per trial: two trials run side by side on the 2-CPU test cluster.
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "persistence_actors": 1, "cpus_per_actor": 0.25,
                      "driver_cpus": 0.25},
        "sample": {"name": "ddim", "steps": 5},
        "eval": {"per_count": 1, "batch_size": 8},
        "storage_path": str(storage / "tune"),
    }
    space.update(copy.deepcopy(changes))
    return space
