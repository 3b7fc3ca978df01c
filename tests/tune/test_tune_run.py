"""A real tiny sweep on a local 2-CPU Ray: Tune trials each drive a one-worker TorchTrainer (Train V2 pattern).

Three trials over ``data.path`` (grid): two folders of masks train and evaluate; an empty folder (which the
driver's check is told to pass, as if it broke after the check) makes its trial fail at run time inside the
training worker, which must be a row of the table, not the end of the sweep. Truth comes from outside the code under test: Tune's own per-trial result
history, the checkpoints on disk, and a fresh evaluation of the final checkpoint with the trial's sampler.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import raytopo.data.sources as sources
from raytopo.commands.data import ShapesArgs, run_shapes
from raytopo.errors import ConfigError
from raytopo.train.config import load_run_config
from raytopo.tune.runner import BEST_CONFIG_NAME, format_table, run_sweep
from raytopo.tune.space import parse_space
from raytopo.tune.trial import EVALUATED, TRAIN_DIR_NAME, evaluate_checkpoint

from tune_helpers import tiny_space

EVAL_KEYS = {"dim0_conn4_accuracy", "dim0_conn4_f1", "dim0_conn4_mae", "dim0_conn8_accuracy"}
TRAIN_KEYS = {"mse", "vb", "topo", "loss", "step"}


def _masks(folder: Path, seed: int) -> Path:
    run_shapes(ShapesArgs(dim="0", n=12, size=16, max_count=3, min_count=1, objects=False, seed=seed, out=folder))
    return folder


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    folders = {"empty": root / "empty", "a": _masks(root / "a", 0), "b": _masks(root / "b", 1)}
    folders["empty"].mkdir()
    data = tiny_space(root, params={"data.path": {"grid": [str(folders[k]) for k in ("empty", "a", "b")]},
                                    "sample.steps": {"choice": [4, 5]}})
    data["base"]["data"].update(source="folder", path=str(folders["a"]))
    space = parse_space(data)
    # The driver checks every trial's data before Ray starts (an empty folder fails there, in one line). To get a
    # trial that fails inside its worker, the empty folder stands for data that broke after that check (files
    # removed from shared storage while the sweep waited): the driver's check is told to pass it.
    real_check = sources.check_data_source
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "check_data_source",
                      lambda data: None if data.path == str(folders["empty"]) else real_check(data))
        outcome = run_sweep(space)
    return space, outcome, folders


def _trial_dir(outcome, row) -> Path:
    (path,) = [p for p in outcome.experiment_dir.iterdir() if p.is_dir() and row.trial_id in p.name]
    return path


def _history(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_good_trials_report_training_and_evaluation_metrics(sweep):
    space, outcome, folders = sweep
    done = [row for row in outcome.rows if row.status == "done"]
    assert sorted(row.params["data.path"] for row in done) == sorted([str(folders["a"]), str(folders["b"])])
    for row in done:
        assert TRAIN_KEYS | EVAL_KEYS <= set(row.metrics)
        assert 0.0 <= row.metric <= 1.0 and row.metric == row.metrics["dim0_conn4_accuracy"]
        assert row.params["sample.steps"] in (4, 5)
        # Tune's own history of the trial: training streamed at steps 2 and 4 (TuneReportCallback), then the
        # final evaluation; evaluation keys exist only in that last result.
        history = _history(_trial_dir(outcome, row))
        assert [entry["step"] for entry in history] == [2, 4, 4]
        assert [EVALUATED in entry for entry in history] == [False, False, True]
        assert all(TRAIN_KEYS <= set(entry) for entry in history)
        assert not any(EVAL_KEYS & set(entry) for entry in history[:2])


def test_trial_training_lives_in_the_trial_dir_and_its_evaluation_is_reproducible(sweep):
    space, outcome, _ = sweep
    row = outcome.best
    checkpoints = sorted((_trial_dir(outcome, row) / TRAIN_DIR_NAME).glob("**/state.json"))
    assert checkpoints, "the trial's Train run must store its checkpoints inside the trial directory"
    final = max(checkpoints, key=lambda p: json.loads(p.read_text())["step"]).parent
    assert json.loads((final / "state.json").read_text())["step"] == 4
    again = evaluate_checkpoint(final, space.sampler(row.params), space.eval.per_count, space.eval.batch_size)
    assert again == {key: pytest.approx(row.metrics[key]) for key in again}


def test_failing_trial_is_a_row_and_the_sweep_completes(sweep):
    space, outcome, folders = sweep
    assert len(outcome.rows) == 3
    (failed,) = [row for row in outcome.rows if row.status.startswith("error")]
    assert failed.params["data.path"] == str(folders["empty"])
    assert "InputError" in failed.status and str(folders["empty"]) in failed.status
    assert failed.metric is None and outcome.rows[-1] is failed      # sorted last
    table = format_table(outcome.rows, space)
    assert all(row.trial_id in table for row in outcome.rows) and len(table.splitlines()) == 4


def test_best_config_is_the_best_trial_as_a_trainable_run_config(sweep):
    space, outcome, _ = sweep
    metrics = [row.metric for row in outcome.rows if row.metric is not None]
    assert outcome.best.metric == max(metrics) and outcome.rows[0] is outcome.best
    assert outcome.best_config == outcome.experiment_dir / BEST_CONFIG_NAME
    run = load_run_config(outcome.best_config)            # what `raytopo train` reads
    assert run.data.path == outcome.best.params["data.path"]
    assert run.family == "tdn" and run.train.steps == 4 and run.ray.num_workers == 1
    assert run.ray.name == f"{space.name}_best"
    assert f"sampler ddim, {outcome.best.params['sample.steps']} steps" in outcome.best_config.read_text()


def test_a_second_sweep_of_the_same_name_needs_resume(sweep, tmp_path):
    space, outcome, _ = sweep
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(space)
    elsewhere = parse_space(tiny_space(tmp_path))
    with pytest.raises(ConfigError, match="no sweep to resume"):
        run_sweep(elsewhere, resume=True)


@pytest.mark.slow
def test_resume_reruns_only_the_errored_trial(sweep):
    """After fixing the cause, ``--resume`` reruns the errored trial; finished trials are not run again."""
    space, outcome, folders = sweep
    finished = {row.trial_id: len(_history(_trial_dir(outcome, row))) for row in outcome.rows
                if row.status == "done"}
    _masks(folders["empty"], seed=2)
    resumed = run_sweep(space, resume=True)
    assert {row.trial_id for row in resumed.rows} == {row.trial_id for row in outcome.rows}
    assert all(row.status == "done" for row in resumed.rows)
    for trial_id, count in finished.items():
        row = next(r for r in resumed.rows if r.trial_id == trial_id)
        assert len(_history(_trial_dir(resumed, row))) == count   # not run again


def test_optuna_search_runs_end_to_end(ray_local, tmp_path):
    """search: optuna proposes every trial (values inside the loguniform range, not a grid), each trial trains
    and evaluates, and the best row is the one with the highest reported metric."""
    import optuna  # noqa: F401  (the test extra installs it)

    data = tiny_space(tmp_path, search="optuna", num_samples=2,
                      params={"train.lr": {"loguniform": [5.0e-4, 1.0e-3]}, "sample.steps": {"choice": [4, 5]}})
    outcome = run_sweep(parse_space(data))
    assert len(outcome.rows) == 2 and all(row.status == "done" for row in outcome.rows)
    for row in outcome.rows:
        assert 5.0e-4 <= row.params["train.lr"] <= 1.0e-3 and row.params["sample.steps"] in (4, 5)
    assert outcome.best.metric == max(row.metric for row in outcome.rows)
    searcher_states = list(outcome.experiment_dir.glob("searcher-state-*"))
    assert searcher_states and b"optuna" in searcher_states[0].read_bytes()
