"""Synthetic Shapes: the file-name label equals the Betti numbers of the written mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from raytopo.data.labels import parse_label
from raytopo.data.shapes import SHAPE_KINDS, ShapesConfig, generate_shape_mask, write_shapes_dataset
from raytopo.errors import ConfigError, InputError
from raytopo.topology.betti import betti_numbers

N_PER_CASE = 40


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _check_mask(mask: np.ndarray, size: int) -> None:
    assert mask.dtype == np.uint8
    assert mask.shape == (size, size)
    assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("dim", ["0", "1", "both"])
def test_filename_label_equals_betti_numbers(tmp_path: Path, dim: str, size: int) -> None:
    max_count = 4 if size == 32 else 7
    config = ShapesConfig(dim=dim, size=size, max_count=max_count, min_count=0, seed=size)
    paths = write_shapes_dataset(config, N_PER_CASE, tmp_path)
    assert len(paths) == N_PER_CASE
    convention = "two_counts" if dim == "both" else "count"
    seen = set()
    for path in paths:
        mask = _load(path)
        _check_mask(mask, size)
        counts = parse_label(path, convention).counts
        four, eight = betti_numbers(mask, connectivity=4), betti_numbers(mask, connectivity=8)
        seen.add(counts)
        if dim == "0":
            assert (four.components, eight.components, four.holes) == (counts[0], counts[0], 0), path.name
        elif dim == "1":
            assert (four.holes, four.components, eight.components) == (counts[0], counts[0], counts[0]), path.name
        else:
            assert (four.components, eight.components, four.holes) == (counts[0], counts[0], counts[1]), path.name
    assert len(seen) > 3  # labels actually vary


def test_thick_outlines_and_large_images(tmp_path: Path) -> None:
    config = ShapesConfig(dim="both", size=128, max_count=6, seed=3)
    assert config.width == 2
    for path in write_shapes_dataset(config, 6, tmp_path):
        u, v = parse_label(path, "two_counts").counts
        mask = _load(path)
        assert betti_numbers(mask, 4) == betti_numbers(mask, 8)
        assert (betti_numbers(mask).components, betti_numbers(mask).holes) == (u, v)


@pytest.mark.parametrize("dim", ["0", "1"])
def test_objects_name_kind_and_count(tmp_path: Path, dim: str) -> None:
    config = ShapesConfig(dim=dim, size=64, max_count=5, objects=True, seed=7)
    kinds = set()
    for path in write_shapes_dataset(config, 30, tmp_path):
        label = parse_label(path, "count_object")
        kinds.add(label.object_name)
        mask = _load(path) > 128
        betti = betti_numbers(mask, 4)
        assert (betti.holes if dim == "1" else betti.components) == label.counts[0]
        if label.object_name == "rectangle" and dim == "0":  # axis-aligned: every component fills its box
            labelled, _ = ndimage.label(mask)
            for box in ndimage.find_objects(labelled):
                assert mask[box].all()
        if label.object_name == "circle" and dim == "0":  # 4-fold symmetric
            labelled, _ = ndimage.label(mask)
            for box in ndimage.find_objects(labelled):
                assert np.array_equal(mask[box], np.rot90(mask[box]))
    assert kinds == set(SHAPE_KINDS)


def test_deterministic_by_seed_and_index(tmp_path: Path) -> None:
    config = ShapesConfig(dim="both", size=32, max_count=3, seed=11)
    first = write_shapes_dataset(config, 8, tmp_path / "a")
    again = write_shapes_dataset(config, 8, tmp_path / "b")
    prefix = write_shapes_dataset(config, 3, tmp_path / "c")
    other = write_shapes_dataset(ShapesConfig(dim="both", size=32, max_count=3, seed=12), 8, tmp_path / "d")
    assert [p.name for p in first] == [p.name for p in again]
    assert all(np.array_equal(_load(p), _load(q)) for p, q in zip(first, again))
    assert [p.name for p in prefix] == [p.name for p in first[:3]]
    assert all(np.array_equal(_load(p), _load(q)) for p, q in zip(prefix, first))
    assert any(not np.array_equal(_load(p), _load(q)) for p, q in zip(first, other))


def test_file_names_follow_convention(tmp_path: Path) -> None:
    names = [p.name for p in write_shapes_dataset(ShapesConfig(dim="0", size=32, max_count=2), 3, tmp_path / "a")]
    assert all(n.endswith(f"_{i:04d}.png") and n.count("_") == 1 for i, n in enumerate(names))
    both = [p.name for p in write_shapes_dataset(ShapesConfig(dim="both", size=32, max_count=2), 3, tmp_path / "b")]
    assert all(n.count("_") == 2 for n in both)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging directory left


def test_zero_count_gives_empty_mask(tmp_path: Path) -> None:
    paths = write_shapes_dataset(ShapesConfig(dim="1", size=32, max_count=0, min_count=0), 3, tmp_path)
    assert all(p.name.startswith("0_") and not _load(p).any() for p in paths)
    assert not generate_shape_mask((0, 0), np.random.default_rng(0), 32, "both").any()


def test_generate_shape_mask_direct() -> None:
    mask = generate_shape_mask((3, 2), np.random.default_rng(0), 48, "both", line_width=1)
    _check_mask(mask, 48)
    assert (betti_numbers(mask).components, betti_numbers(mask).holes) == (3, 2)
    triangles = generate_shape_mask(4, np.random.default_rng(1), 64, 1, kind="triangle")
    assert betti_numbers(triangles).holes == 4


def test_count_that_cannot_fit_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        write_shapes_dataset(ShapesConfig(dim="0", size=32, max_count=40), 2, tmp_path / "out")
    assert "max_count" in str(info.value) and "size=32" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": "2"},
        {"dim": True},
        {"size": 8},
        {"size": 32.0},
        {"min_count": 3, "max_count": 2},
        {"min_count": -1},
        {"objects": True, "dim": "both"},
        {"gap": 0},
        {"line_width": 0},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    base = {"dim": "0", "size": 32, "max_count": 2}
    with pytest.raises(ConfigError):
        ShapesConfig(**{**base, **kwargs})


def test_int_dim_is_normalised() -> None:
    assert ShapesConfig(dim=1, size=32, max_count=2).dim == "1"


def test_bad_counts_and_kind() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="holes <= components"):
        generate_shape_mask((1, 2), rng, 32, "both")
    with pytest.raises(InputError):
        generate_shape_mask(2, rng, 32, "both")
    with pytest.raises(InputError):
        generate_shape_mask(-1, rng, 32, "0")
    with pytest.raises(InputError, match="kind"):
        generate_shape_mask(1, rng, 32, "0", kind="hexagon")


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError, match=str(tmp_path)):
        write_shapes_dataset(ShapesConfig(dim="0", size=32, max_count=2), 2, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
