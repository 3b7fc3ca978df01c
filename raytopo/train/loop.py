"""The Ray Train worker loop (``train_loop_per_worker``): the same code for every family.

Each worker builds the family's model (from the checkpoint's structure when resuming), restores the latest
reported checkpoint if Ray restarted it (or the ``resume_from`` directory), runs `train_step` until
``train.steps``, and calls ``ray.train.report`` on every rank at the same cadence; only rank 0 writes
checkpoint directories. Steps are counted as completed optimisation steps, so a resumed run continues at
exactly the next step. A family's stages (`Family.stages`) split the steps; at the first step of each later
stage `enter_stage` runs the family's transition and makes that stage's optimizer and EMA
(docs/architecture.md, section 3).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raytopo.families.base import Stage, StepContext, stage_index_at
from raytopo.families.sampling import SamplerSettings
from raytopo.models.ema import make_ema, update_ema
from raytopo.registry import get_family
from raytopo.checkpoint import CheckpointData, load_checkpoint, save_checkpoint, unwrap
from raytopo.train.config import RunConfig, parse_run_config
from raytopo.data.order import DataPosition
from raytopo.train.data import batch_iterator, stage_batches
from raytopo.train.logging import RunLogger
from raytopo.train.step import broadcast_parameters, train_step
from raytopo.train.storage import publish

log = logging.getLogger(__name__)


def train_loop_per_worker(plain_config: dict[str, Any]) -> None:
    """Entry point for ``TorchTrainer(train_loop_per_worker, train_loop_config=run.to_plain())``."""
    import ray.train
    import ray.train.torch

    run = parse_run_config({k: v for k, v in plain_config.items() if k != "resume_from"})
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    family = get_family(run.family)
    stages = family.stages(run)

    limit_cpu_threads(run)
    torch.manual_seed(run.train.seed)
    checkpoint = _checkpoint_to_resume(plain_config)
    start = checkpoint.step if checkpoint is not None else 0
    model = family.build(run, checkpoint.structure if checkpoint is not None else None).to(device)
    if run.init_from:
        initialise_from(model, run.init_from)
    stage_index = stage_index_at(stages, start - 1) if start else 0  # the stage the checkpoint was saved in
    optimizer = make_optimizer(family, model, run, stages[stage_index])
    ema = make_ema(model)
    restore(checkpoint, model, ema, optimizer)
    model = ray.train.torch.prepare_model(model, parallel_strategy=None)
    broadcast_parameters(model)

    pool = _make_pool(run) if family.needs_pool(run) else None
    ctx = StepContext(step=start, device=device, pool=pool, generator=torch.Generator(device=device),
                      extras=family.setup(run))
    if start and rank == 0:
        print(f"[raytopo] resuming at step {start + 1}/{run.train.steps}", flush=True)
    weights = family.loss_weights(run)
    position = DataPosition.from_plain(checkpoint.data) if checkpoint is not None and checkpoint.data else None
    batches = batch_iterator(run.data, run.train.batch_size, rank, world, run.train.seed, device,
                             position=position, start_step=start)
    trace = RowTrace(run.run_dir / "data_trace", rank) if run.data.trace_rows else None
    logger = RunLogger(run.run_dir / "tensorboard", run.train.steps, start,
                       run.train.batch_size * world, enabled=rank == 0)
    try:
        for step in range(start, run.train.steps):
            if (index := stage_index_at(stages, step)) != stage_index:
                stage_index = index
                own_batches = stage_batches(run.data, run.train.batch_size, rank, world,
                                            step_seed(run.train.seed, rank, step), step, device)
                model, ema, optimizer = enter_stage(family, model, ema, run, stages[stage_index], own_batches,
                                                    step)
                own_batches.close()
            ctx.step = step
            ctx.generator.manual_seed(step_seed(run.train.seed, rank, step))
            for group in optimizer.param_groups:
                group["lr"] = run.train.lr_at(step) * group["lr_scale"]
            metrics = train_step(model, family, next(batches), ctx, weights, optimizer,
                                 run.train.microbatches, run.train.grad_clip, run.train.precision)
            if trace is not None:
                trace.write(step + 1, batches.position.epoch, batches.last_ids)
            if run.data.max_bad_files:
                metrics["bad_rows"] = float(batches.bad_rows)
            update_ema(ema, model, run.train.ema_rate_at(step))
            done = step + 1
            _maybe_sample(family, ema, run, logger, done)
            eval_due = bool(run.train.eval_every) and done % run.train.eval_every == 0
            evaluation = _evaluate(family, ema, run, logger, done) if eval_due else {}
            checkpoint_due = done % run.train.checkpoint_every == 0 or done == run.train.steps
            if eval_due or checkpoint_due or done % run.train.log_every == 0:  # the same steps on every rank
                values = logger.scalars(done, metrics, run.train.lr_at(step))
                saved = None  # rank 0 attaches a checkpoint when one is due
                if checkpoint_due and rank == 0:
                    saved = SavedState(model, ema, optimizer, stage_index, family.structure(unwrap(model)),
                                       batches.position.to_plain())
                _report({**values, **evaluation, "step": done}, saved, run, rank)
    finally:
        batches.close()
        logger.close()
        if rank == 0:
            publish(run.run_dir / "tensorboard", run.ray.storage_path, run.ray.name, "tensorboard")
        if pool is not None:
            pool.close()


@dataclass
class SavedState:
    """What a checkpoint holds besides the step and config: the model (as prepare_model returned it), its EMA, the
    optimizer, the stage it was saved in and the model's structure (`Family.structure`)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stage: int = 0
    structure: dict[str, Any] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)   # the data stream's position (`DataPosition`)


