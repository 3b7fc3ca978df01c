"""Search spaces: a YAML file -> a validated `TuneSpace` -> Ray Tune's ``param_space``.

```yaml
base: ../configs/tdn_shapes.yaml        # a run config (relative to this file) or an inline mapping
fixed: {train.steps: 300}               # optional: dotted run-config keys set for every trial
params:                                 # dotted keys -> one distribution each
  model.topo.weight: {loguniform: [1.0e-5, 1.0e-2]}
  model.topo.noisy: {choice: [true, false]}
  train.lr: {loguniform: [1.0e-4, 1.0e-3]}
  sample.steps: {grid: [25, 50]}        # sample.*: SamplerSettings fields for each trial's evaluation samples
metric: dim0_conn4_accuracy             # a training metric (loss, mse, ...) or an evaluation key
mode: max
scheduler: asha                         # or fifo, or {name: asha, metric: loss, mode: min, grace_period: 50}
search: random                          # or optuna (needs the optuna package)
num_samples: 8
max_concurrent_trials: null             # null: as many as the cluster's CPUs hold
resources: {num_workers: 1, cpus_per_worker: 1.0, persistence_actors: 2, cpus_per_actor: 0.5}
sample: {name: heun, steps: 50, schedule: karras}  # SamplerSettings fields (raytopo.families.sampling)
eval: {per_count: 4, batch_size: 16}
```

Distributions: ``choice``/``grid`` take a list of values, ``uniform``/``loguniform`` ``[low, high]``,
``randint`` ``[low, high)`` (high excluded, as in Tune). The family comes from the base run config.

Everything is checked here, before any trial starts: every dotted key is applied to the base run config with
each distribution's representative values (all values of a choice/grid; the bounds and an interior point of a
range) and the result goes through `parse_run_config`, so unknown keys and out-of-range values fail with a
one-line `ConfigError` naming ``params.<key>``; the metric must be one the family reports.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from raytopo.config import Checked, from_dict, load_yaml, to_dict
from raytopo.errors import ConfigError
from raytopo.families.sampling import SamplerSettings
from raytopo.outputs import safe_name
from raytopo.train.config import RunConfig, absolute_data_paths, parse_run_config

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SAMPLE_PREFIX = "sample."
VARIANT_KEY = "variant"   # the param that picks one of ``variants``: a named bundle of dotted settings
_INTERIOR = 0.4142135623730951  # a non-integral fraction: an interior probe that an int field rejects


@dataclass(frozen=True)
class Distribution:
    """One searched parameter: ``kind`` in DISTRIBUTIONS and its arguments."""

    kind: str
    args: tuple[Any, ...]

    def representatives(self) -> list[Any]:
        """Values that validation tries: every listed value, or the bounds and an interior point of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        low, high = self.args
        if self.kind == "randint":
            return [low, high - 1]
        if self.kind == "loguniform":
            return [low, math.exp(math.log(low) + (math.log(high) - math.log(low)) * _INTERIOR), high]
        return [low, low + (high - low) * _INTERIOR, high]

    def to_tune(self) -> Any:
        """The Tune search-space object (``tune.choice``, ``tune.grid_search``, ...)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)


@dataclass(frozen=True)
class SchedulerSpec(Checked):
    """``asha`` prunes on a *training* metric (evaluation keys only exist at a trial's end); ``fifo`` never prunes.

    ``metric``/``mode`` default to the sweep's metric when it is a training metric, else ``loss``/``min``.
    ``grace_period`` and ``max_t`` are in training steps (default: max_t = the longest trial's
    ``train.steps``, grace_period = max_t // 8).
    """

    name: Literal["asha", "fifo"] = "asha"
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    grace_period: int | None = None
    reduction_factor: float = 2.0
    max_t: int | None = None

    def __post_init__(self) -> None:
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"scheduler.grace_period: expected >= 1, got {self.grace_period}")
        if not self.reduction_factor > 1:
            raise ConfigError(f"scheduler.reduction_factor: expected > 1, got {self.reduction_factor}")
        if self.max_t is not None and self.max_t < 1:
            raise ConfigError(f"scheduler.max_t: expected >= 1, got {self.max_t}")


@dataclass(frozen=True)
class EvalSpec(Checked):
    """End-of-trial evaluation: ``per_count`` samples for each target count min..max of the data."""

    per_count: int = 4
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("per_count", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}: expected >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ResourceSpec(Checked):
    """Per-trial resources, written into the run config's ``ray`` section (None keeps the base's value).

    ``driver_cpus`` is what the Tune trial itself reserves (Tune cannot schedule an empty request, so > 0); the
    trial mostly waits for its TorchTrainer and samples only after the training workers have released their
    CPUs, so a small share is enough.
    """

    num_workers: int | None = None
    cpus_per_worker: float | None = None
    use_gpu: bool | None = None
    persistence_actors: int | None = None
    cpus_per_actor: float | None = None
    driver_cpus: float = 0.1

    def __post_init__(self) -> None:
        if self.num_workers == 0:
            raise ConfigError("resources.num_workers: expected >= 1; 0 runs the training loop inside the Tune "
                              "trial, where Ray Train's report is not allowed")
        if not self.driver_cpus > 0:
            raise ConfigError(f"resources.driver_cpus: expected > 0 (Tune needs a non-empty request), "
                              f"got {self.driver_cpus}")

    def ray_section(self) -> dict[str, Any]:
        names = ("num_workers", "cpus_per_worker", "use_gpu", "persistence_actors", "cpus_per_actor")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class TuneSpace:
    """A validated search space; ``base`` is the plain run config every trial starts from (``fixed`` applied)."""

    name: str
    base: dict[str, Any]
    params: dict[str, Distribution]
    metric: str
    mode: Literal["min", "max"]
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    search: Literal["random", "optuna"] = "random"
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    sample: SamplerSettings = field(default_factory=SamplerSettings)
    eval: EvalSpec = field(default_factory=EvalSpec)
    storage_path: str = "runs/tune"
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return str(self.base.get("family", RunConfig.family))

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: the dotted keys (flat) mapped to Tune distributions."""
        return {key: dist.to_tune() for key, dist in self.params.items()}

    def run_config(self, config: Mapping[str, Any], storage_path: str | None = None,
                   name: str | None = None) -> RunConfig:
        """The trial's validated RunConfig: base + its sampled run-config params (+ a storage location)."""
        data = self.plain_run_config(config)
        if storage_path is not None:
            data.setdefault("ray", {})["storage_path"] = storage_path
        if name is not None:
            data.setdefault("ray", {})["name"] = name
        return parse_run_config(data)

    def plain_run_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(self.base)
        for key, value in config.items():
            if key == VARIANT_KEY and self.variants:
                for setting, chosen in self.variants[value].items():
                    set_dotted(data, setting, chosen, where=f"variants.{value}.{setting}")
            elif key in self.params and not key.startswith(SAMPLE_PREFIX):
                set_dotted(data, key, value, where=f"params.{key}")
        return data

    def sampler(self, config: Mapping[str, Any]) -> SamplerSettings:
        """The sampler settings of one trial: ``sample`` with the trial's ``sample.*`` params applied."""
        chosen = {key[len(SAMPLE_PREFIX):]: value for key, value in config.items()
                  if key in self.params and key.startswith(SAMPLE_PREFIX)}
        return from_dict(SamplerSettings, {**to_dict(self.sample), **chosen}, "sample")

    def searched(self) -> list[str]:
        return list(self.params)


# --- loading ------------------------------------------------------------------------------------------------


def load_space(path: str | Path, num_samples: int | None = None, storage_path: str | None = None) -> TuneSpace:
    """Read and validate a space file; ``num_samples``/``storage_path`` override the file (CLI flags)."""
    path = Path(path)
    data = load_yaml(path)
    if num_samples is not None:
        data["num_samples"] = num_samples
    if storage_path is not None:
        data["storage_path"] = storage_path
    data.setdefault("name", path.stem)
    return parse_space(data, root=path.parent)


_TOP_LEVEL = ("name", "base", "fixed", "params", "metric", "mode", "scheduler", "search", "num_samples",
              "max_concurrent_trials", "resources", "sample", "eval", "storage_path", "variants")


def parse_space(data: Mapping[str, Any], root: Path = Path(".")) -> TuneSpace:
    """A validated TuneSpace from a plain mapping (relative ``base`` paths resolve against ``root``)."""
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown space setting; allowed: {', '.join(_TOP_LEVEL)}")
    if "metric" not in data or "mode" not in data:
        raise ConfigError("metric/mode: required, e.g. metric: dim0_conn4_accuracy and mode: max")
    resources = from_dict(ResourceSpec, data.get("resources"), "resources")
    base = _base_config(data.get("base"), root, data.get("fixed") or {}, resources)
    params = {str(key): parse_distribution(str(key), spec) for key, spec in _mapping(data, "params").items()}
    variants = _variants(data.get("variants"))
    if variants:
        params = {VARIANT_KEY: Distribution("grid", tuple(variants)), **params}
    if not params:
        raise ConfigError("params: expected at least one searched parameter")
    space = TuneSpace(
        name=safe_name(_text(data.get("name", "sweep"), "name"), "name"),
        base=base,
        params=params,
        metric=_text(data["metric"], "metric"),
        mode=_choice(data["mode"], "mode", ("min", "max")),
        scheduler=_scheduler(data.get("scheduler", "asha")),
        search=_choice(data.get("search", "random"), "search", ("random", "optuna")),
        num_samples=_positive(data.get("num_samples", 1), "num_samples"),
        max_concurrent_trials=None if data.get("max_concurrent_trials") is None
        else _positive(data["max_concurrent_trials"], "max_concurrent_trials"),
        resources=resources,
        sample=from_dict(SamplerSettings, data.get("sample"), "sample"),
        eval=from_dict(EvalSpec, data.get("eval"), "eval"),
        storage_path=_text(data.get("storage_path", "runs/tune"), "storage_path"),
        variants=variants,
    )
    validate_space(space)
    return space


def _variants(spec: Any) -> dict[str, dict[str, Any]]:
    """``{name: {dotted key: value}}`` (each variant a bundle of settings); ConfigError naming a bad entry."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"variants: expected a mapping of names to settings like {{vae: {{model.x: 0}}}}, got {spec!r}")
    variants = {}
    for name, settings in spec.items():
        if settings is not None and not isinstance(settings, Mapping):
            raise ConfigError(f"variants.{name}: expected a mapping of dotted run-config keys to values, got {settings!r}")
        variants[str(name)] = dict(settings or {})
    return variants


def parse_distribution(key: str, spec: Any) -> Distribution:
    """``{kind: args}`` -> Distribution; a wrong kind or wrong arguments raise ConfigError naming the key."""
    where = f"params.{key}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution like {{choice: [a, b]}}, one of "
                          f"{', '.join(DISTRIBUTIONS)}; got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} expects a non-empty list of values, got {args!r}")
        return Distribution(kind, tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}: {kind} expects [low, high], got {args!r}")
    low, high = (_number(v, where, integer=kind == "randint") for v in args)
    if not low < high:
        raise ConfigError(f"{where}: {kind} expects low < high, got [{low}, {high}]")
    if kind == "loguniform" and not low > 0:
        raise ConfigError(f"{where}: loguniform expects 0 < low < high, got [{low}, {high}]")
    return Distribution(kind, (low, high))


# --- validation ---------------------------------------------------------------------------------------------


def validate_space(space: TuneSpace) -> None:
    """Every param and value accepted by the run config / sampler; the metric reported; search available."""
    parse_run_config(space.base)
    for key, dist in space.params.items():
        for value in dist.representatives():
            _check_value(space, key, value)
    run = None
    for combination in _combinations(space):
        try:
            run = space.run_config(combination)
        except ConfigError as error:
            shown = ", ".join(f"{key}={value!r}" for key, value in combination.items() if key in _finite(space))
            raise ConfigError(f"params: the combination {shown or 'of first values'} is rejected: {error}") from None
    _check_metric(space, run)
    _check_search(space)


MAX_CHECKED_COMBINATIONS = 1024


def trial_data_configs(space: TuneSpace) -> list:
    """The distinct data sections the trials can get (each choice/grid combination, ranges at their low
    bound): what the driver checks before any trial starts (an image too small for ``max_count``, say)."""
    distinct = []
    for combination in _combinations(space):
        data = space.run_config(combination).data
        if data not in distinct:
            distinct.append(data)
    return distinct


def _finite(space: TuneSpace) -> list[str]:
    return [key for key, dist in space.params.items() if dist.kind in ("choice", "grid")]


def _combinations(space: TuneSpace) -> list[dict[str, Any]]:
    """Every combination of the choice/grid values (ranges at their low bound), or only the first values when
    there are more than MAX_CHECKED_COMBINATIONS: settings that are valid alone may clash together."""
    first = {key: dist.representatives()[0] for key, dist in space.params.items()}
    finite = _finite(space)
    if math.prod(len(space.params[key].args) for key in finite) > MAX_CHECKED_COMBINATIONS:
        return [first]
    return [{**first, **dict(zip(finite, values))}
            for values in itertools.product(*(space.params[key].args for key in finite))]


def _check_value(space: TuneSpace, key: str, value: Any) -> None:
    where = f"params.{key}"
    if key == VARIANT_KEY and space.variants:
        try:
            space.run_config({key: value})
        except ConfigError as error:
            raise ConfigError(f"variants.{value}: {error}") from None
        return
    if key.startswith(SAMPLE_PREFIX):
        name = key[len(SAMPLE_PREFIX):]
        allowed = [f.name for f in fields(SamplerSettings)]
        if name not in allowed:
            raise ConfigError(f"{where}: unknown sampling setting; allowed: {', '.join(SAMPLE_PREFIX + a for a in allowed)}")
        try:
            space.sampler({key: value})
        except ConfigError as error:
            raise ConfigError(f"{where} = {value!r}: {error}") from None
        return
    data = copy.deepcopy(space.base)
    set_dotted(data, key, value, where=where)
    try:
        parse_run_config(data)
    except ConfigError as error:
        raise ConfigError(f"{where} = {value!r}: {error}") from None


def reported_metrics(run: RunConfig) -> tuple[set[str], set[str]]:
    """(training metrics, evaluation keys) that trials of ``run``'s family report.

    Training: the family's loss terms, ``loss``, ``lr`` and ``step``. Evaluation: the family's ``metric_names``
    (the keys of its ``evaluate_model``), so a new family needs nothing here.
    """
    from raytopo.registry import get_family

    family = get_family(run.family)
    training = set(family.loss_weights(run)) | {"loss", "lr", "step"}
    return training, set(family.metric_names(run))


def scheduler_metric(space: TuneSpace, training: set[str]) -> tuple[str, str]:
    """The (metric, mode) ASHA prunes on: explicit, else the sweep's metric if it is a training one, else loss."""
    if space.scheduler.metric is not None:
        return space.scheduler.metric, space.scheduler.mode or space.mode
    if space.metric in training:
        return space.metric, space.mode
    return "loss", "min"


def _check_metric(space: TuneSpace, run: RunConfig) -> None:
    training, evaluation = reported_metrics(run)
    if space.metric not in training | evaluation:
        raise ConfigError(f"metric: {space.metric!r} is never reported by family {run.family!r}; expected one of "
                          f"{', '.join(sorted(training | evaluation))}")
    if space.scheduler.name == "asha":
        metric, _ = scheduler_metric(space, training)
        if metric not in training:
            raise ConfigError(f"scheduler.metric: {metric!r} is not a training metric (ASHA prunes during "
                              f"training); expected one of {', '.join(sorted(training))}")


def _check_search(space: TuneSpace) -> None:
    if space.search != "optuna":
        return
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("search: 'optuna' needs the optuna package (pip install 'raytopo[tune]'); "
                          "or use search: random") from None
    grids = [key for key, dist in space.params.items() if dist.kind == "grid"]
    if grids:
        raise ConfigError(f"params.{grids[0]}: grid is not supported with search: optuna; use choice")


# --- helpers ------------------------------------------------------------------------------------------------


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``data[a][b][c] = value`` for ``key`` "a.b.c" (creating sections); a value in the way is an error."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: expected a dotted run-config key like model.topo.weight")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _base_config(base: Any, root: Path, fixed: Mapping[str, Any], resources: ResourceSpec) -> dict[str, Any]:
    if isinstance(base, (str, Path)):
        data = load_yaml(root / base)
    elif isinstance(base, Mapping):
        data = copy.deepcopy(dict(base))
    else:
        raise ConfigError(f"base: expected a run-config path (relative to the space file) or a mapping, got {base!r}")
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"fixed: expected a mapping of dotted keys to values, got {fixed!r}")
    for key, value in fixed.items():
        set_dotted(data, str(key), value, where=f"fixed.{key}")
    data.setdefault("ray", {}).update(resources.ray_section())
    data = absolute_data_paths(data)
    try:
        parse_run_config(data)
    except ConfigError as error:
        raise ConfigError(f"base: {error}") from None
    return data


def _scheduler(value: Any) -> SchedulerSpec:
    if isinstance(value, str):
        value = {"name": value}
    return from_dict(SchedulerSpec, value, "scheduler")


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _number(value: Any, where: str, integer: bool) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected numbers, got {value!r}")
    if integer:
        if int(value) != value:
            raise ConfigError(f"{where}: randint expects whole numbers, got {value!r}")
        return int(value)
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1, got {value!r}")
    return value


__all__ = ["Distribution", "TuneSpace", "SchedulerSpec", "EvalSpec", "ResourceSpec", "load_space",
           "parse_space", "parse_distribution", "validate_space", "reported_metrics", "scheduler_metric",
           "set_dotted", "DISTRIBUTIONS"]
