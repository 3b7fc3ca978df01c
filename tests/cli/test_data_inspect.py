"""`raytopo data inspect`: the rows it lists are the rows training consumes (checked against a real run's row
trace), for any worker and from any resume step, without decoding an image or starting Ray."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from raytopo.cli import main
from raytopo.commands.data import ShapesArgs, run_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import tiny_config  # noqa: E402


def _inspect(capsys, *args: str) -> dict:
    capsys.readouterr()                       # drop what ran before
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def config(tmp_path) -> Path:
    run_shapes(ShapesArgs(dim="0", n=40, size=16, max_count=3, min_count=1, objects=False, seed=0,
                          out=tmp_path / "masks"))
    plain = tiny_config(tmp_path / "runs", name="inspected",
                        data={"source": "folder", "path": str(tmp_path / "masks"), "image_size": 16,
                              "trace_rows": True, "eval_fraction": 0.1, "augment": {"hflip": True}},
                        train={"steps": 4, "checkpoint_every": 4})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(plain))
    return path


def test_inspect_lists_the_rows_a_run_then_trains_on(config, capsys, ray_local):
    from raytopo.train.config import load_run_config
    from raytopo.train.trainer import run_training

    report = _inspect(capsys, str(config), "--batches", "4")
    assert report["splits"] == {"train": 36, "eval": 4, "judge": 0} and report["order"] == "full"
    assert [len(batch["ids"]) for batch in report["batches"]] == [8] * 4
    for batch in report["batches"]:
        assert batch["labels"] == [[int(name.split("_")[0])] for name in batch["ids"]]
    run = load_run_config(config)
    run_training(run)
    trace = [json.loads(line) for line in (run.run_dir / "data_trace" / "rank-0.jsonl").read_text().splitlines()]
    assert [step["ids"] for step in trace] == [batch["ids"] for batch in report["batches"]]
    resumed = _inspect(capsys, str(config), "--batches", "1", "--resume-step", "2")
    assert resumed["batches"][0]["ids"] == trace[2]["ids"] and resumed["batches"][0]["step"] == 3


def test_ranks_see_disjoint_rows_and_splits_list_their_ids(config, capsys):
    ranks = [_inspect(capsys, str(config), "--world", "2", "--rank", str(rank), "--batches", "2") for rank in (0, 1)]
    ids = [{i for batch in report["batches"] for i in batch["ids"]} for report in ranks]
    assert len(ids[0]) == len(ids[1]) == 16 and not ids[0] & ids[1]
    held_out = _inspect(capsys, str(config), "--split", "eval")
    assert held_out["split"] == "eval" and len(held_out["ids"]) == 4
    assert not set(held_out["ids"]) & (ids[0] | ids[1])


def test_inspect_imports_no_ray_and_refuses_what_has_no_rows(config, capsys):
    import subprocess

    code = (f"import sys; from raytopo.cli import main; main(['data', 'inspect', {str(config)!r}, '--batches', '1']);"
            " print('ray imported' if 'ray' in sys.modules else 'no ray')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("data: folder ") and "step 1 (epoch 0): labels {" in done.stdout
    assert done.stdout.strip().endswith("no ray")
    assert main(["data", "inspect", "configs/tdn_shapes.yaml", "--split", "eval"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--split eval: source 'shapes' has no rows to list" in error
    assert main(["data", "inspect", str(config), "--rank", "2", "--world", "2"]) == 2
    assert "--rank: expected 0 <= rank < 2" in capsys.readouterr().err
