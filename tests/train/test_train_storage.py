"""A storage URI (here file://) receives checkpoints and TensorBoard logs, and --resume reads them back."""

import json

from raytopo.train.config import parse_run_config
from raytopo.train.storage import is_uri, latest_checkpoint, run_location
from raytopo.train.trainer import run_training
from train_helpers import tiny_config


def test_uri_storage_holds_the_run_and_resumes(ray_local, tmp_path, capfd):
    store = tmp_path / "bucket"
    uri = f"file://{store}"
    assert is_uri(uri) and run_location(uri, "r") == f"{uri}/r"
    config = tiny_config(uri, "r", family="adm_t", train={"steps": 2, "checkpoint_every": 2})
    first = run_training(parse_run_config(config))
    assert first.location == f"{uri}/r"
    states = list((store / "r").glob("**/state.json"))
    assert [json.loads(p.read_text())["step"] for p in states] == [2]
    assert list((store / "r" / "tensorboard").glob("events.out.tfevents.*"))

    downloaded = latest_checkpoint(uri, "r")
    assert downloaded is not None and json.loads((downloaded / "state.json").read_text())["step"] == 2
    config["train"]["steps"] = 4
    resumed = run_training(parse_run_config(config), resume=True)
    assert resumed.metrics["step"] == 4
    assert "resuming at step 3/4" in capfd.readouterr().out
    assert max(json.loads(p.read_text())["step"] for p in (store / "r").glob("**/state.json")) == 4


def test_a_relative_storage_path_is_resolved_on_the_driver(ray_local, tmp_path, monkeypatch):
    """With a real Ray Train worker (whose working directory Ray changes), a relative ray.storage_path still puts
    checkpoints and TensorBoard events under the driver's folder."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config("relative_runs", "rel", family="adm_t", train={"steps": 2, "checkpoint_every": 2},
                         ray={"num_workers": 1, "cpus_per_worker": 1})
    outcome = run_training(parse_run_config(config))
    run_dir = tmp_path / "relative_runs" / "rel"
    assert outcome.run_dir == run_dir
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert [json.loads(p.read_text())["step"] for p in run_dir.glob("**/state.json")] == [2]
