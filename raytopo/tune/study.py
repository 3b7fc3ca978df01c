"""Studies: variants x seeds as one Ray Tune grid, summarised with spreads and 95% intervals.

A study file is a search-space file (`raytopo.tune.space`) with three more keys and no free parameters::

    base: ../configs/topovae.yaml
    fixed: {train.steps: 150, train.eval_every: 5}
    variants:                      # named bundles of dotted run-config settings; the first is the baseline
      vae: {model.topo.weights: {bottleneck0: 0, bottleneck1: 0, persentropy0: 0, persentropy1: 0}}
      topovae: {}
    seeds: [0, 1, 2, 3, 4]         # train.seed of every trial (initial weights, batch order, noise; the variants
                                   # share them, so differences are paired by seed; the data set stays fixed)
    metrics: [topovae_bce, topovae_latent_nmi]   # final values to tabulate
    curves: [eval/topovae_bce]     # reported during training: plotted over steps with bands ...
    at_steps: [10, 25, 50, 75, 100]  # ... and tabulated at these steps
    grids_at: 50                   # optional: the first seed's preview grids at this step, variants side by side

`run_study` runs the grid with `raytopo.tune.runner.run_sweep` (Tune schedules the trials, seeds in parallel on
whatever the cluster has), takes every trial's final metrics and its reported history from Tune's
``ResultGrid``, and writes into the sweep folder: ``study.md`` and ``study.csv`` (per variant and metric: n,
mean, std and the 95% t interval; per variant against the baseline: the paired difference over common seeds,
`raytopo.eval.statistics`), ``curves.png`` (each curve's mean over seeds per variant, with a band of one
standard deviation), ``grids_step<N>.png`` (with ``grids_at``: each preview grid the trainer saved at step N,
first seed, one column per variant), and one row per failed trial, which never hides the others.
"""

from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from raytopo.config import load_yaml
from raytopo.errors import ConfigError
from raytopo.eval.statistics import Summary, paired_difference, summarise
from raytopo.tune.space import VARIANT_KEY, TuneSpace, parse_space, reported_metrics



@dataclass(frozen=True)
class Study:
    """A validated study: its Tune space (a grid over variants and seeds) and what to summarise."""

    space: TuneSpace
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    curves: tuple[str, ...] = ()
    at_steps: tuple[int, ...] = ()
    grids_at: int | None = None

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.space.variants)

    @property
    def baseline(self) -> str:
        return self.variants[0]


@dataclass
class TrialOutcome:
    """One trial of a study: its variant and seed, final metrics, reported history, and status."""

    variant: str
    seed: int
    status: str
    final: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    path: Path | None = None      # the trial's folder (its training run is in <path>/train)


def load_study(path: str | Path, storage_path: str | None = None) -> Study:
    """Read and validate a study file (one-line ConfigError naming the key on any mistake)."""
    path = Path(path)
    data = load_yaml(path)
    if storage_path is not None:
        data["storage_path"] = storage_path
    data.setdefault("name", path.stem)
    return parse_study(data, root=path.parent)


def parse_study(data: Mapping[str, Any], root: Path = Path(".")) -> Study:
    data = copy.deepcopy(dict(data))
    if not data.get("variants"):
        raise ConfigError("variants: expected at least one named variant, e.g. {plain: {}, topo: {model.x: 1}}")
    if "params" in data:
        raise ConfigError("params: a study has no searched parameters; put settings in variants or fixed")
    seeds = data.pop("seeds", None)
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds: expected a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: expected distinct seeds, got {seeds}")
    metrics = _names(data.pop("metrics", None), "metrics", required=True)
    curves = _names(data.pop("curves", None), "curves", required=False)
    at_steps = data.pop("at_steps", None) or []
    if not all(isinstance(s, int) and s >= 1 for s in at_steps):
        raise ConfigError(f"at_steps: expected positive step numbers, got {at_steps!r}")
    grids_at = data.pop("grids_at", None)
    if grids_at is not None and not (isinstance(grids_at, int) and grids_at >= 1):
        raise ConfigError(f"grids_at: expected a positive step number, got {grids_at!r}")
    data["metric"] = "loss"  # Tune's own metric is unused (fifo, no best trial); the study checks its metrics below
    data.setdefault("mode", "min")
    data.setdefault("scheduler", "fifo")
    data["params"] = {"train.seed": {"grid": seeds}}
    space = parse_space(data, root=root)
    if space.scheduler.name != "fifo" or space.search != "random" or space.num_samples != 1:
        raise ConfigError("scheduler/search/num_samples: a study runs every variant and seed to the end "
                          "(fifo, random, 1); leave them out")
    study = Study(space, tuple(seeds), tuple(metrics), tuple(curves), tuple(at_steps), grids_at)
    _check_names(study)
    _check_steps(study)
    return study


