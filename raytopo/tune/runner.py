"""A validated `TuneSpace` -> a Ray Tune ``Tuner`` -> a results table and the best trial's run config.

``ray.tune.Tuner(tune.with_resources(tune.with_parameters(run_trial, space=...), {"CPU": driver_cpus}),
param_space=..., tune_config=tune.TuneConfig(...), run_config=tune.RunConfig(...))``: Tune's own RunConfig for the
Tuner, Ray Train's inside each trial (docs/references.md, Design 5). The sweep lives in ``<storage_path>/<name>``; each
trial's training run in ``<trial dir>/train``; the best run config is written to ``<storage_path>/<name>/
best_config.yaml``. ``resume=True`` continues an interrupted sweep with ``Tuner.restore(..., resume_errored=True)``:
finished trials are kept, unfinished and errored ones run again (continuing from their newest checkpoint).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from raytopo.errors import ConfigError
from raytopo.train.config import RunConfig
from raytopo.tune.space import TuneSpace, reported_metrics, scheduler_metric, trial_data_configs
from raytopo.tune.trial import EVALUATED, run_trial

BEST_CONFIG_NAME = "best_config.yaml"


@dataclass(frozen=True)
class TrialRow:
    """One line of the results table."""

    trial_id: str
    params: dict[str, Any]
    metric: float | None
    status: str                      # done | stopped early | error: <message> | not run
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepOutcome:
    experiment_dir: Path
    rows: list[TrialRow]             # sorted by the metric, best first; trials without it last
    best: TrialRow | None
    best_config: Path | None


def experiment_dir(space: TuneSpace) -> Path:
    """``<storage_path>/<name>``, absolute; inside a Ray job, where it outlives the job (raytopo/job_paths.py)."""
    from raytopo.job_paths import outside_job_copy

    return Path(outside_job_copy(space.storage_path, "storage_path")).expanduser().resolve() / space.name


def run_sweep(space: TuneSpace, address: str | None = None, resume: bool = False) -> SweepOutcome:
    """Run (or with ``resume`` continue) the sweep; a failing trial is a row of the table, not an exception."""
    grid, folder = fit_sweep(space, address, resume)
    rows = sort_rows(result_rows(grid, space), space.mode)
    best = next((row for row in rows if row.metric is not None and row.status == "done"), None)
    best_config = write_best_config(space, best, folder / BEST_CONFIG_NAME) if best else None
    return SweepOutcome(folder, rows, best, best_config)


def fit_sweep(space: TuneSpace, address: str | None = None, resume: bool = False):
    """The driver's checks, then ``Tuner.fit()``: (Tune's ``ResultGrid``, the sweep folder)."""
    from raytopo.data.sources import check_data_source
    from raytopo.train.trainer import ensure_ray, local_resources, will_start_local_cluster

    from raytopo.outputs import check_output

    folder = experiment_dir(space)
    check_output(folder, "storage_path (--storage)", folder=True)
    if not resume and folder.exists():
        raise ConfigError(f"{folder}: a sweep named {space.name!r} is already there; pass --resume to continue "
                          f"it, or choose another --storage or name")
    for data in trial_data_configs(space):  # bad data fails here, before Ray, not as failed trials
        check_data_source(data)
    if will_start_local_cluster(address):
        check_trial_fits(space, strict=True, available=local_resources())   # refused before Ray starts
    started_here = ensure_ray(address)
    check_trial_fits(space, strict=started_here)
    tuner = restore_tuner(space, folder) if resume else build_tuner(space)
    with _metrics_checked_by_raytopo():
        grid = tuner.fit()
    return grid, folder


# --- construction -------------------------------------------------------------------------------------------


def trainable(space: TuneSpace):
    """The Tune trainable: `run_trial` bound to ``space``, reserving ``resources.driver_cpus`` for itself."""
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, space=space),
                               {"CPU": space.resources.driver_cpus})


def build_tuner(space: TuneSpace, max_concurrent: int | None = None):
    """A fresh ``ray.tune.Tuner`` for ``space`` (Ray must be initialised when ``max_concurrent`` is None)."""
    from ray import tune

    tune_config = tune.TuneConfig(
        num_samples=space.num_samples,
        scheduler=make_scheduler(space),
        search_alg=make_search(space),
        max_concurrent_trials=max_concurrent or space.max_concurrent_trials or default_concurrency(space),
    )
    run_config = tune.RunConfig(name=space.name, storage_path=str(experiment_dir(space).parent),
                                failure_config=tune.FailureConfig(max_failures=0))
    return tune.Tuner(trainable(space), param_space=space.param_space(), tune_config=tune_config,
                      run_config=run_config)


def restore_tuner(space: TuneSpace, folder: Path):
    """``Tuner.restore`` of an interrupted sweep: finished trials kept, unfinished and errored ones rerun."""
    from ray import tune

    if not tune.Tuner.can_restore(str(folder)):
        raise ConfigError(f"--resume: no sweep to resume at {folder}")
    return tune.Tuner.restore(str(folder), trainable=trainable(space), resume_errored=True)


def make_scheduler(space: TuneSpace):
    """ASHA on ``step`` (pruning on a training metric; trials reaching max_t still evaluate), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if space.scheduler.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(**asha_settings(space))


