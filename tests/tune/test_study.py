"""`raytopo study`: parsing, the summaries against closed forms, and a tiny real study with a failing variant."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from raytopo.errors import ConfigError
from raytopo.tune.study import TrialOutcome, csv_text, markdown, parse_study, run_study, summary_rows, write_study

from tune_helpers import tiny_space

T_975_2 = 4.302652729911275   # Student's t quantile 0.975, 2 degrees of freedom


def _study_data(storage: Path, **changes) -> dict:
    """The tiny sweep of the Tune tests (same base, resources, sampler and evaluation) as a study: no searched
    params, two variants x two seeds, evaluation every 2 steps for the curves, preview grids at step 4."""
    data = tiny_space(storage, name="tiny_study", sample={"name": "ddim", "steps": 4},
                      storage_path=str(storage / "studies"))
    for key in ("params", "metric", "mode", "scheduler", "num_samples"):
        del data[key]
    data["base"]["train"].update(eval_every=2, eval_per_count=1, sample_steps=4, sample_every=4)
    data.update(variants={"plain": {"model.topo.weight": 0.0}, "topo": {}}, seeds=[0, 1],
                metrics=["dim0_conn4_accuracy", "mse"], curves=["eval/dim0_conn4_accuracy"], at_steps=[2, 4],
                grids_at=4)
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, r"^seeds: expected a non-empty list"),
    ({"seeds": [1, 1]}, r"^seeds: expected distinct seeds"),
    ({"metrics": ["accuracy"]}, r"^metrics: 'accuracy' is never reported by variant 'plain'"),
    ({"curves": ["eval/nothing"]}, r"^curves: 'eval/nothing' is never reported"),
    ({"params": {"train.lr": {"grid": [1e-3]}}}, r"^params: a study has no searched parameters"),
    ({"variants": {"bad": {"model.topo.wieght": 1}}}, r"^variants\.bad: "),
])
def test_a_bad_study_fails_in_one_line(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(_study_data(tmp_path, **changes))


def _synthetic(study) -> list[TrialOutcome]:
    """Known values: plain 1, 2, 3; topo 2, 4, 3 (seeds 0, 1, 2); one topo trial failed (seed 3)."""
    trials = []
    for seed, (a, b) in enumerate([(1.0, 2.0), (2.0, 4.0), (3.0, 3.0)]):
        history = [{"step": 2.0, "eval/dim0_conn4_accuracy": a / 10}, {"step": 4.0, "eval/dim0_conn4_accuracy": a}]
        trials.append(TrialOutcome("plain", seed, "done", {"dim0_conn4_accuracy": a, "mse": 0.1}, history))
        history = [{"step": 2.0, "eval/dim0_conn4_accuracy": b / 10}, {"step": 4.0, "eval/dim0_conn4_accuracy": b}]
        trials.append(TrialOutcome("topo", seed, "done", {"dim0_conn4_accuracy": b, "mse": 0.1}, history))
    trials.append(TrialOutcome("topo", 3, "error: FloatingPointError: step 1: non-finite loss nan"))
    return trials


def test_summaries_of_known_values_match_the_closed_form(tmp_path):
    study = parse_study(_study_data(tmp_path, seeds=[0, 1, 2, 3]))
    trials = _synthetic(study)
    variants, differences = summary_rows(trials, study)
    by = {(r.variant, r.quantity): r.summary for r in variants}
    plain = by[("plain", "dim0_conn4_accuracy")]
    assert (plain.n, plain.mean, plain.std) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert (plain.low, plain.high) == pytest.approx((2.0 - T_975_2 / math.sqrt(3), 2.0 + T_975_2 / math.sqrt(3)))
    assert by[("topo", "dim0_conn4_accuracy")].n == 3                        # the failed seed is left out
    assert by[("topo", "eval/dim0_conn4_accuracy @ 2")].mean == pytest.approx(0.3)
    difference = {(r.variant, r.quantity): r.summary for r in differences}[("topo - plain", "dim0_conn4_accuracy")]
    # per-seed differences 1, 2, 0: mean 1, std 1
    assert (difference.n, difference.mean, difference.std) == (3, pytest.approx(1.0), pytest.approx(1.0))
    assert difference.low == pytest.approx(1.0 - T_975_2 / math.sqrt(3)) and not difference.excludes_zero

    text = markdown(trials, study)
    assert "| topo | 3 | error: FloatingPointError" in text and "6 of 7 trials finished" in text
    rows = list(csv.DictReader(io.StringIO(csv_text(trials, study))))
    assert {row["kind"] for row in rows} == {"variant", "difference", "failed"}
    assert float(next(r for r in rows if r["variant"] == "topo - plain" and r["quantity"] == "dim0_conn4_accuracy")
                 ["mean"]) == pytest.approx(1.0)
    written = write_study(trials, study, tmp_path / "out")
    assert written["curves"].stat().st_size > 0


def test_the_cli_reports_a_bad_study_in_one_line_before_ray_starts(tmp_path, capsys):
    """Runs before the module's Ray fixture starts (the test below uses it)."""
    import ray
    import yaml

    from raytopo.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_study_data(tmp_path, seeds=[0, 0])))
    assert main(["study", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "raytopo study: error: seeds: expected distinct seeds, got [0, 0]"
    assert not ray.is_initialized()


def test_a_tiny_study_runs_end_to_end_and_keeps_the_good_trials_when_one_variant_fails(ray_local, tmp_path):
    """2 seeds x (plain, topo, and a variant whose training diverges): the divergence is two failed rows."""
    data = _study_data(tmp_path)
    data["variants"]["diverging"] = {"train.lr": 1.0e30}
    study = parse_study(data)
    trials, folder = run_study(study)
    assert sorted((t.variant, t.seed, t.status.split(":")[0]) for t in trials) == [
        ("diverging", 0, "error"), ("diverging", 1, "error"), ("plain", 0, "done"), ("plain", 1, "done"),
        ("topo", 0, "done"), ("topo", 1, "done")]
    for trial in trials:
        if trial.status == "done":
            assert 0.0 <= trial.final["dim0_conn4_accuracy"] <= 1.0
            steps = [int(r["step"]) for r in trial.history if "eval/dim0_conn4_accuracy" in r]
            assert sorted(set(steps)) == [2, 4]   # the curve, from Tune's own history (the final report repeats 4)
    assert all("FloatingPointError" in t.status for t in trials if t.variant == "diverging")
    written = write_study(trials, study, folder)
    text = written["markdown"].read_text()
    assert "4 of 6 trials finished" in text and "| plain | dim0_conn4_accuracy | 2 |" in text
    assert "| diverging - plain | dim0_conn4_accuracy | 0 |" in text   # no seed to pair: reported, not hidden
    assert written["curves"].is_file()
    from PIL import Image

    sheet = Image.open(written["grids"])            # plain and topo side by side (the diverging one saved none)
    single = Image.open(next((t.path for t in trials if t.variant == "plain" and t.seed == 0)).glob(
        "train/samples/*_step0000004.png").__next__())
    assert sheet.width == 2 * single.width + 4

