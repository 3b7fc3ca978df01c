"""Every registered family through its tiny config: build, one training step, checkpoint save and strict load,
sampling with its own conditions, evaluation with the declared metric names (docs/architecture.md, section 2).

Registering a family without adding its tiny config here fails `test_every_registered_family_has_a_tiny_config`,
so a new family is covered by registering it. No Ray: the step runs in-process (persistence in-process too).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from raytopo.data.sources import in_memory_arrays
from raytopo.families.base import CONDITIONS, StepContext, sample_in_batches, stage_bounds
from raytopo.families.sampling import SamplerSettings
from raytopo.models.ema import make_ema, update_ema
from raytopo.parallel.pool import PersistencePool, PoolConfig
from raytopo.registry import family_names, get_family
from raytopo.checkpoint import load_checkpoint, save_checkpoint
from raytopo.train.config import parse_run_config
from raytopo.train.loop import make_optimizer
from raytopo.train.step import train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2], "attention_resolutions": []}
SHAPES = {"source": "shapes", "image_size": 16, "num_images": 8, "max_count": 2}
OBJECTS = {"source": "objects", "channels": 3, "image_size": 16, "num_images": 8, "max_count": 2}
TINY = {
    "adm": {"model": {"unet": UNET, "diffusion": {"steps": 50}}, "data": SHAPES},
    "adm_t": {"model": {"unet": UNET, "diffusion": {"steps": 50}}, "data": SHAPES},
    "tdn": {"model": {"unet": UNET, "diffusion": {"steps": 50}, "topo": {"weight": 1.0, "noisy": True}},
            "data": SHAPES},
    "equivariant": {"model": {"unet": UNET, "group": "C4", "mechanism": "kernel", "num_classes": 0},
                    "data": {"source": "glyphs", "group": "C4", "image_size": 16, "num_images": 8}},
    "topovae": {"model": {"vae": {"n_latent": 4, "c1": 4, "c2": 8, "hidden": 16},
                          "topo": {"weights": [10, 10, 10, 10, 0, 0, 0]}},
                "data": {"source": "garments", "image_size": 16, "num_images": 16},
                "train": {"grad_clip": None}},
    "ldm": {"model": {"autoencoder": {"steps": 1, "block_out_channels": [16, 16], "norm_num_groups": 8},
                      "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}},
            "data": OBJECTS, "train": {"steps": 2}},
    "controlnet": {"model": {"ldm": "<tiny ldm checkpoint>"}, "data": OBJECTS},
    "treevae": {"model": {"tree": {"latent_dim": 4, "hidden": 16, "encoder_channels": [4, 8, 8], "max_depth": 3},
                          "schedule": {"root": 1, "grow": 1, "grows": 1, "finetune": 1}, "decision_batches": 1,
                          "augmentation_weight": 1.0},
                "data": {"source": "garments", "image_size": 16, "num_images": 16}, "train": {"steps": 3}},
    "diffuse_treevae": {"model": {"treevae": "<tiny treevae checkpoint>",
                                  "unet": {"block_out_channels": [16, 32], "layers_per_block": 1,
                                           "norm_num_groups": 8}},
                        "data": {"source": "garments", "image_size": 16, "num_images": 16}},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_ldm_checkpoint(tmp_path_factory):
    """The controlnet's and the refiner's tiny configs are built on (untrained) tiny ldm and treevae checkpoints
    written here."""
    run = _run("ldm")
    model = get_family("ldm").build(run)
    path = save_checkpoint(tmp_path_factory.mktemp("ldm") / "checkpoint", model, make_ema(model), None, 2,
                           run.to_plain(), 1, get_family("ldm").structure(model))
    TINY["controlnet"]["model"]["ldm"] = str(path)
    tree_run = _run("treevae")
    tree = get_family("treevae").build(tree_run)
    tree_path = save_checkpoint(tmp_path_factory.mktemp("treevae") / "checkpoint", tree, make_ema(tree), None, 3,
                                tree_run.to_plain(), 2, get_family("treevae").structure(tree))
    TINY["diffuse_treevae"]["model"]["treevae"] = str(tree_path)
    return path


@pytest.fixture(autouse=True)
def few_judge_images(monkeypatch):
    """The ldm/controlnet judges train on 64 images here, not JUDGE_IMAGES (their accuracy is not under test)."""
    import raytopo.families.latent as latent

    monkeypatch.setattr(latent, "JUDGE_IMAGES", 64)


def _run(name: str):
    tiny = TINY[name]
    return parse_run_config({"family": name, "model": tiny["model"], "data": tiny["data"],
                             "train": {"batch_size": 4, "lr": 1e-3, **tiny.get("train", {})},
                             "ray": {"num_workers": 0, "persistence_actors": 0}})


def test_every_registered_family_has_a_tiny_config():
    assert set(TINY) == set(family_names())


@pytest.mark.parametrize("name", sorted(TINY))
def test_family_conforms_to_the_contract(name, tmp_path):
    family = get_family(name)
    run = _run(name)
    torch.manual_seed(0)
    model = family.build(run)
    ema = make_ema(model)
    before = {key: value.clone() for key, value in model.state_dict().items()}

    # One training step: every term the family returns has a declared weight, the loss is finite, weights move.
    arrays = in_memory_arrays(run.data)
    batch = {key: torch.from_numpy(value[:4]) for key, value in arrays.items()}
    pool = PersistencePool(PoolConfig(num_actors=0)) if family.needs_pool(run) else None
    ctx = StepContext(step=0, device=torch.device("cpu"), pool=pool, generator=torch.Generator().manual_seed(0),
                      extras=family.setup(run))
    optimizer = make_optimizer(family, model, run)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}   # every trainable one, once
    weights = family.loss_weights(run)
    metrics = train_step(model, family, batch, ctx, weights, optimizer, 1, run.train.grad_clip)
    assert math.isfinite(metrics["loss"])
    returned = set(metrics)
    for first_step, _ in stage_bounds(family.stages(run))[1:]:   # later stages may return other terms
        ctx.step = first_step
        returned |= set(family.losses(model, batch, ctx))
    assert set(weights) <= returned   # no weight for a term no stage returns (a typo)
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items())
    update_ema(ema, model, 0.5)

    # Stages add up to the run's steps; the structure is JSON and goes into the checkpoint.
    stages = family.stages(run)
    assert stages and sum(stage.steps for stage in stages) == run.train.steps
    structure = family.structure(model)
    assert json.loads(json.dumps(structure)) == structure

    # Checkpoint: written, read back, loaded strictly into a model built from the saved config and structure.
    directory = save_checkpoint(tmp_path / "checkpoint", model, ema, optimizer, 1, run.to_plain(),
                                structure=structure)
    saved = load_checkpoint(directory)
    assert saved.structure == structure
    rebuilt = family.build(parse_run_config(saved.config), saved.structure or None)
    rebuilt.load_state_dict(saved.ema)   # strict
    rebuilt.eval()

    # Sampling with the family's own conditions.
    conditions = family.sampling_conditions(run)
    assert conditions in CONDITIONS
    cond = family.default_conditions(run, per_count=1)
    assert bool(cond) == (conditions != "none")
    n = len(next(iter(cond.values()))) if cond else 2
    settings = SamplerSettings(steps=2)
    with torch.no_grad():
        images = sample_in_batches(family, rebuilt, run, n, cond, settings, batch_size=8)
    assert images.shape == (n, run.data.channels, run.data.image_size, run.data.image_size)
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1

    # Evaluation: exactly the metric names the family declares (what Tune checks a sweep's metric against).
    scores = family.evaluate_model(rebuilt, run, settings, 2, 8)
    assert set(scores) == family.metric_names(run)
    assert all(math.isfinite(float(value)) for value in scores.values())


def test_bf16_autocast_step_matches_fp32_and_keeps_fp32_weights():
    """precision bf16: the forward runs in bfloat16 (the loss differs from fp32 by bf16 rounding only) while the
    weights and their update stay float32."""
    family, run = get_family("adm_t"), _run("adm_t")
    arrays = in_memory_arrays(run.data)
    batch = {key: torch.from_numpy(value[:4]) for key, value in arrays.items()}
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = family.build(run)
        with torch.no_grad():   # ADM zero-initialises its output layer: randomise it so the output depends on it
            for parameter in model.parameters():
                if not parameter.any():
                    parameter.copy_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=run.train.lr)
        ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                          extras=family.setup(run))
        losses[precision] = train_step(model, family, batch, ctx, family.loss_weights(run), optimizer, 1, 1.0,
                                       precision)["loss"]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["bf16"] != losses["fp32"]                  # autocast really ran
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