def asha_settings(space: TuneSpace) -> dict[str, Any]:
    """Keyword arguments of ``ASHAScheduler`` (checked: ``grace_period <= max_t``)."""
    training, _ = reported_metrics(base_run(space))
    metric, mode = scheduler_metric(space, training)
    max_t = space.scheduler.max_t or longest_training(space)
    grace = space.scheduler.grace_period or max(1, max_t // 8)
    if grace > max_t:
        raise ConfigError(f"scheduler.grace_period: expected <= max_t ({max_t} steps), got {grace}")
    return {"time_attr": "step", "metric": metric, "mode": mode, "max_t": max_t, "grace_period": grace,
            "reduction_factor": space.scheduler.reduction_factor, "stop_last_trials": False}


def make_search(space: TuneSpace):
    """None (Tune's random/grid variant generator) or an Optuna searcher that ignores training-only results."""
    if space.search == "random":
        return None
    from ray.tune.search.optuna import OptunaSearch

    class FinalResultOptunaSearch(OptunaSearch):
        """Optuna reports only results that carry the metric (evaluation keys arrive at a trial's end)."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return FinalResultOptunaSearch(metric=space.metric, mode=space.mode)


# --- resources ----------------------------------------------------------------------------------------------


def base_run(space: TuneSpace) -> RunConfig:
    from raytopo.train.config import parse_run_config

    return parse_run_config(space.base)


def longest_training(space: TuneSpace) -> int:
    """The largest ``train.steps`` any trial can have."""
    dist = space.params.get("train.steps")
    candidates = [int(v) for v in dist.representatives()] if dist else []
    return max([base_run(space).train.steps, *candidates])


def trial_cpus(space: TuneSpace) -> float:
    """CPUs one trial holds: its training workers and persistence actors, plus the driver's reservation."""
    from raytopo.train.trainer import requested_cpus

    return requested_cpus(base_run(space)) + space.resources.driver_cpus


def default_concurrency(space: TuneSpace) -> int:
    """As many concurrent trials as the cluster's CPUs hold (at least one)."""
    import ray

    available = float(ray.cluster_resources().get("CPU", 0.0))
    return max(1, math.floor(available / max(trial_cpus(space), 1e-9) + 1e-9))


def check_trial_fits(space: TuneSpace, strict: bool, available: dict[str, float] | None = None) -> None:
    """One trial must fit the cluster, or its training workers wait forever (a warning if it may autoscale):
    its CPUs with the driver's reservation, and the GPUs and custom resources its run asks for."""
    import warnings

    import ray

    from raytopo.train.trainer import check_capacity

    if available is None:
        available = {name: float(value) for name, value in ray.cluster_resources().items()}
    needed, have = trial_cpus(space), available.get("CPU", 0.0)
    if needed > have + 1e-9:
        message = (f"resources: one trial needs {needed:g} CPUs (workers x cpus_per_worker + persistence actors x "
                   f"cpus_per_actor + driver_cpus) but the cluster has {have:g}")
        if strict:
            raise ConfigError(message)
        warnings.warn(message + " (waiting for the autoscaler, if any)", stacklevel=2)
    check_capacity(base_run(space), strict, {**available, "CPU": float("inf")})   # GPUs, custom resources


@contextlib.contextmanager
def _metrics_checked_by_raytopo() -> Iterator[None]:
    """Tune's strict check wants the search metric in *every* result; evaluation keys arrive only in a trial's
    last one. raytopo validated the metric name before the sweep, so Tune's per-result check is switched off."""
    key, previous = "TUNE_DISABLE_STRICT_METRIC_CHECKING", os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


# --- results ------------------------------------------------------------------------------------------------


def result_rows(grid, space: TuneSpace) -> list[TrialRow]:
    """One row per trial of a ``ResultGrid``."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        params = {key: (result.config or {}).get(key) for key in space.searched()}
        value = metrics.get(space.metric)
        rows.append(TrialRow(trial_id=str(metrics.get("trial_id") or Path(result.path).name), params=params,
                             metric=float(value) if isinstance(value, (int, float)) else None,
                             status=_status(result, metrics), metrics=metrics))
    return rows


def _status(result, metrics: dict[str, Any]) -> str:
    if result.error is not None:
        return f"error: {error_summary(result.error)}"
    if metrics.get(EVALUATED):
        return "done"
    return "stopped early" if metrics else "not run"


def error_summary(error: BaseException, width: int = 160) -> str:
    """The most specific line of a (possibly nested, multi-line) Ray error, shortened to one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    specific = [line for line in lines if "Error:" in line or "Exception:" in line]
    text = (specific or lines or [type(error).__name__])[-1]
    return text if len(text) <= width else text[: width - 3] + "..."


def sort_rows(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """Best first by the metric (``mode`` min or max); trials without a value (errors, pruned) last."""
    scored = [row for row in rows if row.metric is not None and not math.isnan(row.metric)]
    others = [row for row in rows if row not in scored]
    scored.sort(key=lambda row: row.metric, reverse=mode == "max")
    return scored + sorted(others, key=lambda row: row.trial_id)


def format_table(rows: list[TrialRow], space: TuneSpace) -> str:
    """A plain-text table: trial id, each searched param, the metric, the status."""
    header = ["trial", *space.searched(), space.metric, "status"]
    body = [[row.trial_id, *(_cell(row.params.get(key)) for key in space.searched()),
             _cell(row.metric), row.status] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(line[:-1], widths)), line[-1]])
             for line in [header, *body]]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_best_config(space: TuneSpace, best: TrialRow, path: Path) -> Path:
    """The best trial's full run config as YAML for ``raytopo train`` (its run named ``<name>_best``)."""
    base_ray = base_run(space).ray
    run = space.run_config(best.params, storage_path=base_ray.storage_path, name=f"{space.name}_best")
    header = (f"# Best trial {best.trial_id} of sweep {space.name!r}: {space.metric} = {best.metric:.6g} "
              f"(mode {space.mode})\n# raytopo train {path.name}\n")
    sampler = space.sampler(best.params)
    header += (f"# evaluated with sampler {sampler.name}, {sampler.steps} steps, eta {sampler.eta}; "
               f"e.g. raytopo sample CHECKPOINT --sampler {sampler.name} --steps {sampler.steps}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(header + yaml.safe_dump(run.to_plain(), sort_keys=False))
    temporary.replace(path)
    return path
