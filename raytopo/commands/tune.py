"""`raytopo tune SPACE.yaml [--num-samples N] [--resume] [--address ...] [--storage DIR]`: a Ray Tune sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TuneArgs:
    space: Path
    num_samples: int | None = None
    resume: bool = False
    address: str | None = None
    storage: str | None = None


def run_tune(args: TuneArgs) -> int:
    """Validate the space (before Ray starts), run the sweep, print the table and where the best config is."""
    from raytopo.tune.runner import format_table, run_sweep
    from raytopo.tune.space import load_space

    space = load_space(args.space, num_samples=args.num_samples, storage_path=args.storage)
    outcome = run_sweep(space, address=args.address, resume=args.resume)
    print(format_table(outcome.rows, space))
    failed = sum(row.status.startswith("error") for row in outcome.rows)
    print(f"{len(outcome.rows)} trials ({failed} failed) in {outcome.experiment_dir}")
    if outcome.best is None:
        print(f"no trial reported {space.metric}; no best config written")
        return 1
    print(f"best: trial {outcome.best.trial_id}, {space.metric} = {outcome.best.metric:.6g}")
    print(f"best config: {outcome.best_config}  (raytopo train {outcome.best_config})")
    return 0
