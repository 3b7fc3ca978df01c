"""The driver side of training: a validated RunConfig -> a Ray Train ``TorchTrainer`` -> a result.

`run_training` attaches to ``address`` (or ``RAY_ADDRESS``) if given, else starts a local Ray cluster, the
embedded default. Nothing hard-codes node counts or GPUs: the ``ray:`` section of the config does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from raytopo.errors import ConfigError
from raytopo.train.storage import latest_checkpoint, storage_root
from raytopo.train.config import RunConfig


@dataclass(frozen=True)
class TrainingOutcome:
    checkpoint: Path | str | None   # a local directory, or a URI for remote storage
    metrics: dict[str, Any]
    run_dir: Path        # this machine's copy of the run's own files (TensorBoard logs)
    location: str        # <storage_path>/<name>, a path or URI


def build_trainer(run: RunConfig, resume_from: Path | None = None, callbacks: Sequence[Any] = ()):
    """A ``TorchTrainer`` for ``run`` (Train V2 API); ``callbacks`` are Train ``UserCallback`` objects (e.g.
    ``ray.tune.integration.ray_train.TuneReportCallback`` when a Tune trial drives the run)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raytopo.train.loop import train_loop_per_worker

    resources = {"CPU": run.ray.cpus_per_worker, **run.ray.worker_resources}
    scaling = ray.train.ScalingConfig(num_workers=run.ray.num_workers, use_gpu=run.ray.use_gpu,
                                      resources_per_worker=resources if run.ray.num_workers else None)
    run_config = ray.train.RunConfig(
        name=run.ray.name,
        storage_path=storage_root(run.ray.storage_path),
        failure_config=ray.train.FailureConfig(max_failures=run.ray.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.ray.num_to_keep),
        callbacks=list(callbacks) or None,
    )
    loop_config = {**run.to_plain(), "resume_from": str(resume_from) if resume_from else None}
    return TorchTrainer(train_loop_per_worker, train_loop_config=loop_config, scaling_config=scaling,
                        run_config=run_config)


def run_training(run: RunConfig, address: str | None = None, resume: bool = False) -> TrainingOutcome:
    """Train ``run`` on Ray; with ``resume`` continue from the newest checkpoint under the run directory."""
    run = with_absolute_storage(run)
    from raytopo.data.sources import check_data_source
    from raytopo.outputs import check_output

    check_output(run.ray.storage_path, "ray.storage_path", folder=True, inputs=[run.data.path, run.data.eval_path])
    from raytopo.train.data import check_batch_fits
    from raytopo.train.loop import check_init_from

    images = check_data_source(run.data)  # bad data and a wrong init_from fail here, not as a worker traceback
    check_batch_fits(run.data, images, run.train.batch_size, run.ray.num_workers)
    check_init_from(run)
    resume_from = checkpoint_to_resume(run, resume)
    if will_start_local_cluster(address):
        check_capacity(run, strict=True, available=local_resources())    # refused before Ray starts
    started_here = ensure_ray(address)
    check_capacity(run, strict=started_here)
    result = fit(build_trainer(run, resume_from))
    checkpoint = _checkpoint_address(result.checkpoint)
    return TrainingOutcome(checkpoint=checkpoint, metrics=dict(result.metrics or {}), run_dir=run.run_dir,
                           location=run.location)


def fit(trainer: Any) -> Any:
    """``trainer.fit()``; a user error raised on a worker (a file a stream could not decode) is re-raised here
    as itself, so the command prints its one line instead of Ray's wrapped traceback."""
    try:
        return trainer.fit()
    except Exception as error:
        cause = user_error_inside(error)
        if cause is None:
            raise
        raise cause from None


def user_error_inside(error: BaseException) -> BaseException | None:
    """The first `RaytopoError` in ``error``'s causes and worker failures (Ray Train wraps worker errors)."""
    from raytopo.errors import RaytopoError

    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RaytopoError):
            return current
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
        failures = getattr(current, "worker_failures", None) or {}
        pending += list(failures.values()) if isinstance(failures, dict) else list(failures)
    return None


def with_absolute_storage(run: RunConfig) -> RunConfig:
    """``run`` with ``ray.storage_path`` resolved on the driver: Ray Train V2 changes each worker's working
    directory, so a relative ``runs`` would put the worker's TensorBoard logs under Ray's own temp folder; inside
    a Ray job a relative path is placed where it outlives the job (raytopo/job_paths.py)."""
    from dataclasses import replace

    from raytopo.job_paths import outside_job_copy

    storage = outside_job_copy(run.ray.storage_path, "ray.storage_path")
    return replace(run, ray=replace(run.ray, storage_path=storage_root(storage)))


def checkpoint_to_resume(run: RunConfig, resume: bool) -> Path | None:
    """The output policy of a run directory: nothing already there is trained into by accident.

    Without ``resume`` the run's directory must not exist yet (a reused name would silently continue, or die on
    a model mismatch); with ``resume`` it must hold a checkpoint whose family, model and data settings equal the
    run's (the fields that differ are named). ``train`` and ``ray`` settings may change on resume (more steps).
    """
    from raytopo.train.storage import run_exists

    if not resume:
        if run_exists(run.ray.storage_path, run.ray.name):
            raise ConfigError(f"{run.location}: a run named {run.ray.name!r} is already there; pass --resume to "
                              f"continue it, or choose another name (--set ray.name=NEW)")
        return None
    checkpoint = latest_checkpoint(run.ray.storage_path, run.ray.name)
    if checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint of run {run.ray.name!r} under {run.location}")
    from raytopo.checkpoint import load_checkpoint_config
    from raytopo.train.loading import checkpoint_config

    saved = checkpoint_config(checkpoint, load_checkpoint_config(checkpoint)).to_plain()  # newer fields: defaults
    from raytopo.data.config import RESUMABLE_FIELDS

    differing = [path for path in config_differences(saved, run.to_plain(), sections=("family", "model", "data"))
                 if path.removeprefix("data.") not in RESUMABLE_FIELDS]
    if differing:
        raise ConfigError(f"--resume: the config differs from the checkpoint's ({checkpoint}) in "
                          f"{', '.join(differing)}; resume with the same family, model and data settings")
    return checkpoint


