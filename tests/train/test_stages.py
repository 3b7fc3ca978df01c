"""Training stages: a model that grows between stages, with part of it frozen, resumes exactly after a crash.

A toy family registered only for this module trains a stack of linear layers to reproduce its input. Stage
``base`` trains one layer and the head; at the first step of stage ``grow`` the family appends a layer (its
bias set from a batch it draws from the training data, so the transition uses data) and freezes the first
layer. Independent truth: an uninterrupted run. A run that crashes inside the second stage, and one that
crashes at its very first step (the checkpoint before it was saved in the first stage, with the smaller
model), both resume to the same weights, EMA and optimizer state, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
from torch import nn

from raytopo import registry
from raytopo.errors import ConfigError
from raytopo.families.base import FamilyDefaults, ParamGroup, Stage, StepContext
from raytopo.checkpoint import load_checkpoint
from raytopo.train.config import parse_run_config
from raytopo.train.loading import load_model_for_sampling
from raytopo.train.trainer import run_training

SIDE = 16
STAGE_STEPS = (3, 3)


class Stack(nn.Module):
    """``depth`` residual linear layers on flattened images, then a linear head."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        width = SIDE * SIDE
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


class CrashAt(Exception):
    pass


class GrowingFamily(FamilyDefaults):
    """Only what the trainer needs; the crash step is set by a test (None: never)."""

    name = "growing_toy"
    crash_at: int | None = None

    def parse(self, run: Any) -> dict:
        return dict(run.model)

    def setup(self, run: Any) -> dict:
        return {}

    def loss_weights(self, run: Any) -> dict[str, float]:
        return {"mse": 1.0}

    def needs_pool(self, run: Any) -> bool:
        return False

    def stages(self, run: Any) -> list[Stage]:
        return [Stage(name, steps) for name, steps in zip(("base", "grow"), run.model["stage_steps"])]

    def build(self, run: Any, structure: dict | None = None) -> nn.Module:
        return Stack(depth=(structure or {}).get("depth", 1))

    def structure(self, model: nn.Module) -> dict:
        return {"depth": len(model.layers)}

    def enter_stage(self, model: nn.Module, run: Any, stage: Stage, batches: Any) -> nn.Module:
        assert stage.name == "grow"
        grown = Stack(depth=len(model.layers) + 1)
        grown.load_state_dict(model.state_dict(), strict=False)  # the new layer keeps its seeded init
        with torch.no_grad():
            grown.layers[-1].bias.copy_(0.01 * next(batches)["image"].flatten(1).mean(0))
        return grown

    def parameter_groups(self, model: nn.Module, run: Any, stage: Stage) -> list[ParamGroup]:
        if stage.name == "base":
            return [ParamGroup("all", list(model.parameters()))]
        return [ParamGroup("new", list(model.layers[1:].parameters())),
                ParamGroup("head", list(model.head.parameters()), lr_scale=0.5)]

    def losses(self, model: nn.Module, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict:
        if ctx.step == self.crash_at:
            self.crash_at = None
            raise CrashAt(f"crash at step {ctx.step}")
        x = batch["image"].flatten(1)
        return {"mse": (model(x) - x).pow(2).mean(1)}

    def sampling_conditions(self, run: Any) -> str:
        return "none"

    def default_conditions(self, run: Any, per_count: int) -> dict:
        return {}

    def sample(self, model, run, n, cond, sampler) -> torch.Tensor:
        return model(torch.randn(n, SIDE * SIDE)).view(n, 1, SIDE, SIDE)

    def preview(self, model, run) -> dict:
        return {}

    def evaluate_model(self, model, run, sampler, per_count, batch_size) -> dict[str, float]:
        return {}

    def metric_names(self, run: Any) -> set[str]:
        return set()


@pytest.fixture(scope="module")
def family():
    instance = GrowingFamily()
    registry.register(instance.name, lambda: instance)
    yield instance
    registry._FACTORIES.pop(instance.name, None)
    registry._INSTANCES.pop(instance.name, None)


def _config(storage: Path, name: str, steps: int = sum(STAGE_STEPS)) -> dict:
    return {
        "family": "growing_toy",
        "model": {"stage_steps": list(STAGE_STEPS)},
        "data": {"source": "shapes", "image_size": SIDE, "num_images": 20, "max_count": 1},
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-2, "checkpoint_every": 1, "log_every": 1,
                  "ema_rate": 0.9, "warmup_steps": 2},
        "ray": {"num_workers": 0, "storage_path": str(storage), "name": name, "num_to_keep": 10},
    }