def _check_steps(study: Study) -> None:
    """``at_steps`` and ``grids_at`` within every variant's ``train.steps`` (a later step never comes)."""
    for variant in study.variants:
        steps = study.space.run_config({VARIANT_KEY: variant}).train.steps
        for key, wanted in (("at_steps", max(study.at_steps, default=0)), ("grids_at", study.grids_at or 0)):
            if wanted > steps:
                raise ConfigError(f"{key}: step {wanted} comes after the last step of variant {variant!r} "
                                  f"(train.steps {steps}); expected steps <= {steps}")


def _names(value: Any, key: str, required: bool) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a non-empty list of metric names, got {value!r}")
    return value


def _check_names(study: Study) -> None:
    """Every metric and curve is one the family reports (curves may be ``eval/<evaluation key>``)."""
    for variant in study.variants:
        run = study.space.run_config({VARIANT_KEY: variant, "train.seed": study.seeds[0]})
        training, evaluation = reported_metrics(run)
        known = training | evaluation | {f"eval/{name}" for name in evaluation}
        for key, names in (("metrics", study.metrics), ("curves", study.curves)):
            for name in names:
                if name not in known:
                    raise ConfigError(f"{key}: {name!r} is never reported by variant {variant!r}; expected one "
                                      f"of {', '.join(sorted(known))}")
        if study.curves and not run.train.eval_every and any(c.startswith("eval/") for c in study.curves):
            raise ConfigError("curves: eval/* curves need train.eval_every > 0 (in fixed or the base config)")


# --- running --------------------------------------------------------------------------------------------------


def run_study(study: Study, address: str | None = None, resume: bool = False) -> tuple[list[TrialOutcome], Path]:
    """Run the grid (or continue it) and return every trial's outcome, and the sweep folder."""
    from raytopo.tune.runner import fit_sweep, result_rows

    grid, folder = fit_sweep(study.space, address=address, resume=resume)
    trials = [trial_outcome(result, row) for result, row in zip(grid, result_rows(grid, study.space))]
    return trials, folder


def trial_outcome(result: Any, row: Any) -> TrialOutcome:
    """A TrialOutcome from one Tune ``Result`` (its final metrics and ``metrics_dataframe``) and its table row."""
    config = result.config or {}
    history: list[dict[str, float]] = []
    frame = getattr(result, "metrics_dataframe", None)
    if frame is not None and len(frame):
        history = [{key: float(value) for key, value in record.items() if _is_number(value)}
                   for record in frame.to_dict("records")]
    final = {key: float(value) for key, value in (row.metrics or {}).items() if _is_number(value)}
    path = Path(result.path) if getattr(result, "path", None) else None
    return TrialOutcome(str(config.get(VARIANT_KEY)), int(config.get("train.seed", -1)), row.status, final, history,
                        path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


# --- summarising ----------------------------------------------------------------------------------------------


def curve(history: list[dict[str, float]], name: str) -> dict[int, float]:
    """step -> ``name`` over a trial's reported history (the final report repeats the last step's values)."""
    return {int(record["step"]): record[name] for record in history if name in record and "step" in record}


def per_seed(trials: list[TrialOutcome], study: Study, variant: str, name: str,
             step: int | None = None) -> dict[int, float]:
    """seed -> the value of ``name`` for one variant's finished trials (final, or at ``step``)."""
    values = {}
    for trial in trials:
        if trial.variant != variant or trial.status != "done":
            continue
        value = trial.final.get(name) if step is None else curve(trial.history, name).get(step)
        if value is not None:
            values[trial.seed] = value
    return values


@dataclass(frozen=True)
class Row:
    """One line of the summary: a variant (or a difference ``other - baseline``), a quantity and its summary."""

    variant: str
    quantity: str
    summary: Summary


def summary_rows(trials: list[TrialOutcome], study: Study) -> tuple[list[Row], list[Row]]:
    """(per-variant summaries, paired differences against the baseline) for every metric and curve step."""
    quantities = [(name, None) for name in study.metrics]
    quantities += [(name, step) for name in study.curves for step in study.at_steps]
    variants, differences = [], []
    for name, step in quantities:
        label = name if step is None else f"{name} @ {step}"
        values = {variant: per_seed(trials, study, variant, name, step) for variant in study.variants}
        for variant in study.variants:
            variants.append(Row(variant, label, summarise(list(values[variant].values()))))
        for variant in study.variants[1:]:
            differences.append(Row(f"{variant} - {study.baseline}", label,
                                   paired_difference(values[study.baseline], values[variant])))
    return variants, differences


def _number(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def markdown(trials: list[TrialOutcome], study: Study) -> str:
    """The study's tables as Markdown (variants, paired differences, failed trials)."""
    variants, differences = summary_rows(trials, study)
    done = sum(t.status == "done" for t in trials)
    lines = [f"# Study {study.space.name}", "",
             f"{len(study.variants)} variants x {len(study.seeds)} seeds ({', '.join(map(str, study.seeds))}); "
             f"{done} of {len(trials)} trials finished. Intervals: 95% t intervals of the mean over seeds; "
             f"differences are paired by seed.", "",
             "| variant | quantity | n | mean | std | 95% interval |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.variant} | {r.quantity} | {r.summary.n} | {_number(r.summary.mean)} | {_number(r.summary.std)} "
              f"| [{_number(r.summary.low)}, {_number(r.summary.high)}] |" for r in variants]
    lines += ["", f"Paired differences against the baseline `{study.baseline}` (interval excludes 0: *yes*):", "",
              "| difference | quantity | n | mean | 95% interval | excludes 0 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.variant} | {r.quantity} | {r.summary.n} | {_number(r.summary.mean)} | "
              f"[{_number(r.summary.low)}, {_number(r.summary.high)}] | {'yes' if r.summary.excludes_zero else 'no'} |"
              for r in differences]
    failed = [t for t in trials if t.status != "done"]
    if failed:
        lines += ["", "Trials that did not finish:", "", "| variant | seed | status |", "|---|---|---|"]
        lines += [f"| {t.variant} | {t.seed} | {t.status} |" for t in failed]
    return "\n".join(lines) + "\n"


def csv_text(trials: list[TrialOutcome], study: Study) -> str:
    """Every summary row as CSV: kind (variant / difference / failed), variant, quantity, n, mean, std, low, high."""
    variants, differences = summary_rows(trials, study)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "variant", "quantity", "n", "mean", "std", "low", "high"])
    for kind, rows in (("variant", variants), ("difference", differences)):
        for r in rows:
            writer.writerow([kind, r.variant, r.quantity, r.summary.n, r.summary.mean, r.summary.std,
                             r.summary.low, r.summary.high])
    for trial in trials:
        if trial.status != "done":
            writer.writerow(["failed", trial.variant, f"seed {trial.seed}: {trial.status}", 0, "", "", "", ""])
    return buffer.getvalue()