def config_differences(saved: dict[str, Any], current: dict[str, Any], sections: Sequence[str]) -> list[str]:
    """Dotted paths of the values that differ between two plain run configs, within ``sections``."""
    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}").items()}
        return {prefix: value}

    differing = []
    for section in sections:
        old, new = flat(saved.get(section), section), flat(current.get(section), section)
        differing += sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return differing


def _checkpoint_address(checkpoint: Any) -> Path | str | None:
    if checkpoint is None:
        return None
    kind = checkpoint.filesystem.type_name
    return Path(checkpoint.path) if kind == "local" else f"{kind}://{checkpoint.path}"


def will_start_local_cluster(address: str | None = None) -> bool:
    """Whether `ensure_ray` would start a new local cluster (no address, no ``RAY_ADDRESS``, Ray not up)."""
    import ray

    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> bool:
    """Attach to ``address``/``RAY_ADDRESS`` if given, else start a new local cluster (never one that `ray start`
    left running); no-op if Ray is already up.

    Returns True when this call started a new local cluster (whose size is then fixed).
    """
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    # "local" starts a new cluster; None would attach to whatever `ray start` left running on this machine.
    ray.init(address=target or "local", include_dashboard=False if target is None else None, **init_kwargs)
    return target is None


def requested_cpus(run: RunConfig) -> float:
    """CPUs the run asks for: its training workers, each worker's own persistence actors, and room for one
    Ray Data read task when the data streams (without it a stream waits forever)."""
    from raytopo.registry import get_family

    from raytopo.data.sources import streams

    workers = max(run.ray.num_workers, 1)
    worker_cpus = run.ray.num_workers * run.ray.cpus_per_worker
    family = get_family(run.family)
    uses_pool = family.needs_pool(run)
    actor_cpus = workers * run.ray.persistence_actors * run.ray.cpus_per_actor if uses_pool else 0.0
    reader_cpus = run.data.reader_cpus if streams(run.data) else 0.0
    return worker_cpus + actor_cpus + reader_cpus


def requested_resources(run: RunConfig) -> dict[str, float]:
    """Everything the run asks the cluster for: CPUs (`requested_cpus`), a GPU per worker with ``ray.use_gpu``,
    and the custom resources of ``ray.worker_resources`` (per worker) and ``ray.actor_resources`` (per
    persistence actor)."""
    from raytopo.registry import get_family

    workers = max(run.ray.num_workers, 1)
    actors = workers * run.ray.persistence_actors if get_family(run.family).needs_pool(run) else 0
    needed = {"CPU": requested_cpus(run), "GPU": float(workers) if run.ray.use_gpu else 0.0}
    for name, amount in run.ray.worker_resources.items():
        needed[name] = needed.get(name, 0.0) + amount * run.ray.num_workers
    for name, amount in run.ray.actor_resources.items():
        needed[name] = needed.get(name, 0.0) + amount * actors
    return {name: amount for name, amount in needed.items() if amount > 0}


def local_resources() -> dict[str, float]:
    """What a local cluster started here would have: every CPU of the machine and its CUDA GPUs, no custom
    resources (known without starting Ray)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_capacity(run: RunConfig, strict: bool, available: dict[str, float] | None = None) -> None:
    """Fail (or warn, on a cluster that may autoscale) when no node can give the run what it asks for: Ray
    would wait forever for pending workers and actors. ``available``: the cluster's resources (default: ask
    Ray)."""
    import warnings

    if available is None:
        import ray

        available = {name: float(value) for name, value in ray.cluster_resources().items()}
    for name, needed in requested_resources(run).items():
        have = available.get(name, 0.0)
        if needed <= have + 1e-9:
            continue
        message = _shortfall(name, needed, have)
        if strict:
            raise ConfigError(message)
        warnings.warn(message + f"; Ray waits, without a time limit, until nodes with {name} join (an "
                      "autoscaler may add them)", stacklevel=2)


def _shortfall(name: str, needed: float, have: float) -> str:
    if name == "CPU":
        return (f"ray: the run needs {needed:g} CPUs (num_workers x cpus_per_worker + each worker's "
                f"persistence_actors x cpus_per_actor + data.reader_cpus for a streamed data set) but the cluster "
                f"has {have:g}; lower ray.cpus_per_worker/cpus_per_actor, data.reader_cpus or the counts")
    if name == "GPU":
        return (f"ray.use_gpu: the run needs {needed:g} GPUs (one per worker) but the cluster has {have:g}; set "
                "ray.use_gpu: false or run on a cluster with GPUs")
    return (f"ray.worker_resources/actor_resources: the run needs {needed:g} of the custom resource {name!r} but "
            f"the cluster has {have:g}; declare it on the nodes (ray start --resources) or remove it")
