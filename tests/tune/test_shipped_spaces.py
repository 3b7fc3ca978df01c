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
