"""An ``ldm`` run through the real trainer (local mode): the autoencoder stage then the diffusion stage, each
training only its own module, the latent scale set at the boundary from the training latents, evaluation
metrics in TensorBoard, and a resume at the stage boundary reproducing the uninterrupted run bit for bit."""

from __future__ import annotations

import pytest
import torch

from raytopo.data.sources import in_memory_arrays
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config
from raytopo.train.trainer import run_training

from test_train_local import tensorboard_scalars
from train_helpers import checkpoint_at, resume_from_copy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(storage, name: str) -> dict:
    return {"family": "ldm",
            "model": {"autoencoder": {"steps": 2, "block_out_channels": [16, 16], "norm_num_groups": 8},
                      "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}},
            "data": {"source": "objects", "channels": 3, "image_size": 16, "num_images": 32, "max_count": 2},
            "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 1, "log_every": 1,
                      "eval_every": 4, "eval_per_count": 2, "sample_steps": 2, "ema_rate": 0.9},
            "ray": {"num_workers": 0, "storage_path": str(storage), "name": name, "num_to_keep": 10}}


@pytest.fixture(autouse=True)
def few_judge_images(monkeypatch):
    import raytopo.families.latent as latent

    monkeypatch.setattr(latent, "JUDGE_IMAGES", 64)


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    run = parse_run_config(_config(tmp_path_factory.mktemp("ldm"), "full"))
    run_training(run)
    return run


def _part(weights: dict, prefix: str) -> dict:
    return {key: value for key, value in weights.items() if key.startswith(prefix)}


def test_each_stage_trains_only_its_module_and_sets_the_latent_scale_at_the_boundary(uninterrupted):
    steps = {step: checkpoint_at(uninterrupted, step) for step in (1, 2, 3, 4)}
    unet_1, unet_2 = _part(steps[1].model, "unet."), _part(steps[2].model, "unet.")
    assert all(torch.equal(unet_1[key], unet_2[key]) for key in unet_1)           # frozen in the autoencoder stage
    vae_3, vae_4 = _part(steps[3].model, "vae."), _part(steps[4].model, "vae.")
    assert all(torch.equal(vae_3[key], vae_4[key]) for key in vae_3)              # frozen in the diffusion stage
    assert any(not torch.equal(unet_2[key], steps[3].model[key]) for key in unet_2)
    assert steps[2].model["latent_scale"].item() == 1.0
    scale = steps[3].model["latent_scale"].item()
    assert scale == steps[4].model["latent_scale"].item() != 1.0

    # Independent figure: 1 / std of posterior samples of every training image under the stage-2 autoencoder.
    family = get_family("ldm")
    model = family.build(uninterrupted, steps[2].structure or None)
    model.load_state_dict(steps[2].model)
    images = torch.from_numpy(in_memory_arrays(uninterrupted.data)["image"])
    with torch.no_grad():
        latents = model.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(0))
    assert scale == pytest.approx(1.0 / latents.std().item(), rel=0.05)


def test_evaluation_metrics_reach_tensorboard(uninterrupted):
    scalars = tensorboard_scalars(uninterrupted.run_dir / "tensorboard")
    for name in get_family("ldm").metric_names(uninterrupted):
        assert [step for step, _ in scalars[f"eval/{name}"]] == [4], name
    assert 0.0 <= scalars["eval/class_agreement"][0][1] <= 1.0
    assert [step for step, _ in scalars["train/recon"]] == [1, 2]
    assert [step for step, _ in scalars["train/mse"]] == [3, 4]


def test_a_run_resumed_at_the_stage_boundary_matches_the_uninterrupted_one(uninterrupted, tmp_path):
    resumed = parse_run_config(_config(tmp_path, "resumed"))
    resume_from_copy(uninterrupted, 2, resumed)
    expected, actual = checkpoint_at(uninterrupted, 4), checkpoint_at(resumed, 4)
    assert actual.model.keys() == expected.model.keys()
    for key in expected.model:
        assert torch.equal(actual.model[key], expected.model[key]), key
        assert torch.equal(actual.ema[key], expected.ema[key]), key
