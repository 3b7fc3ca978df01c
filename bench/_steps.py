"""One production training step as a closure, for the benchmarks that time steps (``train_step`` with lr 0 on a
fixed batch, so repeated calls time the same work)."""

from __future__ import annotations

from typing import Callable

import torch


def training_step(run, model: torch.nn.Module | None = None, stage: str | None = None,
                  grad_clip: float | None = 1.0) -> tuple[Callable[[], None], torch.nn.Module]:
    """(a closure running one ``train_step`` of ``run``'s family on its first ``train.batch_size`` images at the
    first step of ``stage`` (default: the last stage), the model it trains: ``model`` or a fresh one)."""
    from raytopo.data.sources import in_memory_arrays
    from raytopo.families.base import StepContext, stage_bounds
    from raytopo.registry import get_family
    from raytopo.train.loop import make_optimizer
    from raytopo.train.step import train_step

    family = get_family(run.family)
    model = model if model is not None else family.build(run)
    stages = family.stages(run)
    index = [s.name for s in stages].index(stage) if stage is not None else len(stages) - 1
    optimizer = make_optimizer(family, model, run, stages[index])
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    arrays = in_memory_arrays(run.data)
    batch = {key: torch.from_numpy(value[:run.train.batch_size]) for key, value in arrays.items()}
    ctx = StepContext(step=stage_bounds(stages)[index][0], device=torch.device("cpu"),
                      generator=torch.Generator(), extras=family.setup(run))
    weights = family.loss_weights(run)

    def step() -> None:
        ctx.generator.manual_seed(0)
        train_step(model, family, batch, ctx, weights, optimizer, 1, grad_clip)

    return step, model
