"""File-name label parsing (TDN conventions, docs/references.md, TDN 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytopo.data.labels import Label, LabelConvention, as_convention, object_index_map, parse_label
from raytopo.errors import ConfigError, InputError


@pytest.mark.parametrize(
    ("name", "convention", "expected"),
    [
        ("3_0001.png", "count", Label((3.0,))),
        ("shapes/sub/0_17.jpg", "count", Label((0.0,))),
        ("2.5_x.png", "count", Label((2.5,))),
        ("1e1_x.png", "count", Label((10.0,))),
        ("3_1_0001.png", "count", Label((3.0,))),  # c is the text before the first underscore
        ("4_img_01.png", "count", Label((4.0,))),  # the id may contain underscores
        ("3_1_0001.png", "two_counts", Label((3.0, 1.0))),
        ("0_0_a_b.tif", "two_counts", Label((0.0, 0.0))),
        ("3_circle_0001.png", "count_object", Label((3.0,), "circle")),
        ("2_dog_a_b.png", "count_object", Label((2.0,), "dog")),
        ("3_0001.png", LabelConvention.COUNT, Label((3.0,))),
    ],
)
def test_parse_label_valid(name: str, convention: str, expected: Label) -> None:
    assert parse_label(Path(name), convention) == expected
    assert parse_label(name, convention) == expected


def test_counts_are_floats_and_negative_zero_is_zero() -> None:
    label = parse_label("-0_1.png", "count")
    assert label.counts == (0.0,)
    assert str(label.counts[0]) == "0.0"
    assert all(isinstance(c, float) for c in parse_label("3_1_x.png", "two_counts").counts)


@pytest.mark.parametrize(
    ("name", "convention"),
    [
        ("abc.png", "count"),
        ("3.png", "count"),
        ("3_.png", "count"),
        ("_0001.png", "count"),
        ("x_0001.png", "count"),
        ("nan_0001.png", "count"),
        ("inf_0001.png", "count"),
        ("1e400_0001.png", "count"),
        (" 3_0001.png", "count"),
        ("3_0001.png", "two_counts"),
        ("3__0001.png", "two_counts"),
        ("3_x_0001.png", "two_counts"),
        ("3_circle.png", "count_object"),
        ("3_1_0001.png", "count_object"),  # a u_v name read as count_object
        ("circle_3_0001.png", "count_object"),
    ],
)
def test_parse_label_mismatch_names_file_and_pattern(name: str, convention: str) -> None:
    path = Path("shapes") / name
    with pytest.raises(InputError) as info:
        parse_label(path, convention)
    message = str(info.value)
    assert str(path) in message
    assert as_convention(convention).pattern in message
    assert convention in message
    assert "\n" not in message


@pytest.mark.parametrize(("name", "convention"), [("-1_0001.png", "count"), ("2_-1_0001.png", "two_counts")])
def test_negative_counts_rejected(name: str, convention: str) -> None:
    with pytest.raises(InputError, match="non-negative"):
        parse_label(name, convention)


def test_count_convention_message_example() -> None:
    with pytest.raises(InputError) as info:
        parse_label("shapes/abc.png", "count")
    assert str(info.value) == "shapes/abc.png: expected '<count>_<id>.<ext>' (count convention), e.g. '3_0001.png'"


def test_unknown_convention_is_config_error() -> None:
    with pytest.raises(ConfigError, match="convention"):
        parse_label("3_0001.png", "counts")


def test_num_counts() -> None:
    assert [c.num_counts for c in LabelConvention] == [1, 2, 1, 0]


def test_object_index_map_sorted_positions_and_json_round_trip() -> None:
    names = ["triangle", "circle", None, "rectangle", "circle"]
    mapping = object_index_map(names)
    assert mapping == {"circle": 0, "rectangle": 1, "triangle": 2}
    assert json.loads(json.dumps(mapping)) == mapping
    assert object_index_map([]) == {}