class RowTrace:
    """``data.trace_rows``: one JSON line per step, ``{"step", "epoch", "ids"}``, in ``<folder>/rank-<r>.jsonl``
    (what this rank trained on; a crash and resume append, so replayed steps appear twice)."""

    def __init__(self, folder: Path, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank-{rank}.jsonl"

    def write(self, step: int, epoch: int, ids: list[str]) -> None:
        import json

        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "epoch": epoch, "ids": ids}) + "\n")


def enter_stage(family, model: torch.nn.Module, ema: torch.nn.Module, run: RunConfig, stage: Stage, batches,
                step: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """Start ``stage`` at optimisation step ``step``: the family's transition, then the stage's optimizer and EMA.

    The global RNG is seeded from the step first, and ``batches`` is a stream of its own (not the training
    iterator), so layers and decisions of the transition are the same whether the run got here uninterrupted
    or resumed from the checkpoint at the boundary, and the training batches after it do not shift. The new
    model goes through ``prepare_model`` (device placement; raytopo averages gradients by hand, so there is no
    DDP wrapper to rebuild) and rank 0's weights are broadcast; the EMA keeps the averages of parameters that
    keep their name and shape.
    """
    import ray.train.torch

    torch.manual_seed(step_seed(run.train.seed, 0, step))
    inner = family.enter_stage(unwrap(model), run, stage, batches)
    optimizer = make_optimizer(family, inner, run, stage)
    ema = make_ema(inner, previous=ema)
    model = ray.train.torch.prepare_model(inner, parallel_strategy=None)
    broadcast_parameters(model)
    return model, ema, optimizer


def make_optimizer(family, model: torch.nn.Module, run: RunConfig, stage: Stage | None = None) -> torch.optim.Optimizer:
    """AdamW over the family's parameter groups for ``stage`` (default: the first), each with its lr scale and
    name. Every other parameter is frozen for the stage: ``requires_grad`` is set to match the groups."""
    stage = stage or family.stages(run)[0]
    policy = family.parameter_groups(model, run, stage)
    trained = {id(p) for group in policy for p in group.parameters}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trained)
        if id(parameter) not in trained:
            parameter.grad = None  # a gradient left from an earlier stage would still be all-reduced
    groups = [{"params": group.parameters, "name": group.name, "lr_scale": group.lr_scale,
               "lr": run.train.lr * group.lr_scale} for group in policy]
    return torch.optim.AdamW(groups, lr=run.train.lr, weight_decay=run.train.weight_decay)


def limit_cpu_threads(run: RunConfig) -> None:
    """Give torch as many intra-op threads as the worker reserved CPUs, rounded (at least one).

    torch defaults to every core of the machine; with persistence actors and other workers on the same
    cores, oversubscribed threads made CPU steps ~13x slower in bench/tdn_step.py. Rounding lets a worker that
    reserves 1.9 CPUs next to light actors (0.05 each) use 2 threads. Local mode (num_workers 0) runs in the
    driver and keeps torch's default.
    """
    if run.ray.num_workers and not run.ray.use_gpu:
        torch.set_num_threads(max(1, int(run.ray.cpus_per_worker + 0.5)))


def step_seed(seed: int, rank: int, step: int) -> int:
    """The noise/timestep seed of one step on one rank: a resumed run draws exactly what it would have."""
    return (seed * 1_000_003 + rank) * 10_000_019 + step


