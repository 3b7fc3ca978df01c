"""Resuming a local-mode run neither repeats nor skips a step, and ends bit-for-bit where an uninterrupted run ends.

Per-step noise is seeded by (seed, rank, step) and the data order by (seed, epoch, rank), so a run of 4 steps
resumed to 8 must give the same model, EMA and optimiser state as one run of 8 steps. 24 images in batches of 8
make an epoch 3 steps long, so the resumed part starts mid-epoch (epoch 1, second batch) and the data
iterator's position matters. The default run uses ``adm_t``; the ``tdn`` variant (L_topo computed by the
persistence actors) is marked slow because every run starts a pool. Two negative controls show the comparison is tight enough to catch a resume that
drops the optimiser state or restarts the data order. The learning-rate and EMA warm-ups span the resume point,
so a resume that restarted either schedule would not match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import raytopo.train.data as train_data
import raytopo.train.loop as loop
from raytopo.checkpoint import CheckpointData, load_checkpoint
from raytopo.train.config import parse_run_config
from raytopo.train.trainer import run_training

from train_helpers import tiny_config

TIGHT = {"rtol": 1e-6, "atol": 1e-7}


def _config(storage: Path, name: str, steps: int, family: str) -> dict:
    return tiny_config(storage, name=name, family=family, data={"num_images": 24},
                       train={"steps": steps, "checkpoint_every": 2, "log_every": 2, "ema_rate": 0.9,
                              "warmup_steps": 6, "ema_warmup": True},
                       ray={"persistence_actors": 1})


def _logged_steps(folder: Path) -> list[int]:
    """Every step at which train/loss was written, over all event files (one per run start)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        steps += [e.step for e in EventFileLoader(str(path)).Load() if any(v.tag == "train/loss" for v in e.summary.value)]
    return sorted(steps)


def _assert_same_state(actual: CheckpointData, expected: CheckpointData, **tolerance) -> None:
    assert actual.step == expected.step
    assert actual.model.keys() == expected.model.keys()
    for key in expected.model:
        torch.testing.assert_close(actual.model[key], expected.model[key], msg=f"model {key}", **tolerance)
        torch.testing.assert_close(actual.ema[key], expected.ema[key], msg=f"ema {key}", **tolerance)
    for index, state in expected.optimizer["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(actual.optimizer["state"][index][name], value, msg=f"optimizer {index} {name}",
                                       **tolerance)


@pytest.fixture(scope="module", params=["adm_t", pytest.param("tdn", marks=pytest.mark.slow)])
def runs(request, ray_local, tmp_path_factory):
    """An uninterrupted 8-step run, and a 4-step run (plus two copies of it) to be resumed.

    ``adm_t`` by default; ``tdn`` (slow: each run starts a persistence pool) adds L_topo from the Ray actors.
    """
    family = request.param
    storage = tmp_path_factory.mktemp(f"resume_{family}")
    full = run_training(parse_run_config(_config(storage, "full", 8, family)))
    part = run_training(parse_run_config(_config(storage, "part", 4, family)))
    for copy in ("no_optimizer", "data_restart"):
        shutil.copytree(part.run_dir, storage / copy)
    return storage, full, part, family


def test_resume_continues_at_the_next_step_and_matches_an_uninterrupted_run(runs, capsys):
    storage, full, part, family = runs
    assert part.metrics["step"] == 4
    assert json.loads((part.checkpoint / "state.json").read_text())["step"] == 4
    before = load_checkpoint(part.checkpoint)
    capsys.readouterr()

    resumed = run_training(parse_run_config(_config(storage, "part", 8, family)), resume=True)

    out = capsys.readouterr().out
    assert "[raytopo] resuming at step 5/8" in out
    assert "step 2/8" not in out and "step 4/8" not in out  # steps 1-4 were not run again
    assert resumed.metrics["step"] == 8
    assert json.loads((resumed.checkpoint / "state.json").read_text())["step"] == 8
    # Across both starts TensorBoard saw every logged step exactly once.
    assert _logged_steps(storage / "part" / "tensorboard") == [2, 4, 6, 8]

    after, reference = load_checkpoint(resumed.checkpoint), load_checkpoint(full.checkpoint)
    assert any(not torch.equal(after.model[k], before.model[k]) for k in before.model)  # it did train on
    _assert_same_state(after, reference, **TIGHT)
    assert resumed.metrics["loss"] == pytest.approx(full.metrics["loss"], rel=1e-6)


_real_restore = loop.restore
_real_batch_iterator = train_data.batch_iterator


def _restore_without_optimizer(checkpoint, model, ema, optimizer):
    if checkpoint is not None:
        checkpoint.optimizer = None
    return _real_restore(checkpoint, model, ema, optimizer)


def _iterator_from_step_zero(data, batch_size, rank, world, seed, device, position=None, start_step=0):
    return _real_batch_iterator(data, batch_size, rank, world, seed, device)


@pytest.mark.parametrize("name, target, replacement", [
    ("no_optimizer", "restore", _restore_without_optimizer),
    ("data_restart", "batch_iterator", _iterator_from_step_zero),
])
def test_a_resume_that_loses_state_is_detected(runs, monkeypatch, name, target, replacement):
    """Negative controls: dropping Adam's moments, or replaying the data from the start, changes the result."""
    storage, full, _, family = runs
    monkeypatch.setattr(loop, target, replacement)
    broken = run_training(parse_run_config(_config(storage, name, 8, family)), resume=True)
    assert broken.metrics["step"] == 8
    with pytest.raises(AssertionError):
        _assert_same_state(load_checkpoint(broken.checkpoint), load_checkpoint(full.checkpoint), **TIGHT)
