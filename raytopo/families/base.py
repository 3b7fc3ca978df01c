"""The Family contract every model family implements (docs/architecture.md, section 2).

A family is a small object registered by a stable short name (`raytopo.registry`). The trainer, the sampling
commands, Tune and the demo talk to it only through the hooks of :class:`Family`, all required:

* ``parse(run)``: the typed settings of its ``model:`` section (raises ConfigError naming the field);
* ``held_out_splits`` and ``augmentations_kept(run)``: which splits of a file data set it reads besides
  training, and which ``data.augment`` transformations keep its labels (`FamilyDefaults`: ``eval``; all);
* ``setup(run) -> dict``: per-run objects a worker builds once (``StepContext.extras``);
* ``loss_weights(run) -> {term: weight}``: every term ``losses`` returns, weight 0 for terms only logged;
  a term missing here is an error (a typo would otherwise silently train with weight 0);
* ``needs_pool(run)``: whether ``losses`` needs the persistence actors (``ctx.pool``);
* ``stages(run) -> [Stage]``: the ordered phases of training, whose steps add up to ``train.steps``
  (`FamilyDefaults`: one stage, ``train``);
* ``build(run, structure=None) -> nn.Module``; ``structure`` is what ``structure(model)`` returned for a model
  whose shape changed while it trained (a grown tree), read back from a checkpoint; ``{}`` / None otherwise;
* ``structure(model) -> dict``: the JSON-able shape of a model, saved in every checkpoint so that ``build``
  rebuilds it exactly and the weights load strictly (`FamilyDefaults`: ``{}``, the run config suffices);
* ``enter_stage(model, run, stage, batches) -> nn.Module``: called once, at the first step of every stage after
  the first, before that stage's optimizer is made; may change the model's shape or weights (graft, grow,
  copy), drawing batches from ``batches`` (a stream of its own, seeded by the step) if it needs data. It runs
  on every worker and must decide the same way on each (`FamilyDefaults`: the model unchanged);
* ``parameter_groups(model, run, stage) -> [ParamGroup]``: what the optimizer trains in ``stage``, in groups
  with their own lr scale and gradient clipping (`single_group` for most families). Every parameter outside
  the groups is **frozen** for that stage: the trainer sets ``requires_grad=False`` (so it has no gradient and
  the ranks' gradient all-reduce skips it), keeps it out of the optimizer and the EMA, and saves it once per
  checkpoint;
* ``losses(model, batch, ctx) -> dict[str, Tensor | Pending]``: *per-sample* loss terms ``[B]``. The trainer
  multiplies them by ``loss_weights``, reduces, logs each term and backpropagates. A term may be `Pending`:
  work still running elsewhere (for TDN, persistence diagrams on Ray actors), resolved as late as possible so
  other micro-batches' forward and backward passes overlap with it;
* ``sampling_conditions(run)``: what a sample is conditioned on, one of :data:`CONDITIONS` (``counts``: target
  topological counts; ``classes``: class labels; ``masks``: a mask to follow, plus an optional class label;
  ``none``); `raytopo sample` asks this, never the data config;
* ``default_conditions(run, per_count) -> {"counts" | "label" | "mask": Tensor}``: every condition the model was trained
  on, ``per_count`` times each (``{}`` for ``none``): what sampling and evaluation use when no target is given;
* ``sample(model, run, n, cond, sampler) -> Tensor``: images in [-1, 1] (``run``: the RunConfig it was trained with);
* ``preview(model, run) -> {name: (images, captions | None)}``: the image grids the trainer logs every
  ``train.sample_every`` steps (TensorBoard ``samples/<name>``), from the EMA model;
* ``evaluate_model(model, run, sampler, per_count, batch_size) -> dict[str, float]``: the family's scores of a
  trained model (what every Tune trial reports, what ``train.eval_every`` logs and what `raytopo score` prints),
  with ``metric_names(run)`` listing their keys so a sweep's metric is checked before any trial starts.

Adding a family never requires touching the trainer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch


class Pending:
    """A loss term whose value is still being computed; ``result()`` blocks and returns the ``[B]`` tensor."""

    def __init__(self, resolve: Callable[[], torch.Tensor]) -> None:
        self._resolve = resolve
        self._value: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        if self._value is None:
            self._value = self._resolve()
        return self._value


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``with eval_mode(model):`` runs in eval mode and restores the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def resolve_terms(terms: Mapping[str, "torch.Tensor | Pending"]) -> dict[str, torch.Tensor]:
    """Every term as a tensor (blocking on pending ones)."""
    return {name: term.result() if isinstance(term, Pending) else term for name, term in terms.items()}


def sample_in_batches(family: "Family", model: torch.nn.Module, run: Any, n: int,
                      cond: Mapping[str, torch.Tensor], sampler: Any, batch_size: int,
                      progress: str | None = None) -> torch.Tensor:
    """``n`` samples drawn ``batch_size`` at a time (``cond`` tensors sliced along the batch).

    The batch starting at row ``start`` uses seed ``sampler.seed + start``, so a rerun with the same seed and
    ``batch_size`` reproduces the images exactly. A progress bar (tqdm) counts the images on an interactive
    terminal; ``progress`` names it (None: no bar).
    """
    from tqdm import tqdm

    chunks = []
    with tqdm(total=n, desc=progress, unit="img", disable=None if progress else True, leave=False) as bar:
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            chunk = {key: value[start:start + size] for key, value in cond.items()}
            chunks.append(family.sample(model, run, size, chunk, replace(sampler, seed=sampler.seed + start)))
            bar.update(size)
    return torch.cat(chunks)


@dataclass(frozen=True)
class Stage:
    """One ordered phase of training: ``steps`` optimisation steps under one optimisation policy.

    The trainer counts steps globally; a stage starts where the previous one ended. A checkpoint records the
    step, so a run resumed inside a stage continues it, and one resumed at a boundary enters the next stage
    exactly as an uninterrupted run would.
    """

    name: str
    steps: int


def stage_bounds(stages: list[Stage]) -> list[tuple[int, int]]:
    """``(first step, end step)`` of every stage, end exclusive."""
    bounds, start = [], 0
    for stage in stages:
        bounds.append((start, start + stage.steps))
        start += stage.steps
    return bounds


def stage_index_at(stages: list[Stage], step: int) -> int:
    """The index of the stage that runs optimisation step ``step`` (0-based); the last one past the end."""
    for index, (_, end) in enumerate(stage_bounds(stages)):
        if step < end:
            return index
    return len(stages) - 1


class FamilyDefaults:
    """The hooks most families share: one stage, a model whose shape the run config fixes, one parameter group,
    an evaluation on held-out images, and labels every augmentation keeps."""

    sampler_fields: frozenset[str] = frozenset({"sampler", "steps", "eta", "schedule", "rho"})
    """The `SamplerSettings` its ``sample`` reads besides the seed (a command refuses a flag for any other)."""

    held_out_splits: tuple[str, ...] = ("eval",)
    """The splits of a file data set the family reads besides training (`raytopo.data.splits`): ``eval`` when
    its evaluation compares with real images, ``judge`` when it trains raytopo's judges. A run that leaves
    ``data.eval_fraction`` / ``judge_fraction`` unset gets 0.1 of each split named here and 0 of the others."""

    def augmentations_kept(self, run: Any) -> frozenset[str]:
        """The ``data.augment`` transformations that keep what this family learns from its data (default: all;
        masks move with their images)."""
        from raytopo.data.augment import AUGMENTATIONS

        return frozenset(AUGMENTATIONS)

    def stages(self, run: Any) -> list[Stage]:
        return [Stage("train", run.train.steps)]

    def structure(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}

    def enter_stage(self, model: torch.nn.Module, run: Any, stage: Stage, batches: Any) -> torch.nn.Module:
        return model

    def parameter_groups(self, model: torch.nn.Module, run: Any, stage: Stage) -> list["ParamGroup"]:
        return single_group(model)


@dataclass
class ParamGroup:
    """Parameters optimised together: their own learning-rate scale and their own gradient-norm clipping
    (``train.grad_clip`` applies to each group separately, so two models trained side by side stay independent)."""

    name: str
    parameters: list[torch.nn.Parameter]
    lr_scale: float = 1.0


def single_group(model: torch.nn.Module) -> list[ParamGroup]:
    """The default optimisation policy: every parameter the model leaves trainable, in one group (a module the
    model keeps frozen itself, such as a target network it updates by hand, stays out)."""
    return [ParamGroup("all", [p for p in model.parameters() if p.requires_grad])]


@dataclass
class StepContext:
    """What a family's `losses` may use besides the model and batch."""

    step: int
    device: torch.device
    pool: Any = None                      # a raytopo.parallel.PersistencePool (in-process if Ray is absent)
    generator: torch.Generator | None = None
    extras: dict[str, Any] = field(default_factory=dict)


