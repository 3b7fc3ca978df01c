"""tune_spaces/topovae.yaml: it loads, every searched value is accepted by the run config, and each searched weight
really lands on its own regulariser (truth: the reference's weight order bottleneck0 ... density)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytopo.errors import ConfigError
from raytopo.registry import get_family
from raytopo.topology.regularisers import LOSS_NAMES
from raytopo.tune.space import load_space, parse_space, reported_metrics

SPACE = Path(__file__).resolve().parents[2] / "tune_spaces" / "topovae.yaml"


def test_space_loads_and_covers_the_seven_weights():
    space = load_space(SPACE)  # validates every param's representative values through parse_run_config
    assert space.family == "topovae"
    assert {f"model.topo.weights.{name}" for name in LOSS_NAMES} <= set(space.params)
    training, evaluation = reported_metrics(space.run_config({}))
    assert space.metric in evaluation and "topovae_rec" in training


@pytest.mark.parametrize("index,name", list(enumerate(LOSS_NAMES)))
def test_each_searched_weight_sets_its_own_regulariser(index, name):
    space = load_space(SPACE)
    family = get_family("topovae")
    value = 7.0 if name.startswith(("bottleneck", "persentropy", "density")) else 0.7
    run = space.run_config({f"model.topo.weights.{name}": value})
    weights = family.parse(run).topo.weights
    assert weights[index] == value
    base = family.parse(space.run_config({})).topo.weights
    assert [w for i, w in enumerate(weights) if i != index] == [w for i, w in enumerate(base) if i != index]


def test_every_param_value_is_accepted():
    space = load_space(SPACE)
    for key, distribution in space.params.items():
        for value in distribution.representatives():
            space.run_config({key: value})  # raises ConfigError if rejected


def test_a_bad_weight_name_is_rejected_before_any_trial():
    data = {"base": str(SPACE.parent / "../configs/topovae.yaml"), "metric": "topovae_bce", "mode": "min",
            "fixed": {"model.topo.weights": {"bottleneck0": 10}},
            "params": {"model.topo.weights.bottleneck3": {"choice": [0, 1]}}}
    with pytest.raises(ConfigError, match="bottleneck3"):
        parse_space(data)
