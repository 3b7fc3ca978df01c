"""`raytopo pointcloud PRESET|custom --out DIR`: Topo-GEN's point-cloud deformation demo.

Writes ``frame_NNNNN.png``, ``deformation.gif``, ``points.npy`` and ``summary.json`` under ``--out`` and prints
one verdict line. Exit status: 0 when the final cloud has the target's clusters and loops, 1 when it does not,
2 for bad input (a bad file, shape or setting; printed as one line by ``raytopo.cli``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raytopo.errors import ConfigError

REACHED, NOT_REACHED = 0, 1


@dataclass(frozen=True)
class PointCloudArgs:
    preset: str
    out: Path
    points: Path | None = None
    target_points: Path | None = None
    steps: int | None = None
    lr: float | None = None
    weights: str | None = None
    frame_every: int | None = None
    seed: int = 0
    scale: float | None = None
    push0: bool = True


def parse_weights(text: str) -> tuple[float, ...]:
    """``"w1,...,w7"`` as floats, else ``ConfigError`` naming ``--weights`` (the config checks the count)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--weights: expected 7 comma-separated numbers w1,...,w7, got {text!r}") from None


def run_pointcloud(args: PointCloudArgs) -> int:
    from raytopo.experiments.pointcloud import PointCloudExperiment, output_folder, run_experiment, write_outputs

    experiment = PointCloudExperiment.for_preset(
        args.preset, weights=parse_weights(args.weights) if args.weights is not None else None,
        points_file=args.points, target_file=args.target_points, steps=args.steps, lr=args.lr,
        frame_every=args.frame_every, seed=args.seed, scale=args.scale, push0_fallback=args.push0,
    )
    output_folder(args.out)  # fail before the run, not after it
    result = run_experiment(experiment)
    paths = write_outputs(experiment, result, args.out)
    check = result.check
    verdict = "reached" if check.reached else "NOT reached"
    first = "" if result.reached_at_step is None else f" (first at step {result.reached_at_step})"
    print(f"{args.preset}: target {verdict}: {check.final.clusters} cluster(s), {check.final.loops} loop(s) "
          f"vs target {check.target.clusters}, {check.target.loops} at scale {check.scale:.3g} after "
          f"{experiment.steps} steps{first}; push0 on {result.push0_steps} step(s); {result.seconds:.1f} s; "
          f"wrote {paths['gif']} and {len(result.frames)} frames")
    return REACHED if check.reached else NOT_REACHED
