"""The run config: what `raytopo train CONFIG.yaml` reads. Family-independent sections plus ``model``.

```yaml
family: tdn                  # registry name: adm | adm_t | tdn | ...
model: {...}                 # the family's own settings, validated by the family (e.g. unet/diffusion/topo)
data: {source: shapes, image_size: 32, ...}
train: {steps: 2000, batch_size: 16, lr: 2.0e-5, ...}
ray: {num_workers: 2, use_gpu: false, ...}
init_from: null              # a checkpoint to start from (staged fine-tuning: adm -> adm_t -> tdn)
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from raytopo.config import (AtLeastOne, Bounds, Checked, Fraction, NonNegative, NonNegativeInt, Positive,
                            apply_overrides, from_dict, load_yaml, to_dict)
from raytopo.data.config import DataConfig
from raytopo.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig(Checked):
    """Optimisation and bookkeeping. ``batch_size`` is per worker.

    ``warmup_steps``: the learning rate rises linearly from lr / warmup_steps to lr over the first steps.
    ``lr_schedule``: ``constant`` after the warm-up, or ``cosine``: from lr down to ``final_lr_ratio * lr`` at
    the last step, lr_n = lr (r + (1 - r) (1 + cos(pi p)) / 2), p the fraction of post-warm-up steps done
    (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts).
    ``precision``: ``bf16`` runs the families' forward passes under ``torch.autocast`` in bfloat16 (weights,
    gradients and the optimizer stay float32); ``fp32`` (the default, and the right choice on most CPUs).
    ``sample_every`` / ``eval_every`` (0 = never): every so many steps rank 0 writes a preview grid of EMA
    samples (``sample_steps`` DDIM steps) / the family's evaluation of its EMA samples (``eval_per_count`` per
    target count for count families) to TensorBoard.
    ``ema_warmup``: the EMA rate at step n is min(ema_rate, (1 + n) / (10 + n)), so the average forgets the
    random initialisation within a few hundred steps instead of ~1 / (1 - ema_rate) (a 0.9999 EMA is still 37%
    initial weights after 10k steps without it).
    """

    config_path = "train"

    steps: AtLeastOne = 2000
    batch_size: AtLeastOne = 16
    microbatches: AtLeastOne = 1
    lr: Positive = 2e-5
    warmup_steps: NonNegativeInt = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    final_lr_ratio: Fraction = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"
    weight_decay: NonNegative = 0.0
    grad_clip: Positive | None = 1.0
    ema_rate: Annotated[float, Bounds(ge=0, lt=1)] = 0.9999
    ema_warmup: bool = False
    seed: NonNegativeInt = 0
    log_every: AtLeastOne = 10
    checkpoint_every: AtLeastOne = 500
    sample_every: NonNegativeInt = 0          # 0 = never
    sample_steps: AtLeastOne = 25
    eval_every: NonNegativeInt = 0            # 0 = never
    eval_per_count: AtLeastOne = 8

    def __post_init__(self) -> None:
        if self.batch_size % self.microbatches:
            raise ConfigError(
                f"train.microbatches: expected a divisor of batch_size ({self.batch_size}), got {self.microbatches}"
            )

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based ``step``: linear warm-up, then constant or cosine (see the docstring)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(self.steps - 1 - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        ratio = self.final_lr_ratio
        return self.lr * (ratio + (1 - ratio) * (1 + math.cos(math.pi * progress)) / 2)

    def ema_rate_at(self, step: int) -> float:
        """The EMA rate applied after 0-based ``step`` (see ``ema_warmup``)."""
        return min(self.ema_rate, (1 + step) / (10 + step)) if self.ema_warmup else self.ema_rate


@dataclass(frozen=True)
class RayConfig(Checked):
    """How the run is spread over a Ray cluster; nothing here hard-codes node counts."""

    config_path = "ray"

    num_workers: NonNegativeInt = 1           # 0 = run the loop in-process
    use_gpu: bool = False
    cpus_per_worker: Positive = 1.0
    persistence_actors: NonNegativeInt = 2
    cpus_per_actor: Positive = 1.0
    actor_resources: dict[str, NonNegative] = field(default_factory=dict)
    worker_resources: dict[str, NonNegative] = field(default_factory=dict)
    storage_path: str = "runs"             # a directory, or a URI pyarrow understands (s3://, gs://, file://)
    name: str = "run"
    max_failures: Annotated[int, Bounds(ge=-1)] = 0      # -1: retry forever (Ray's convention)
    num_to_keep: AtLeastOne = 2

    def __post_init__(self) -> None:
        from raytopo.outputs import safe_name

        safe_name(self.name, "ray.name")     # the run's folder under storage_path: "../x" would escape it


@dataclass(frozen=True)
class RunConfig(Checked):
    family: str = "tdn"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    init_from: str | None = None

    @property
    def run_dir(self) -> Path:
        """The local directory this node writes the run's own files to (scratch for URI storage)."""
        from raytopo.train.storage import local_work_dir

        return local_work_dir(self.ray.storage_path, self.ray.name)

    @property
    def location(self) -> str:
        """``<storage_path>/<name>``: a local path or a URI pyarrow understands (s3://, gs://, file://)."""
        from raytopo.train.storage import run_location

        return run_location(self.ray.storage_path, self.ray.name)

    def to_plain(self) -> dict[str, Any]:
        return to_dict(self)


