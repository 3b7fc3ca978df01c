"""`raytopo study SPEC.yaml [--resume] [--address ...] [--storage DIR]`: variants x seeds with intervals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyArgs:
    spec: Path
    resume: bool = False
    address: str | None = None
    storage: str | None = None


def run_study_command(args: StudyArgs) -> int:
    """Validate the study (before Ray starts), run it, write and print its tables; 1 if no trial finished."""
    from raytopo.tune.study import load_study, markdown, run_study, write_study

    study = load_study(args.spec, storage_path=args.storage)
    trials, folder = run_study(study, address=args.address, resume=args.resume)
    written = write_study(trials, study, folder)
    print(markdown(trials, study))
    print("written: " + ", ".join(str(path) for path in written.values()))
    finished = sum(trial.status == "done" for trial in trials)
    if not finished:
        print(f"no trial of {len(trials)} finished")
        return 1
    return 0
