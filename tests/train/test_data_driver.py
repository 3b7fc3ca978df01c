"""The driver's side of file data: relative paths made absolute where the config is read, room for a read
task in the CPU check, which data settings a resume may change, and a resume on another number of workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from raytopo.commands.data import ShapesArgs, run_shapes
from raytopo.data.order import DataPosition
from raytopo.train.config import load_run_config, parse_run_config
from raytopo.train.data import batch_iterator

from train_helpers import tiny_config


@pytest.fixture()
def masks(tmp_path) -> Path:
    run_shapes(ShapesArgs(dim="0", n=40, size=16, max_count=3, min_count=1, objects=False, seed=0,
                          out=tmp_path / "masks"))
    return tmp_path / "masks"


def test_relative_data_paths_become_absolute_where_the_config_is_read(masks, tmp_path, monkeypatch):
    plain = tiny_config(tmp_path / "runs", data={"source": "folder", "path": "masks", "image_size": 16,
                                                 "eval_path": "./masks"})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(plain))
    monkeypatch.chdir(tmp_path)
    run = load_run_config("run.yaml")
    assert run.data.path == run.data.eval_path == str(masks)
    monkeypatch.chdir("/")                                      # a worker's working directory
    assert parse_run_config(run.to_plain()).data.path == str(masks)


def test_a_streamed_run_asks_for_a_read_task_beside_its_workers(masks, tmp_path):
    from raytopo.train.trainer import requested_cpus

    data = {"source": "folder", "path": str(masks), "image_size": 16, "reader_cpus": 0.5}
    memory = parse_run_config(tiny_config(tmp_path, data=data, ray={"num_workers": 1, "persistence_actors": 1}))
    streamed = parse_run_config(tiny_config(tmp_path, data={**data, "in_memory_max_bytes": 0},
                                            ray={"num_workers": 1, "persistence_actors": 1}))
    assert requested_cpus(streamed) == requested_cpus(memory) + 0.5 == 2.5


def test_a_resume_may_change_how_bad_files_are_handled_but_not_the_order(masks, tmp_path, ray_local):
    from raytopo.errors import ConfigError
    from raytopo.train.trainer import run_training

    data = {"source": "folder", "path": str(masks), "image_size": 16}
    run_training(parse_run_config(tiny_config(tmp_path, name="r", family="adm_t", data=data, train={"steps": 2})))
    more = tiny_config(tmp_path, name="r", family="adm_t", data={**data, "max_bad_files": 3, "trace_rows": True},
                       train={"steps": 3})
    assert run_training(parse_run_config(more), resume=True).metrics["step"] == 3
    reordered = tiny_config(tmp_path, name="r", family="adm_t", data={**data, "shuffle_buffer": 7},
                            train={"steps": 4})
    with pytest.raises(ConfigError, match="data.shuffle_buffer"):
        run_training(parse_run_config(reordered), resume=True)


def test_a_resume_on_another_number_of_workers_starts_the_next_epoch(masks, tmp_path, capsys):
    run = parse_run_config(tiny_config(tmp_path, data={"source": "folder", "path": str(masks), "image_size": 16}))
    stream = batch_iterator(run.data, 8, 0, 1, seed=0, device=torch.device("cpu"),
                            position=DataPosition(epoch=2, consumed=16, world=2))
    next(stream)
    assert stream.position == DataPosition(epoch=3, consumed=8, world=1)
    assert "split over 2 workers, this run has 1" in capsys.readouterr().out
    assert os.path.isabs(run.data.path)