CONDITIONS = ("counts", "classes", "masks", "none")


class Family(Protocol):
    name: str

    held_out_splits: tuple[str, ...]
    sampler_fields: frozenset[str]

    def parse(self, run: Any) -> Any: ...

    def augmentations_kept(self, run: Any) -> frozenset[str]: ...

    def setup(self, run: Any) -> dict[str, Any]: ...

    def loss_weights(self, run: Any) -> dict[str, float]: ...

    def needs_pool(self, run: Any) -> bool: ...

    def stages(self, run: Any) -> list[Stage]: ...

    def build(self, run: Any, structure: dict[str, Any] | None = None) -> torch.nn.Module: ...

    def structure(self, model: torch.nn.Module) -> dict[str, Any]: ...

    def enter_stage(self, model: torch.nn.Module, run: Any, stage: Stage, batches: Any) -> torch.nn.Module: ...

    def parameter_groups(self, model: torch.nn.Module, run: Any, stage: Stage) -> list[ParamGroup]: ...

    def losses(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict: ...

    def sampling_conditions(self, run: Any) -> str: ...

    def default_conditions(self, run: Any, per_count: int) -> dict[str, torch.Tensor]: ...

    def sample(self, model: torch.nn.Module, run: Any, n: int, cond: Mapping[str, torch.Tensor],
               sampler: Any) -> torch.Tensor: ...

    def preview(self, model: torch.nn.Module, run: Any) -> dict[str, tuple[torch.Tensor, list[str] | None]]: ...

    def evaluate_model(self, model: torch.nn.Module, run: Any, sampler: Any, per_count: int,
                       batch_size: int) -> dict[str, float]: ...

    def metric_names(self, run: Any) -> set[str]: ...
