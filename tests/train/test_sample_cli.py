"""`raytopo sample` on a checkpoint trained here, then `raytopo evaluate` on what it wrote.

The checkpoint is a count-conditioned ``adm_t`` (sampling is the same for ``tdn``; this skips the pool's start-up).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytopo import cli
from raytopo.train.config import parse_run_config
from raytopo.train.trainer import run_training

from train_helpers import tiny_config

SIDE = 16


@pytest.fixture(scope="module")
def checkpoint(ray_local, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("trained")
    run = parse_run_config(tiny_config(storage, name="sampled", family="adm_t",
                                       train={"steps": 2, "checkpoint_every": 2}))
    return run_training(run).checkpoint


def _sample(checkpoint: Path, out: Path, seed: int = 0) -> int:
    return cli.main(["sample", str(checkpoint), "--counts", "1,3", "--per-count", "2", "--steps", "4",
                     "--seed", str(seed), "--batch-size", "3", "--out", str(out)])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sample_writes_named_masks_and_a_grid_deterministically(checkpoint, tmp_path, capsys):
    first, second, other_seed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _sample(checkpoint, first) == 0
    assert "wrote 4 samples" in capsys.readouterr().out

    # TDN names: target count, then a running index (two per count, in the order asked for).
    masks = sorted(p.name for p in first.glob("*.png"))
    assert masks == ["1_00000.png", "1_00001.png", "3_00002.png", "3_00003.png"]
    for name in masks:
        with Image.open(first / name) as image:
            assert image.size == (SIDE, SIDE) and image.mode == "L"
    # The grid: 4 samples in 2 x 2 cells of 16 px with 1-px gaps.
    with Image.open(first / "grid" / "grid.png") as grid:
        assert grid.size == (2 * (SIDE + 1) + 1, 2 * (SIDE + 1) + 1)
        cells = np.asarray(grid)
    with Image.open(first / "3_00003.png") as last:
        np.testing.assert_array_equal(cells[1 + SIDE + 1:1 + 2 * SIDE + 1, 1 + SIDE + 1:1 + 2 * SIDE + 1],
                                      np.asarray(last))

    # The same seed gives byte-identical files (with batches of 3, so the per-batch seed offset is exercised);
    # another seed gives other images.
    assert _sample(checkpoint, second) == 0
    assert _files(first) == _files(second)
    assert _sample(checkpoint, other_seed, seed=1) == 0
    assert _files(other_seed).keys() == _files(first).keys()
    assert any(_files(other_seed)[name] != _files(first)[name] for name in masks)

    # `raytopo evaluate` reads the masks (not the grid sub-folder) and labels them from their names.
    report = tmp_path / "metrics.json"
    assert cli.main(["evaluate", str(first), "--json", "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["n"] == 4
    histogram = result["measures"]["dim0_conn4"]["histogram"]
    assert {int(k): v["true"] for k, v in histogram.items() if v["true"]} == {1: 2, 3: 2}



def test_score_agrees_with_sampling_then_evaluating_the_files(checkpoint, tmp_path):
    """`raytopo score` (in memory) and `raytopo sample` + `raytopo evaluate` (via PNG files) give one result."""
    from raytopo.commands.evaluate import flat_metrics

    flags = ["--per-count", "2", "--steps", "4", "--seed", "5", "--batch-size", "3"]
    assert cli.main(["score", str(checkpoint), *flags, "--out", str(tmp_path / "score.json")]) == 0
    scored = json.loads((tmp_path / "score.json").read_text())
    assert cli.main(["sample", str(checkpoint), "--counts", "1,2,3", *flags, "--out", str(tmp_path / "s")]) == 0
    assert cli.main(["evaluate", str(tmp_path / "s"), "--out", str(tmp_path / "evaluated.json")]) == 0
    evaluated = flat_metrics(json.loads((tmp_path / "evaluated.json").read_text()))
    assert scored["family"] == "adm_t" and scored["sampler"]["seed"] == 5
    assert scored["metrics"]["n"] == evaluated["n"] == 6
    for key in ("dim0_conn4_accuracy", "dim0_conn4_mae", "dim0_conn8_accuracy"):
        assert scored["metrics"][key] == pytest.approx(evaluated[key])


def test_score_rejects_a_bad_evaluation_size(checkpoint, capsys):
    assert cli.main(["score", str(checkpoint), "--per-count", "0"]) == 2
    assert "--per-count: expected >= 1" in capsys.readouterr().err