def plot_curves(trials: list[TrialOutcome], study: Study, path: Path) -> Path | None:
    """``curves.png``: each curve's mean over seeds per variant against the step, with a +-1 std band."""
    if not study.curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(1, len(study.curves), figsize=(5 * len(study.curves), 3.6), squeeze=False)
    for axis, name in zip(axes[0], study.curves):
        for variant in study.variants:
            runs = [curve(t.history, name) for t in trials if t.variant == variant and t.status == "done"]
            steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
            if not steps:
                continue
            values = np.array([[r[s] for s in steps] for r in runs])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
            axis.plot(steps, mean, label=f"{variant} (n={len(runs)})")
            axis.fill_between(steps, mean - std, mean + std, alpha=0.25)
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def side_by_side_grids(trials: list[TrialOutcome], study: Study, path: Path) -> Path | None:
    """The first finished seed's preview grids at step ``grids_at``, one column per variant (labelled on top),
    one row per grid name; None when no trial saved one."""
    if study.grids_at is None:
        return None
    from PIL import Image, ImageDraw

    suffix = f"_step{study.grids_at:07d}.png"
    columns: dict[str, dict[str, Path]] = {}
    for variant in study.variants:
        done = sorted((t for t in trials if t.variant == variant and t.status == "done" and t.path), key=lambda t: t.seed)
        if done:
            found = sorted((done[0].path / "train").glob(f"samples/*{suffix}"))
            columns[variant] = {p.name[: -len(suffix)]: p for p in found}
    names = sorted({name for grids in columns.values() for name in grids})
    if not names:
        return None
    images = {(v, n): Image.open(p).convert("RGB") for v, grids in columns.items() for n, p in grids.items()}
    width = max(im.width for im in images.values())
    heights = [max(images[(v, n)].height for v in columns if (v, n) in images) for n in names]
    label = 16
    sheet = Image.new("RGB", (width * len(columns) + 4 * (len(columns) - 1), label + sum(heights) + 4 * len(names)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for k, variant in enumerate(columns):
        x = k * (width + 4)
        draw.text((x + 2, 2), f"{variant} (step {study.grids_at})", fill="black")
        y = label
        for name, height in zip(names, heights):
            if (variant, name) in images:
                sheet.paste(images[(variant, name)], (x, y))
            y += height + 4
    sheet.save(path)
    return path


def write_study(trials: list[TrialOutcome], study: Study, folder: Path) -> dict[str, Path]:
    """``study.md``, ``study.csv``, ``curves.png`` and ``grids_step<N>.png`` (when asked for) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {"markdown": folder / "study.md", "csv": folder / "study.csv"}
    written["markdown"].write_text(markdown(trials, study))
    written["csv"].write_text(csv_text(trials, study))
    curves = plot_curves(trials, study, folder / "curves.png")
    if curves is not None:
        written["curves"] = curves
    grids = side_by_side_grids(trials, study, folder / f"grids_step{study.grids_at}.png")
    if grids is not None:
        written["grids"] = grids
    return written
