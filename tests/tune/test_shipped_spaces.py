"""Every search space shipped in tune_spaces/ validates and one trial fits the 2-CPU laptop the README targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytopo.tune.runner import trial_cpus
from raytopo.tune.space import load_space

SPACES = sorted((Path(__file__).resolve().parents[2] / "tune_spaces").glob("*.yaml"))


def test_spaces_are_shipped() -> None:
    assert {path.stem for path in SPACES} >= {"tdn_topo", "tdn_sampler", "equivariant", "topovae"}


@pytest.mark.parametrize("path", SPACES, ids=lambda path: path.stem)
def test_one_trial_fits_two_cpus(path: Path) -> None:
    assert trial_cpus(load_space(path)) <= 2.0


STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda path: path.stem)
def test_shipped_studies_validate_and_two_trials_share_two_cpus(path: Path) -> None:
    """Each shipped study parses (variants, seeds, metrics and curves checked) and runs 2 trials at a time here."""
    from raytopo.tune.study import load_study

    study = load_study(path)
    assert len(study.seeds) >= (5 if "topovae" in path.stem else 3)
    assert trial_cpus(study.space) <= 1.0
