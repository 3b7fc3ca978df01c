"""Search-space parsing and validation: every bad space fails with one line naming the key, before Ray starts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml

from raytopo.errors import ConfigError
from raytopo.train.config import parse_run_config
from raytopo.tune.runner import asha_settings, format_table, sort_rows, TrialRow
from raytopo.tune.space import load_space, parse_distribution, parse_space, reported_metrics

from tune_helpers import tiny_space

REPO = Path(__file__).resolve().parents[2]


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_space(data)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted((REPO / "tune_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_validates(path):
    space = load_space(path)
    assert space.name == path.stem and space.params
    parse_run_config(space.base)  # the base every trial starts from is a valid run config


def test_space_parses_to_tune_distributions(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    data = tiny_space(tmp_path, params={
        "model.topo.weight": {"loguniform": [1.0e-4, 1.0e-1]},
        "train.lr": {"uniform": ["1e-4", 1.0e-3]},          # YAML 1.1 reads 1e-4 as text: accepted as a number
        "train.batch_size": {"randint": [2, 5]},
        "model.topo.noisy": {"choice": [True, False]},
        "sample.name": {"grid": ["ddim", "heun"]}})
    space = parse_space(data)
    tune_space = space.param_space()
    assert isinstance(tune_space["model.topo.weight"], Float)
    assert (tune_space["train.lr"].lower, tune_space["train.lr"].upper) == (1e-4, 1e-3)
    assert isinstance(tune_space["train.batch_size"], Integer)
    assert (tune_space["train.batch_size"].lower, tune_space["train.batch_size"].upper) == (2, 5)
    assert isinstance(tune_space["model.topo.noisy"], Categorical)
    assert tune_space["sample.name"] == {"grid_search": ["ddim", "heun"]}
    # A trial's sampled values land in its run config and sampler; sample.* never reaches the run config.
    trial = {"model.topo.weight": 0.02, "train.lr": 3e-4, "train.batch_size": 3, "model.topo.noisy": False,
             "sample.name": "heun"}
    run = space.run_config(trial, storage_path=str(tmp_path / "trial"), name="train")
    assert run.model["topo"]["weight"] == 0.02 and run.model["topo"]["noisy"] is False
    assert run.train.lr == 3e-4 and run.train.batch_size == 3
    assert run.run_dir == (tmp_path / "trial" / "train").resolve()
    assert "sample" not in run.to_plain()
    assert space.sampler(trial).name == "heun" and space.sampler(trial).steps == 5
    # resources go into the ray section of every trial
    assert (run.ray.num_workers, run.ray.cpus_per_worker, run.ray.persistence_actors) == (1, 0.5, 1)


def test_base_path_is_relative_to_the_space_file(tmp_path):
    folder = tmp_path / "spaces"
    folder.mkdir()
    data = tiny_space(tmp_path)
    del data["name"]  # the file's stem names the sweep
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data.pop("base")))
    (folder / "mine.yaml").write_text(yaml.safe_dump({**data, "base": "../run.yaml"}))
    space = load_space(folder / "mine.yaml", num_samples=3, storage_path=str(tmp_path / "elsewhere"))
    assert space.name == "mine" and space.num_samples == 3 and space.storage_path == str(tmp_path / "elsewhere")
    assert space.base["data"]["image_size"] == 16


@pytest.mark.parametrize("params, named", [
    ({"model.topo.wieght": {"choice": [0.1]}}, "params.model.topo.wieght"),          # unknown key
    ({"train.lrate": {"loguniform": [1e-4, 1e-3]}}, "params.train.lrate"),
    ({"train.steps.x": {"choice": [1]}}, "params.train.steps.x"),                    # a value, not a section
    ({"train.lr": {"normal": [0, 1]}}, "params.train.lr"),                           # unknown distribution
    ({"train.lr": {"uniform": [1e-3]}}, "params.train.lr"),                          # wrong arity
    ({"train.lr": {"uniform": [1e-3, 1e-4]}}, "params.train.lr"),                    # low >= high
    ({"train.lr": {"loguniform": [0, 1e-3]}}, "params.train.lr"),                    # log of 0
    ({"train.batch_size": {"randint": [1.5, 4]}}, "params.train.batch_size"),        # randint of non-integers
    ({"train.lr": {"choice": []}}, "params.train.lr"),                               # empty choice
    ({"train.lr": [1e-4, 1e-3]}, "params.train.lr"),                                 # not a distribution
    ({"train.lr": {"choice": [1e-3, -1.0]}}, "params.train.lr"),                     # out of range value
    ({"model.topo.weight": {"uniform": [-1.0, 1.0]}}, "params.model.topo.weight"),   # out-of-range bound
    ({"train.steps": {"uniform": [10, 20]}}, "params.train.steps"),                  # int field, float interior
    ({"model.topo.selection": {"choice": ["match", "best"]}}, "params.model.topo.selection"),
    ({"sample.name": {"choice": ["ddim", "pdm"]}}, "params.sample.name"),          # not a registered sampler
    ({"sample.sampler": {"choice": ["ddim"]}}, "params.sample.sampler"),             # the field is sample.name
    ({"sample.schedule": {"choice": ["karras", "linear"]}}, "params.sample.schedule"),
    ({"sample.steps": {"choice": [0]}}, "params.sample.steps"),
    ({"sample.guidance": {"choice": [-1.0]}}, "params.sample.guidance"),          # a scale must be >= 0
])
def test_bad_params_fail_naming_the_key(tmp_path, params, named):
    message = _error(tiny_space(tmp_path, params=params))
    assert message.startswith(named), message


def test_settings_that_clash_together_fail_before_any_trial(tmp_path):
    params = {"model.topo.birth": {"choice": [True, False]}, "model.topo.death": {"choice": [True, False]}}
    message = _error(tiny_space(tmp_path, params=params))
    assert message.startswith("params: the combination") and "birth" in message and "death" in message


@pytest.mark.parametrize("changes, named", [
    ({"metric": "dim0_accuracy"}, "metric"),                      # never reported
    ({"metric": "fid"}, "metric"),
    ({"mode": "maximise"}, "mode"),
    ({"scheduler": "hyperband"}, "scheduler.name"),
    ({"scheduler": {"name": "asha", "metric": "dim0_conn4_accuracy"}}, "scheduler.metric"),
    ({"scheduler": {"name": "asha", "grace_period": 0}}, "scheduler.grace_period"),
    ({"search": "bayesopt"}, "search"),
    ({"num_samples": 0}, "num_samples"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ({"resources": {"num_workers": 0}}, "resources.num_workers"),
    ({"resources": {"gpus": 1}}, "resources.gpus"),
    ({"resources": {"driver_cpus": 0}}, "resources.driver_cpus"),
    ({"eval": {"per_count": 0}}, "eval.per_count"),
    ({"sample": {"steps": 0}}, "sample"),
    ({"params": {}}, "params"),
    ({"base": 3}, "base"),
    ({"fixed": {"train.nope": 1}}, "base: train.nope"),
    ({"schedule": "asha"}, "schedule"),
])
def test_bad_space_settings_fail_naming_the_setting(tmp_path, changes, named):
    message = _error(tiny_space(tmp_path, **changes))
    assert message.startswith(named), message


def test_missing_base_file_is_named(tmp_path):
    message = _error(tiny_space(tmp_path, base="nowhere/run.yaml"))
    assert "nowhere/run.yaml" in message


def test_optuna_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.setitem(sys.modules, "optuna", None)   # `import optuna` now raises ImportError, installed or not
    message = _error(tiny_space(tmp_path, search="optuna"))
    assert message.startswith("search") and "optuna" in message and "raytopo[tune]" in message


def test_metrics_are_what_the_family_reports(tmp_path):
    run = parse_run_config(tiny_space(tmp_path)["base"])
    training, evaluation = reported_metrics(run)
    assert {"mse", "vb", "topo", "loss", "step"} <= training
    assert {"dim0_conn4_accuracy", "dim0_conn4_f1", "dim0_conn4_mae", "dim0_conn8_accuracy"} <= evaluation
    assert not any(key.startswith("dim1") for key in evaluation)  # one count per image: no holes metrics
    two = parse_run_config({**tiny_space(tmp_path)["base"],
                            "data": {"source": "shapes", "image_size": 16, "convention": "two_counts",
                                     "shapes_dim": "both"}})
    assert "dim1_accuracy" in reported_metrics(two)[1]
    for metric in ("loss", "topo", "dim0_conn8_f1"):
        parse_space(tiny_space(tmp_path, metric=metric, mode="min"))


def test_asha_prunes_on_a_training_metric_and_lets_trials_finish(tmp_path):
    space = parse_space(tiny_space(tmp_path, scheduler="asha",
                                   params={"train.steps": {"choice": [4, 40]}}))
    settings = asha_settings(space)
    # The sweep metric is an evaluation key (only in a trial's last result): ASHA falls back to the loss.
    assert (settings["metric"], settings["mode"]) == ("loss", "min")
    assert settings["time_attr"] == "step" and settings["max_t"] == 40 and settings["grace_period"] == 5
    assert settings["stop_last_trials"] is False   # a trial reaching max_t still samples and evaluates
    on_loss = parse_space(tiny_space(tmp_path, scheduler={"name": "asha", "grace_period": 2}, metric="mse",
                                     mode="min"))
    assert asha_settings(on_loss)["metric"] == "mse" and asha_settings(on_loss)["grace_period"] == 2
    too_late = parse_space(tiny_space(tmp_path, scheduler={"name": "asha", "grace_period": 50}))
    with pytest.raises(ConfigError, match="scheduler.grace_period"):
        asha_settings(too_late)


def test_distribution_representatives_cover_bounds_and_interior():
    assert parse_distribution("k", {"randint": [2, 5]}).representatives() == [2, 4]
    low, mid, high = parse_distribution("k", {"loguniform": [1e-4, 1e-2]}).representatives()
    assert (low, high) == (1e-4, 1e-2) and 1e-4 < mid < 1e-2 and mid != math.sqrt(1e-6)
    assert parse_distribution("k", {"grid": [[0], [0, 1]]}).representatives() == [[0], [0, 1]]


def test_table_is_sorted_by_the_metric_with_failures_last(tmp_path):
    space = parse_space(tiny_space(tmp_path))
    rows = [TrialRow("a", {"train.lr": 1e-3, "sample.steps": 4}, 0.2, "done"),
            TrialRow("b", {"train.lr": 5e-4, "sample.steps": 5}, None, "error: InputError: bad"),
            TrialRow("c", {"train.lr": 5e-4, "sample.steps": 4}, 0.9, "done")]
    ordered = sort_rows(rows, "max")
    assert [row.trial_id for row in ordered] == ["c", "a", "b"]
    assert [row.trial_id for row in sort_rows(rows, "min")] == ["a", "c", "b"]
    lines = format_table(ordered, space).splitlines()
    assert lines[0].split() == ["trial", "train.lr", "sample.steps", "dim0_conn4_accuracy", "status"]
    assert lines[1].split()[:5] == ["c", "0.0005", "4", "0.9", "done"]
    assert lines[3].split()[3:] == ["-", "error:", "InputError:", "bad"]


def test_cli_reports_a_bad_space_in_one_line_before_ray_starts(tmp_path, capsys):
    import ray

    from raytopo.cli import main

    data = tiny_space(tmp_path, metric="dim0_accuracy")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["tune", str(path), "--num-samples", "2", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raytopo tune: error: metric: 'dim0_accuracy' is never reported") and "\n" not in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_a_searched_data_value_that_cannot_work_fails_before_ray_starts(tmp_path, capsys):
    """The base is feasible; one grid value of data.max_count cannot fit in the image: found on the driver."""
    import ray

    from raytopo.cli import main

    data = tiny_space(tmp_path, params={"data.max_count": {"grid": [2, 60]}})
    path = tmp_path / "too_many.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raytopo tune: error: data (source shapes, image_size 16): max_count: cannot place 60")
    assert "\n" not in err
    assert not ray.is_initialized() and not (tmp_path / "tune").exists()


def test_an_empty_folder_in_a_searched_data_path_fails_before_ray_starts(tmp_path):
    """Every trial's data is checked on the driver: the empty folder of one grid value is named at once."""
    import ray

    from raytopo.errors import InputError
    from raytopo.tune.runner import run_sweep

    (tmp_path / "empty").mkdir()
    data = tiny_space(tmp_path, params={"data.path": {"grid": [str(tmp_path / "empty")]}})
    data["base"]["data"].update(source="folder", path=str(tmp_path / "empty"))
    with pytest.raises(InputError, match="empty"):
        run_sweep(parse_space(data))
    assert not ray.is_initialized()