def parse_run_config(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig, the family's ``model`` section included (fails before any worker starts)."""
    from raytopo.registry import family_names, get_family

    if not data.get("family"):
        raise ConfigError(f"family: required, the model family to train; expected one of {', '.join(family_names())}")
    run = from_dict(RunConfig, data)
    family = get_family(run.family)
    run = replace(run, data=with_family_splits(run.data, family.held_out_splits))
    family.parse(run)  # validates the model section; raises ConfigError naming the field
    _check_augmentations(run.data, family.augmentations_kept(run), run.family)
    _check_stages(family.stages(run), run)
    return run


def with_family_splits(data: DataConfig, splits: Sequence[str]) -> DataConfig:
    """``data`` with unset ``eval_fraction`` / ``judge_fraction`` set for a family that reads ``splits``: the
    default fraction of each split it reads, 0 of the others (written to the checkpoint's config, so sampling,
    scoring and resuming see the same rows)."""
    from raytopo.data.config import DEFAULT_HELD_OUT_FRACTION

    def fraction(value: float | None, split: str) -> float:
        return value if value is not None else DEFAULT_HELD_OUT_FRACTION if split in splits else 0.0

    eval_fraction = 0.0 if data.eval_path else fraction(data.eval_fraction, "eval")
    return replace(data, eval_fraction=eval_fraction, judge_fraction=fraction(data.judge_fraction, "judge"))


def _check_augmentations(data: DataConfig, kept: frozenset[str], family: str) -> None:
    """Refuse an augmentation that would change what the family learns from its labels (one line, naming it)."""
    for name in data.augment.requested:
        if name not in kept:
            allowed = ", ".join(sorted(kept)) or "none"
            raise ConfigError(f"data.augment.{name}: family {family!r} does not keep its labels under {name} "
                              f"({_BREAKS.get(name, 'it changes the data the model learns')}); allowed: {allowed}")


_BREAKS = {"crop": "a crop can cut a component in two or off the image, changing its counts",
           "hflip": "a mirror image is outside data.group", "vflip": "a mirror image is outside data.group",
           "rot90": "a quarter turn is outside data.group"}


def _check_stages(stages: list, run: RunConfig) -> None:
    """The family's stages are non-empty, each at least one step, and add up to ``train.steps``."""
    shown = " + ".join(f"{stage.name} {stage.steps}" for stage in stages)
    if not stages or any(stage.steps < 1 for stage in stages):
        raise ConfigError(f"model: family {run.family!r} needs at least one step in every stage, got {shown or 'none'}")
    total = sum(stage.steps for stage in stages)
    if total != run.train.steps:
        raise ConfigError(f"train.steps: expected {total}, the sum of family {run.family!r}'s stages ({shown}), "
                          f"got {run.train.steps}")


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``--set key=value`` overrides, make its data paths absolute, validate."""
    return parse_run_config(absolute_data_paths(apply_overrides(load_yaml(path), overrides)))


DATA_PATH_FIELDS = ("path", "eval_path", "labels_path")


def absolute_data_paths(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain run config whose relative ``data`` paths are made absolute here, on the driver: training workers,
    Tune trials and Ray Data tasks run in other working directories, where a relative path names nothing."""
    from raytopo.data.files import absolute_location

    data = plain.get("data")
    if not isinstance(data, dict):
        return plain
    fixed = {key: absolute_location(value) for key, value in data.items()
             if key in DATA_PATH_FIELDS and isinstance(value, str) and value}
    return {**plain, "data": {**data, **fixed}}
