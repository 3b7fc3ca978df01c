"""Config conversion: YAML/dicts <-> nested dataclasses, overrides, and one-line errors naming the field."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from raytopo.config import apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from raytopo.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    dims: tuple[int, ...] = (0,)
    mode: Literal["match", "count"] = "match"

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"lr: expected > 0, got {self.lr}")


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    steps: int = 10
    flag: bool = False
    path: str | None = None
    inner: Inner = field(default_factory=Inner)
    resources: dict[str, float] = field(default_factory=dict)


def test_round_trip_through_yaml(tmp_path):
    config = Outer(name="x", steps=3, flag=True, inner=Inner(lr=0.5, dims=(0, 1), mode="count"),
                   resources={"persistence": 1.0})
    path = dump_yaml(config, tmp_path / "c.yaml")
    assert from_dict(Outer, load_yaml(path)) == config


def test_yaml_scalars_are_coerced_to_annotated_types():
    config = from_dict(Outer, {"steps": 5.0, "flag": "true", "inner": {"lr": "1e-3", "dims": 1}})
    assert config.steps == 5 and config.flag is True
    assert config.inner.lr == 1e-3 and config.inner.dims == (1,)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stepz": 1}, "stepz: unknown setting; allowed: flag, inner, name, path, resources, steps"),
        ({"steps": 1.5}, "steps: expected a whole number, got 1.5"),
        ({"flag": "maybe"}, "flag: expected true or false"),
        ({"inner": {"mode": "topc"}}, "inner.mode: expected one of 'match', 'count', got 'topc'"),
        ({"inner": {"lr": -1}}, "inner.lr: expected > 0, got -1"),
        ({"inner": {"bogus": 1}}, "inner.bogus: unknown setting"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_bad_values_name_the_field(data, message):
    with pytest.raises(ConfigError) as error:
        from_dict(Outer, data)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_overrides_edit_nested_keys_without_touching_the_input():
    base = {"inner": {"lr": 0.1}}
    result = apply_overrides(base, ["inner.lr=2e-5", "inner.dims=[0, 1]", "steps=7", "name=abc"])
    assert base == {"inner": {"lr": 0.1}}
    assert from_dict(Outer, result) == Outer(name="abc", steps=7, inner=Inner(lr=2e-5, dims=(0, 1)))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(base, ["inner.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"steps": 1}, ["steps.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_yaml(listed)


def test_to_dict_is_plain():
    assert to_dict(Outer(inner=Inner(dims=(0, 1)))) == {
        "name": "run", "steps": 10, "flag": False, "path": None,
        "inner": {"lr": 1e-4, "dims": [0, 1], "mode": "match"}, "resources": {},
    }
