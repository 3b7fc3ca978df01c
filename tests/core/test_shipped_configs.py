"""Every run config in configs/ is valid as shipped (the README points users at them)."""

from pathlib import Path

import pytest

from raytopo.train.config import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses(path):
    run = load_run_config(path)
    assert run.family and run.train.steps >= 1


def test_the_tdn_config_fine_tunes_the_shipped_base_with_the_demo_recipe():
    from raytopo.commands.demo import TOPO

    run = load_run_config(Path(CONFIGS[0]).parent / "tdn_shapes.yaml")
    assert run.init_from == "pretrained:adm_t_shapes32"
    assert run.model["topo"] == TOPO