def _crash_then_resume(family: GrowingFamily, storage: Path, name: str, crash_at: int):
    run = parse_run_config(_config(storage, name))
    family.crash_at = crash_at
    with pytest.raises(Exception) as failure:
        run_training(run)
    assert "crash at step" in str(failure.value) or isinstance(failure.value, CrashAt)
    return run_training(run, resume=True)


@pytest.fixture(scope="module")
def uninterrupted(family, ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("stages")
    return storage, run_training(parse_run_config(_config(storage, "full")))


def _assert_identical(actual_dir: Path, expected_dir: Path) -> None:
    actual, expected = load_checkpoint(actual_dir), load_checkpoint(expected_dir)
    assert (actual.step, actual.stage, actual.structure) == (expected.step, expected.stage, expected.structure)
    assert actual.model.keys() == expected.model.keys()
    for key in expected.model:
        assert torch.equal(actual.model[key], expected.model[key]), f"model {key}"
        assert torch.equal(actual.ema[key], expected.ema[key]), f"ema {key}"
    assert actual.optimizer["param_groups"] == expected.optimizer["param_groups"]
    for index, state in expected.optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(actual.optimizer["state"][index][name], value), f"optimizer {index} {name}"


def test_the_model_grows_at_the_stage_boundary_and_the_checkpoint_carries_its_structure(uninterrupted):
    storage, outcome = uninterrupted
    folder = outcome.run_dir / "checkpoints"
    before, after = load_checkpoint(folder / "checkpoint_0000003"), load_checkpoint(folder / "checkpoint_0000006")
    assert (before.stage, before.structure) == (0, {"depth": 1})
    assert (after.stage, after.structure) == (1, {"depth": 2})
    assert json.loads((folder / "checkpoint_0000006" / "state.json").read_text())["structure"] == {"depth": 2}
    assert "layers.1.weight" in after.model and "layers.1.weight" not in before.model
    # rebuilt strictly from the checkpoint alone (no side file, no run flags)
    _, _, model = load_model_for_sampling(folder / "checkpoint_0000006")
    assert len(model.layers) == 2


def test_a_frozen_layer_does_not_move_is_not_averaged_and_is_saved_once(uninterrupted):
    storage, outcome = uninterrupted
    folder = outcome.run_dir / "checkpoints"
    before, after = load_checkpoint(folder / "checkpoint_0000003"), load_checkpoint(folder / "checkpoint_0000006")
    for key in ("layers.0.weight", "layers.0.bias"):
        assert torch.equal(after.model[key], before.model[key]), key        # frozen in stage "grow"
        assert torch.equal(after.ema[key], after.model[key]), key           # EMA uses the model's tensor
        assert not torch.equal(before.ema[key], before.model[key]), key     # it was averaged while it trained
    saved_ema = torch.load(folder / "checkpoint_0000006" / "ema.pt", weights_only=True)
    assert not any(key.startswith("layers.0.") for key in saved_ema)        # saved once, in model.pt
    assert {"layers.1.weight", "head.weight"} <= set(saved_ema)
    groups = after.optimizer["param_groups"]
    assert [(g["name"], g["lr_scale"], len(g["params"])) for g in groups] == [("new", 1.0, 2), ("head", 0.5, 2)]


@pytest.mark.parametrize("crash_at", [4, 3], ids=["inside_the_second_stage", "at_its_first_step"])
def test_a_crashed_run_resumes_to_the_uninterrupted_result(family, uninterrupted, crash_at):
    storage, outcome = uninterrupted
    resumed = _crash_then_resume(family, storage, f"crash{crash_at}", crash_at)
    for step in range(crash_at + 1, sum(STAGE_STEPS) + 1):
        name = f"checkpoint_{step:07d}"
        _assert_identical(resumed.run_dir / "checkpoints" / name, outcome.run_dir / "checkpoints" / name)


def test_steps_that_do_not_add_up_to_the_stages_fail_on_the_driver(family, tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.steps: expected 6, the sum of family 'growing_toy''s stages "
                                          r"\(base 3 \+ grow 3\), got 5$"):
        parse_run_config(_config(tmp_path, "bad", steps=5))
