"""`raytopo train CONFIG.yaml [--set key=value ...]`: validate, then train on Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raytopo.train.config import load_run_config


@dataclass(frozen=True)
class TrainArgs:
    config: Path
    overrides: tuple[str, ...] = field(default_factory=tuple)
    address: str | None = None
    resume: bool = False


def run_train(args: TrainArgs) -> int:
    from raytopo.train.trainer import run_training

    run = load_run_config(args.config, args.overrides)  # every config error surfaces before Ray starts
    outcome = run_training(run, address=args.address, resume=args.resume)
    print(f"trained {run.family} for {outcome.metrics.get('step', '?')} steps; "
          f"final loss {outcome.metrics.get('loss', float('nan')):.4g}")
    print(f"checkpoint: {outcome.checkpoint}")
    print(f"run outputs: {outcome.location}")
    print(f"tensorboard: tensorboard --logdir {outcome.run_dir / 'tensorboard'}")
    return 0
