"""tune_spaces/equivariant.yaml: it validates, every searched value reaches the trial's run config or sampler,
the metric is one the family reports, and a bad value in the same space is rejected naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raytopo.diffusion.samplers import SAMPLERS
from raytopo.errors import ConfigError
from raytopo.registry import get_family
from raytopo.tune.space import load_space, parse_space, reported_metrics

SPACE = Path(__file__).resolve().parents[2] / "tune_spaces" / "equivariant.yaml"


@pytest.fixture(scope="module")
def space():
    return load_space(SPACE)


def test_space_validates_and_ranks_by_a_reported_evaluation_metric(space):
    assert space.family == "equivariant" and space.mode == "min"
    training, evaluation = reported_metrics(space.run_config({}))
    assert space.metric in evaluation and space.scheduler.metric in training


@pytest.mark.parametrize("key", ["model.group", "model.mechanism", "model.regulariser.weight"])
def test_every_model_value_reaches_the_parsed_family_settings(space, key):
    family = get_family("equivariant")
    attribute = {"model.group": "group", "model.mechanism": "mechanism"}
    for value in space.params[key].representatives():
        parsed = family.parse(space.run_config({key: value}))
        got = parsed.regulariser.weight if key == "model.regulariser.weight" else getattr(parsed, attribute[key])
        assert got == value
        # every searched group is a subgroup of the data's group, so the data is invariant under it
        assert parsed.group in {"Z2", "C4", "D4"} and space.run_config({key: value}).data.group == "D4"


def test_every_sampler_value_reaches_the_trial_settings(space):
    for name in space.params["sample.name"].representatives():
        assert name in SAMPLERS and space.sampler({"sample.name": name}).name == name
    for steps in space.params["sample.steps"].representatives():
        assert space.sampler({"sample.steps": steps}).steps == steps


@pytest.mark.parametrize("key,value", [("model.mechanism", "lifted"), ("model.group", "C8"),
                                       ("sample.name", "plms"), ("model.regulariser.weight", -1.0)])
def test_a_bad_value_in_the_same_space_is_rejected_naming_the_key(key, value):
    data = yaml.safe_load(SPACE.read_text())
    data["params"][key] = {"choice": [value]}
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_space(data, root=SPACE.parent)
