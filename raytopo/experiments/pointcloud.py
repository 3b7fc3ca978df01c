"""Topo-GEN's point-cloud deformation experiments: a learnable 2-D cloud pulled towards a target's topology.

The cloud is a parameter ``P`` ``[N, 2]``; each step computes its Rips diagrams (no gradient), evaluates the
weighted Topo-GEN regularisers against the target's diagrams (``TopologicalRegulariser``, docs/references.md, Topo-GEN
A.4, the gradient flows through the generator edges, A.3) and takes an Adam step. When every active loss has
``gotloss`` False (for example bottleneck0 whose worst pair is a target point matched to the diagonal, a
value that does not depend on ``P``), the reference demos (``synthetic_experiments.py``) descend
``loss_push0 = -sum_i d_i / 2`` instead, which pushes clusters apart until a regulariser applies again; here
that fallback is the option ``push0_fallback`` (on by default) and the steps that used it are counted. With the
fallback off such a step makes no update and is counted as idle.

Presets (``PRESETS``) are the reference's three demos with seeded generators. The reference runs them with
weights ``[1, 1, 0, 0, 0, 0, 0]`` and Adam at lr 0.01 for 15000 steps (its code: 1000 steps at lr 0.01 / 0.05 /
0.1). Adam moves a coordinate by about ``lr`` per step at most, and clusters here travel 5-30 units, so at
lr 0.01 clusters5to3 needs about 2300 steps. The presets keep the reference's weights and raise the lr:

* clusters5to3, clusters2to4: lr 0.1; over seeds 0-7 the target was first reached at steps 214-415 and 92-271,
  hence 600 and 500 steps.
* segments_to_circle: lr 0.3. The loop must appear by chance first: bottleneck1 matches the target's loop to
  the diagonal (no gradient) until the cloud has a loop of persistence above about half the target's; at lr 0.1
  2 of 3 seeds had none after 2000 steps, at lr 0.3 seeds 0-7 reached the circle at steps 0-248 (seed 3 starts
  with the gap between its segments already counted as a loop at the check's coarse scale), hence 600 steps.

Each preset runs in a few seconds on a laptop CPU (about 5 ms a step). Other departures: the clusters are
Gaussian (the reference draws uniformly in a square), and in clusters2to4 the initial cloud is two clusters of
30 and 34 points (the reference's loop overwrote 20 of the first cluster's points and left 20 points at exactly
the origin).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError
from raytopo.experiments.check import TopologyCheck, check_topology, cloud_topology, default_scale
from raytopo.experiments.clouds import gaussian_clusters, load_cloud, noisy_segment, random_circle
from raytopo.experiments.render import write_frames
from raytopo.topology.regularisers import TopologicalRegulariser, TopoRegulariserConfig, loss_push0
from raytopo.topology.rips import rips_persistence

CUSTOM = "custom"
GIF_NAME = "deformation.gif"
POINTS_NAME = "points.npy"
SUMMARY_NAME = "summary.json"
REFERENCE_WEIGHTS: tuple[float, ...] = (1, 1, 0, 0, 0, 0, 0)  # the reference demos': bottleneck0 + bottleneck1
CloudMaker = Callable[[np.random.Generator], np.ndarray]


# ----------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class PointCloudPreset(Checked):
    """A named experiment: how to make its initial and target clouds from a seed, and its default settings."""

    name: str
    description: str
    make_points: CloudMaker
    make_target: CloudMaker
    weights: tuple[float, ...] = REFERENCE_WEIGHTS
    steps: int = 400
    lr: float = 0.1
    frame_every: int = 10


def _five_clusters(rng: np.random.Generator) -> np.ndarray:
    centres = [(0, 0), (10, 0), (0, 20), (30, 30), (10, -25)]
    return gaussian_clusters(rng, centres, [10, 10, 10, 10, 24], spread=0.3)


def _three_points(rng: np.random.Generator) -> np.ndarray:
    return np.array([[5.0, 5.0], [10.0, 10.0], [20.0, 6.0]])


def _two_clusters(rng: np.random.Generator) -> np.ndarray:
    return gaussian_clusters(rng, [(0, 0), (10, 5)], [30, 34], spread=0.25)


def _four_clusters(rng: np.random.Generator) -> np.ndarray:
    return gaussian_clusters(rng, [(0, 0), (10, 0), (-5, 4), (8, 13)], [30, 20, 30, 48], spread=0.18)


def _two_segments(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([
        noisy_segment(rng, (0.0, 0.0), (0.0, 0.7), 32, noise=0.06),
        noisy_segment(rng, (5.0, 0.0), (0.2, 0.9), 32, noise=0.06),
    ])


def _circle(rng: np.random.Generator) -> np.ndarray:
    return random_circle(rng, 100, radius=5.0)


PRESETS: dict[str, PointCloudPreset] = {
    preset.name: preset
    for preset in (
        PointCloudPreset("clusters5to3", "5 Gaussian clusters (10, 10, 10, 10, 24 points) to the reference's 3 points",
                         _five_clusters, _three_points, steps=600),
        PointCloudPreset("clusters2to4", "2 Gaussian clusters (30, 34 points) to a 4-cluster target",
                         _two_clusters, _four_clusters, steps=500),
        PointCloudPreset("segments_to_circle", "two noisy line segments (32 points each) to one circle of 100 points",
                         _two_segments, _circle, steps=600, lr=0.3),
    )
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


# ------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class PointCloudExperiment(Checked):
    """One deformation run. ``preset`` names a preset (its clouds come from ``seed``) or is ``"custom"``;
    ``points_file`` / ``target_file`` replace the preset's initial / target cloud (both required for custom).

    ``regulariser`` holds the seven weights and the loss parameters (its ``maxdim`` must be 1: the check counts
    loops). ``scale`` and ``loop_persistence`` are the check's (``None``: derived from the target, see
    ``raytopo.experiments.check``). A frame is kept every ``frame_every`` steps and after the last step.
    Use ``for_preset`` to get a preset's default steps, lr and weights.
    """

    preset: str = "clusters5to3"
    points_file: Path | None = None
    target_file: Path | None = None
    regulariser: TopoRegulariserConfig = field(default_factory=lambda: TopoRegulariserConfig(weights=REFERENCE_WEIGHTS))
    steps: int = 500
    lr: float = 0.1
    seed: int = 0
    frame_every: int = 10
    scale: float | None = None
    loop_persistence: float | None = None
    push0_fallback: bool = True

    def __post_init__(self) -> None:
        if self.preset != CUSTOM and self.preset not in PRESETS:
            raise ConfigError(f"preset: expected one of {(*PRESET_NAMES, CUSTOM)}, got {self.preset!r}")
        if self.preset == CUSTOM and (self.points_file is None or self.target_file is None):
            raise ConfigError("points_file, target_file: preset 'custom' needs both an initial and a target cloud file")
        if not isinstance(self.regulariser, TopoRegulariserConfig):
            raise ConfigError(f"regulariser: expected a TopoRegulariserConfig, got {type(self.regulariser).__name__}")
        if self.regulariser.maxdim != 1:
            raise ConfigError(f"regulariser.maxdim: expected 1 (the check counts loops), got {self.regulariser.maxdim}")
        _require_int("steps", self.steps, 1)
        _require_int("frame_every", self.frame_every, 1)
        _require_int("seed", self.seed, 0)
        _require_positive("lr", self.lr)
        for name in ("scale", "loop_persistence"):
            if getattr(self, name) is not None:
                _require_positive(name, getattr(self, name))
        if not isinstance(self.push0_fallback, bool):
            raise ConfigError(f"push0_fallback: expected True or False, got {self.push0_fallback!r}")

    @classmethod
    def for_preset(cls, preset: str, weights: tuple[float, ...] | None = None, **overrides) -> "PointCloudExperiment":
        """The preset's defaults (steps, lr, weights, frame_every), then ``overrides``; ``None`` keeps a default.

        ``"custom"`` uses the defaults of clusters5to3 (weights ``[1, 1, 0, ...]``, lr 0.1, 600 steps).
        """
        defaults = PRESETS.get(preset, PRESETS[PRESET_NAMES[0]])
        given = {key: value for key, value in overrides.items() if value is not None}
        regulariser = given.pop("regulariser", TopoRegulariserConfig(weights=defaults.weights))
        if weights is not None:
            regulariser = replace(regulariser, weights=tuple(weights))
        settings = {"steps": defaults.steps, "lr": defaults.lr, "frame_every": defaults.frame_every, **given}
        return cls(preset=preset, regulariser=regulariser, **settings)

    def as_dict(self) -> dict:
        """JSON-ready settings (for the summary)."""
        return {
            "preset": self.preset, "points_file": _str_or_none(self.points_file),
            "target_file": _str_or_none(self.target_file), "weights": list(self.regulariser.weights),
            "steps": self.steps, "lr": self.lr, "seed": self.seed, "frame_every": self.frame_every,
            "scale": self.scale, "loop_persistence": self.loop_persistence, "push0_fallback": self.push0_fallback,
        }


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: expected a finite number > 0, got {value!r}")


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def experiment_clouds(experiment: PointCloudExperiment) -> tuple[np.ndarray, np.ndarray]:
    """``(initial, target)`` clouds ``[N, 2]``: from the files when given, else from the preset and seed.

    The two clouds use independent streams of ``seed`` so replacing one by a file leaves the other unchanged.
    """
    preset = PRESETS.get(experiment.preset)
    if experiment.points_file is not None:
        points = load_cloud(experiment.points_file, "points")
    else:
        points = preset.make_points(np.random.default_rng([experiment.seed, 0]))
    if experiment.target_file is not None:
        target = load_cloud(experiment.target_file, "target points")
    else:
        target = preset.make_target(np.random.default_rng([experiment.seed, 1]))
    return points, target


# ------------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class DeformationResult:
    """What a run produced. ``frames`` are ``(step, cloud)``: the cloud before ``step`` (``steps``: the final one).

    ``losses[s]`` is the loss descended at step ``s`` (the regulariser, or push0 on a fallback step).
    ``reached_at_step`` is the first step whose cloud had the target's topology (``steps`` for the final cloud),
    ``None`` if none did.
    """

    points: np.ndarray
    target: np.ndarray
    frames: list[tuple[int, np.ndarray]]
    losses: list[float]
    final_loss: float
    push0_steps: int
    idle_steps: int
    reached_at_step: int | None
    check: TopologyCheck
    seconds: float


def deform(points: np.ndarray, target: np.ndarray, experiment: PointCloudExperiment) -> DeformationResult:
    """Run Adam on the learnable cloud ``points`` towards the topology of ``target`` (module docstring)."""
    started = time.perf_counter()
    backend = experiment.regulariser.backend
    regulariser = TopologicalRegulariser(experiment.regulariser)
    target_tensor = torch.as_tensor(np.asarray(target, dtype=np.float64))
    target_diagrams = rips_persistence(target, maxdim=1, backend=backend)
    scale = experiment.scale if experiment.scale is not None else default_scale(target, target_diagrams[0])
    loop_persistence = experiment.loop_persistence if experiment.loop_persistence is not None else scale
    wanted = cloud_topology(target_diagrams, scale, loop_persistence)

    cloud = torch.nn.Parameter(torch.as_tensor(np.array(points, dtype=np.float64)))
    optimizer = torch.optim.Adam([cloud], lr=experiment.lr)
    frames, losses, push0_steps, idle_steps, reached_at = [], [], 0, 0, None
    for step in range(experiment.steps):
        current = cloud.detach().numpy().copy()
        diagrams = rips_persistence(current, maxdim=1, backend=backend)
        if step % experiment.frame_every == 0:
            frames.append((step, current))
        if reached_at is None and cloud_topology(diagrams, scale, loop_persistence) == wanted:
            reached_at = step
        loss, got_loss = regulariser(cloud, target_tensor, diagrams, target_diagrams)
        if not got_loss and experiment.push0_fallback:
            loss, push0_steps = loss_push0(cloud, diagrams), push0_steps + 1
        losses.append(float(loss.detach()))
        if not loss.requires_grad:
            idle_steps += 1
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    final = cloud.detach().numpy().copy()
    final_diagrams = rips_persistence(final, maxdim=1, backend=backend)
    frames.append((experiment.steps, final))
    check = check_topology(final_diagrams, target_diagrams, scale, loop_persistence)
    if reached_at is None and check.reached:
        reached_at = experiment.steps
    final_loss, _ = regulariser(cloud, target_tensor, final_diagrams, target_diagrams)
    return DeformationResult(
        points=final, target=np.asarray(target, dtype=np.float64), frames=frames, losses=losses,
        final_loss=float(final_loss.detach()), push0_steps=push0_steps, idle_steps=idle_steps,
        reached_at_step=reached_at, check=check, seconds=time.perf_counter() - started,
    )


def run_experiment(experiment: PointCloudExperiment) -> DeformationResult:
    """Make or load the clouds of ``experiment`` and deform."""
    points, target = experiment_clouds(experiment)
    return deform(points, target, experiment)


# ----------------------------------------------------------------------------------------------------- outputs


def summary(experiment: PointCloudExperiment, result: DeformationResult) -> dict:
    """The JSON summary: settings, steps, final loss, push0 and idle steps, the check, timing."""
    return {
        "settings": experiment.as_dict(),
        "points": int(result.points.shape[0]), "target_points": int(result.target.shape[0]),
        "steps": experiment.steps, "final_loss": result.final_loss,
        "push0_steps": result.push0_steps, "idle_steps": result.idle_steps,
        "reached_at_step": result.reached_at_step, "check": result.check.as_dict(),
        "frames": [step for step, _ in result.frames], "seconds": round(result.seconds, 3),
    }


def output_folder(out: Path) -> Path:
    """``out`` as a folder, created if missing; ``InputError`` if it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: expected a folder, found a file")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_outputs(experiment: PointCloudExperiment, result: DeformationResult, out: Path) -> dict[str, Path]:
    """Write the frames, ``deformation.gif``, ``points.npy`` and ``summary.json`` under ``out``.

    Only these files (and stale ``frame_NNNNN.png`` of an earlier run) are replaced; nothing else is deleted.
    """
    out = output_folder(out)
    frames = write_frames(result.frames, result.target, out, GIF_NAME)
    np.save(out / POINTS_NAME, result.points)
    (out / SUMMARY_NAME).write_text(json.dumps(summary(experiment, result), indent=2) + "\n", encoding="utf-8")
    return {"frames": out, "first_frame": frames[0], "gif": out / GIF_NAME, "points": out / POINTS_NAME,
            "summary": out / SUMMARY_NAME}
