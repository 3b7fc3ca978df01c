"""A ``treevae`` run through the real trainer (local mode): the tree grows at grow stages, only the new subtree
trains while it does, the tree lives in the checkpoints' structure, and a resume at a growth boundary
reproduces the uninterrupted run bit for bit."""

from __future__ import annotations

import pytest
import torch

from raytopo.train.config import parse_run_config
from raytopo.train.trainer import run_training

from train_helpers import checkpoint_at, resume_from_copy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(storage, name: str) -> dict:
    return {"family": "treevae",
            "model": {"tree": {"latent_dim": 4, "hidden": 16, "encoder_channels": [4, 8, 8], "max_depth": 3},
                      "schedule": {"root": 2, "grow": 2, "grows": 2, "finetune": 2}, "decision_batches": 8,
                      "prune_threshold": 0.0},
            "data": {"source": "garments", "image_size": 16, "num_images": 64},
            "train": {"steps": 8, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 1, "log_every": 1,
                      "ema_rate": 0.9},
            "ray": {"num_workers": 0, "storage_path": str(storage), "name": name, "num_to_keep": 10}}


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    run = parse_run_config(_config(tmp_path_factory.mktemp("tree"), "full"))
    run_training(run)
    return run


def test_the_tree_grows_at_each_grow_stage_and_only_the_new_subtree_trains(uninterrupted):
    before, first, second = (checkpoint_at(uninterrupted, step) for step in (2, 4, 6))
    assert before.structure["tree"]["leaves"] == ["0", "1"]
    grown = first.structure["grown"]["grow1"]
    assert len(first.structure["tree"]["leaves"]) == 3 and grown["leaf"] in before.structure["tree"]["leaves"]
    assert grown["min_probability"] == 0.5  # min(1 / n_eff, 0.5) with the root's two leaves
    assert len(second.structure["tree"]["leaves"]) == 4 and set(second.structure["grown"]) == {"grow1", "grow2"}
    # grow1 trained only the new subtree: every tensor that existed before (but the split leaf's decoder,
    # removed) is unchanged after it, batch-norm statistics included.
    for key, value in before.model.items():
        if key in first.model:
            assert torch.equal(first.model[key], value), key
    new = [key for key in first.model if key not in before.model]
    assert new and checkpoint_at(uninterrupted, 3).model.keys() == first.model.keys()
    assert any(not torch.equal(checkpoint_at(uninterrupted, 3).model[key], first.model[key]) for key in new)


def test_a_resume_at_a_growth_boundary_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    resumed = parse_run_config(_config(tmp_path, "resumed"))
    resume_from_copy(uninterrupted, 4, resumed)
    expected, actual = checkpoint_at(uninterrupted, 8), checkpoint_at(resumed, 8)
    assert actual.structure == expected.structure
    for key in expected.model:
        assert torch.equal(actual.model[key], expected.model[key]), key
        assert torch.equal(actual.ema[key], expected.ema[key]), key