def initialise_from(model: torch.nn.Module, path: str) -> None:
    """Staged fine-tuning (adm -> adm_t -> tdn): load EMA weights non-strictly, log the new layers."""
    from raytopo.errors import InputError
    from raytopo.models.adm.checkpoint import load_weights

    from raytopo.pretrained import resolve

    source = resolve(path)
    weights = load_checkpoint(source, with_optimizer=False).ema if source.is_dir() else _read_weights(source)
    report = load_weights(model, weights, strict=False, source=f"init_from {path}")
    if len(report.missing) == len(model.state_dict()):
        raise InputError(f"init_from {path}: no parameter name matches the model; expected a checkpoint of the "
                         "same network (e.g. adm -> adm_t -> tdn with the same model.unet settings)")
    if report.missing:
        log.info("init_from %s: new layers kept at initialisation: %s", path, ", ".join(report.missing))


def check_init_from(run: RunConfig) -> None:
    """Fail on the driver, before any worker starts, if ``run.init_from`` cannot load into the run's model.

    The model is built on the ``meta`` device (shapes only, no memory); the load checks every shared key's shape.
    """
    if not run.init_from:
        return
    import warnings

    with torch.device("meta"):
        model = get_family(run.family).build(run)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        initialise_from(model, run.init_from)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from raytopo.models.adm.checkpoint import read_state_dict

    return read_state_dict(path)


def restore(checkpoint: CheckpointData | None, model: torch.nn.Module, ema: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> int:
    """Load a full training state (strictly: the model was built from the checkpoint's structure); returns the
    number of completed steps (0 without a checkpoint)."""
    if checkpoint is None:
        return 0
    model.load_state_dict(checkpoint.model)
    ema.load_state_dict(checkpoint.ema)
    if checkpoint.optimizer is not None:
        optimizer.load_state_dict(checkpoint.optimizer)
    return checkpoint.step


def _checkpoint_to_resume(plain_config: dict[str, Any]) -> CheckpointData | None:
    """Ray's latest reported checkpoint (after a worker restart), else an explicit ``resume_from``."""
    import ray.train

    reported = ray.train.get_checkpoint()
    if reported is not None:
        with reported.as_directory() as directory:
            return load_checkpoint(directory)
    resume_from = plain_config.get("resume_from")
    return load_checkpoint(resume_from) if resume_from else None


def _report(metrics: dict[str, float], saved: SavedState | None, run: RunConfig, rank: int) -> None:
    """Report on every rank; rank 0 attaches a checkpoint when one is due (``saved`` is given then).

    Ray Train copies a reported checkpoint into its storage, so rank 0 writes it to a temporary directory.
    In local mode (``ray.num_workers: 0``) Ray keeps no copy, so the checkpoint is written straight into
    ``<run_dir>/checkpoints`` and the newest ``ray.num_to_keep`` are kept.
    """
    import ray.train

    if saved is None:
        ray.train.report(metrics)
        return
    step = int(metrics["step"])

    def save(directory: Path) -> Path:
        return save_checkpoint(directory, saved.model, saved.ema, saved.optimizer, step, run.to_plain(),
                               stage=saved.stage, structure=saved.structure, data=saved.data)

    if run.ray.num_workers == 0:
        directory = save(run.run_dir / "checkpoints" / f"checkpoint_{step:07d}")
        _prune_checkpoints(directory.parent, run.ray.num_to_keep)
        publish(directory, run.ray.storage_path, run.ray.name, f"checkpoints/{directory.name}")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
        return
    staging = Path(tempfile.mkdtemp(prefix="raytopo-ckpt-"))
    try:
        directory = save(staging / "checkpoint")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune_checkpoints(folder: Path, keep: int) -> None:
    for old in sorted(folder.glob("checkpoint_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _maybe_sample(family, ema, run: RunConfig, logger: RunLogger, done: int) -> None:
    every = run.train.sample_every
    if not logger.enabled or not every or done % every:
        return
    with torch.no_grad():
        grids = family.preview(ema, run)
    for name, (images, captions) in grids.items():
        logger.images(done, name, images, captions)


def _evaluate(family, ema, run: RunConfig, logger: RunLogger, done: int) -> dict[str, float]:
    """On rank 0 (the logging rank): the family's evaluation of the EMA model, logged to TensorBoard and returned as
    ``eval/<name>`` (reported with that step, so Tune and studies see the curve); ``{}`` on other ranks."""
    if not logger.enabled:
        return {}
    settings = SamplerSettings(steps=run.train.sample_steps)
    with torch.no_grad():
        metrics = family.evaluate_model(ema, run, settings, run.train.eval_per_count, 100)
    logger.evaluation(done, metrics)
    return {f"eval/{key}": float(value) for key, value in metrics.items()}


def _make_pool(run: RunConfig):
    from raytopo.parallel.pool import PersistencePool, PoolConfig

    return PersistencePool(PoolConfig(num_actors=run.ray.persistence_actors, cpus_per_actor=run.ray.cpus_per_actor,
                                      resources=dict(run.ray.actor_resources)))
