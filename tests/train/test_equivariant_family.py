"""The ``equivariant`` family: config validation, the equivariance regulariser and its EMA target, sampler
equivariance of exact / frame-averaged / plain models, evaluation on every in-memory source, and a short run
through the real trainer (local mode)."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from raytopo.errors import ConfigError
from raytopo.families.base import StepContext
from raytopo.families.sampling import SamplerSettings
from raytopo.models.equivariant import act, get_group, inverse
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config

FAMILY = get_family("equivariant")
SMALL_UNET = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2], "attention_resolutions": []}


def config(storage=None, **model) -> dict:
    """A tiny run: 16 px C4 glyphs, a 2-level 32-channel UNet."""
    return {
        "family": "equivariant",
        "model": {"unet": dict(SMALL_UNET), "group": "C4", "mechanism": "kernel", **model},
        "data": {"source": "glyphs", "group": "C4", "image_size": 16, "num_images": 16},
        "train": {"steps": 6, "batch_size": 4, "lr": 2.0e-3, "log_every": 3, "checkpoint_every": 6,
                  "ema_rate": 0.5, "sample_every": 6, "sample_steps": 1},
        "ray": {"num_workers": 0, "persistence_actors": 0, "storage_path": str(storage or "runs"), "name": "eqv"},
    }


def _randomise_zero_layers(model: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised (output) layers random weights, so the network is not identically zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


def _built(**model):
    run = parse_run_config(config(**model))
    torch.manual_seed(0)
    built = FAMILY.build(run)
    _randomise_zero_layers(built.net)
    if built.has_target:
        built.target.load_state_dict(built.net.state_dict())
    return run, built


@functools.lru_cache(maxsize=None)
def _glyph_images(data) -> np.ndarray:
    from raytopo.data.sources import in_memory_arrays

    return in_memory_arrays(data)["image"]


def _glyph_batch(run, n=4):
    return {"image": torch.from_numpy(_glyph_images(run.data)[:n])}


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,field", [
    ({"group": "C8"}, "model.group"),
    ({"mechanism": "lifted"}, "model.mechanism"),
    ({"regulariser": {"weight": -1.0}}, "model.regulariser.weight"),
    ({"regulariser": {"ema": 1.0}}, "model.regulariser.ema"),
    ({"regulariser": {"weight": 1.0}, "group": "trivial"}, "model.regulariser.weight"),
    ({"formulation": {"kind": "edm", "pred": "eps"}}, "model.formulation.pred"),
    ({"formulation": {"kind": "cosine", "sigma_max": 1.0e5}}, "model.formulation.sigma_min/sigma_max"),
    ({"formulation": {"steps": 10}}, "model.formulation.steps"),
    ({"unet": {**SMALL_UNET, "image_size": 32}}, "model.unet.image_size"),
    ({"unet": {**SMALL_UNET, "learn_sigma": True}}, "model.unet.learn_sigma"),
    ({"unet": {**SMALL_UNET, "conv_resample": True}}, "model.unet.conv_resample"),
    ({"num_classes": 10}, "model.num_classes"),
    ({"num_classes": -1}, "model.num_classes"),
])
def test_bad_model_settings_fail_before_training_naming_the_field(model, field):
    with pytest.raises(ConfigError) as caught:
        parse_run_config(config(**model))
    message = str(caught.value)
    assert field in message and "\n" not in message


def test_defaults_follow_the_data_and_self_conditioning_doubles_the_input_channels():
    plain = config()
    del plain["model"]["group"]
    parsed = FAMILY.parse(parse_run_config(plain))
    assert parsed.group == "C4" and parsed.unet.in_channels == 1 and parsed.unet.conv_resample is False
    parsed = FAMILY.parse(parse_run_config(config(formulation={"self_cond": True})))
    assert parsed.unet.in_channels == 2 and parsed.channels == 1
    assert FAMILY.loss_weights(parse_run_config(config(regulariser={"weight": 0.3}))) == {
        "denoise": 1.0, "equivariance": 0.3}
    assert FAMILY.loss_weights(parse_run_config(config())) == {"denoise": 1.0}


# --- the regulariser --------------------------------------------------------------------------------------------


def _regulariser_term(run, model, step=0, seed=0):
    ctx = StepContext(step=step, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
                      extras=FAMILY.setup(run))
    return FAMILY.losses(model, _glyph_batch(run), ctx)


def test_regulariser_is_zero_for_an_exact_network_and_matches_its_definition_for_a_plain_one():
    run, exact = _built(mechanism="kernel", regulariser={"weight": 1.0})
    terms = _regulariser_term(run, exact)
    assert float(terms["equivariance"].detach().max()) < 1e-9 * float(terms["denoise"].detach().mean())

    run, plain = _built(mechanism="none", regulariser={"weight": 1.0})
    terms = _regulariser_term(run, plain, seed=3)
    term = terms["equivariance"].detach()
    assert term.shape == (4,) and float(term.min()) > 0
    # The same noisy input, by hand: mean((F(x) - g^-1 F(g x))^2) for the element g the call drew.
    formulation = FAMILY.setup(run)["formulation"]
    generator = torch.Generator().manual_seed(3)
    x0 = _glyph_batch(run)["image"]
    sigma = formulation.sample_sigmas(4, generator, "cpu")
    noise = torch.randn(x0.shape, generator=generator)
    pair = formulation.training_pair(x0, sigma, noise)
    with torch.no_grad():
        out = plain.net(pair.net_input, pair.net_time)
        by_hand = [((out - act(inverse(g), plain.net(act(g, pair.net_input), pair.net_time))) ** 2).mean((1, 2, 3))
                   for g in get_group("C4").elements()[1:]]
    assert min(float((term - h).abs().max()) for h in by_hand) < 1e-5 * float(term.max())


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([value.flatten().double() for value in state.values()])


def test_target_updates_once_per_step_and_survives_a_state_dict_round_trip():
    run, model = _built(mechanism="none", regulariser={"weight": 1.0, "ema": 0.5})
    before = _flat(model.target.state_dict())
    _regulariser_term(run, model, step=0)           # step 0: nothing to average yet
    assert torch.equal(_flat(model.target.state_dict()), before)

    with torch.no_grad():                           # "an optimiser step"
        for parameter in model.net.parameters():
            parameter.add_(1.0)
    expected = 0.5 * before + 0.5 * _flat(model.net.state_dict())
    _regulariser_term(run, model, step=1)           # first micro-batch of step 1: one update
    torch.testing.assert_close(_flat(model.target.state_dict()), expected)
    model.sync_target(1, 0.5)                       # later micro-batches of the same step: no second update
    torch.testing.assert_close(_flat(model.target.state_dict()), expected)
    assert int(model.target_step) == 1
    assert not any(p.requires_grad for p in model.target.parameters())
    assert all(not m.training for m in model.target.modules())

    restored = FAMILY.build(run)
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    assert int(restored.target_step) == 1
    for resumed in (model, restored):
        resumed.sync_target(2, 0.5)
    assert torch.equal(_flat(restored.target.state_dict()), _flat(model.target.state_dict()))


# --- sampling ------------------------------------------------------------------------------------------------


def _sampler_error(run, model):
    return FAMILY._sampler_error(model, run, SamplerSettings(name="dpmpp_2m", steps=3), {})


def test_exact_and_frame_averaged_samplers_are_equivariant_and_a_plain_one_is_not():
    run, exact = _built(mechanism="kernel")
    assert _sampler_error(run, exact) < 1e-4
    run, plain = _built(mechanism="none")
    plain_error = _sampler_error(run, plain)
    assert plain_error > 1e-3
    averaged_run = parse_run_config(config(mechanism="none", averaging=True))
    assert _sampler_error(averaged_run, plain) < 1e-4 * max(1.0, plain_error / 1e-3)

    images = FAMILY.sample(plain, averaged_run, 3, {}, SamplerSettings(name="ddpm", steps=2, seed=5))
    again = FAMILY.sample(plain, averaged_run, 3, {}, SamplerSettings(name="ddpm", steps=2, seed=5))
    assert images.shape == (3, 1, 16, 16) and torch.equal(images, again)
    assert float(images.min()) >= -1 and float(images.max()) <= 1


# --- evaluation on every in-memory source ------------------------------------------------------------------------


def _glyph_uint8(n=12, size=16):
    from raytopo.data.glyphs import glyph_images

    return glyph_images(n, size, group="Z2", seed=7)


@pytest.mark.parametrize("source", ["glyphs", "npy", "folder"])
def test_evaluate_model_reports_its_metric_names_on_every_source(source, tmp_path):
    plain = config(group="Z2", mechanism="none")
    if source == "npy":
        np.save(tmp_path / "images.npy", _glyph_uint8())
        plain["data"] = {"source": "npy", "path": str(tmp_path / "images.npy"), "image_size": 16, "group": "Z2",
                         "eval_fraction": 0.4}                  # 5 of the 12 images: the 4 evaluated are held out
    elif source == "folder":
        for index, image in enumerate(_glyph_uint8()):
            Image.fromarray(image).save(tmp_path / f"glyph_{index:03d}.png")
        plain["data"] = {"source": "folder", "path": str(tmp_path), "convention": "none", "image_size": 16,
                         "group": "Z2", "eval_fraction": 0.4}
    run = parse_run_config(plain)
    torch.manual_seed(0)
    model = FAMILY.build(run)
    _randomise_zero_layers(model.net)
    metrics = FAMILY.evaluate_model(model, run, SamplerSettings(name="euler", steps=2), per_count=4, batch_size=3)
    assert set(metrics) == FAMILY.metric_names(run)
    assert metrics["n"] == 4 and all(math.isfinite(v) for v in metrics.values())
    assert metrics["net_eqv_err"] > 0 and metrics["invariance_gap"] >= 0 and metrics["swd"] > 0


def test_class_conditional_model_trains_on_labelled_npy_and_samples_per_class(tmp_path):
    np.save(tmp_path / "images.npy", _glyph_uint8(6))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 0, 1, 2]))
    plain = config(group="Z2", mechanism="kernel", num_classes=3)
    plain["data"] = {"source": "npy", "path": str(tmp_path / "images.npy"), "labels_path": str(tmp_path / "labels.npy"),
                     "image_size": 16, "group": "Z2", "eval_fraction": 0}   # all six in one batch
    run = parse_run_config(plain)
    torch.manual_seed(0)
    model = FAMILY.build(run)
    _randomise_zero_layers(model.net)
    from raytopo.data.sources import in_memory_arrays

    arrays = in_memory_arrays(run.data)
    batch = {"image": torch.from_numpy(arrays["image"]), "label": torch.from_numpy(arrays["label"])}
    ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                      extras=FAMILY.setup(run))
    assert FAMILY.losses(model, batch, ctx)["denoise"].shape == (6,)
    settings = SamplerSettings(name="euler", steps=2)
    by_class = [FAMILY.sample(model, run, 2, {"label": torch.tensor([c, c])}, settings) for c in (0, 1)]
    assert not torch.allclose(by_class[0], by_class[1])  # the class embedding changes the samples
    cycled = FAMILY.sample(model, run, 2, {}, settings)  # no labels given: classes 0, 1
    torch.testing.assert_close(cycled[1], by_class[1][1])


# --- the real trainer ---------------------------------------------------------------------------------------------


def test_training_through_the_trainer_lowers_the_loss_and_checkpoints_the_target(ray_local, tmp_path):
    from raytopo.checkpoint import load_checkpoint
    from raytopo.train.trainer import run_training

    run = parse_run_config(config(tmp_path, mechanism="none", regulariser={"weight": 1.0}))
    outcome = run_training(run)
    assert outcome.metrics["step"] == 6
    for key in ("denoise", "equivariance", "loss"):
        assert math.isfinite(outcome.metrics[key]), key
    assert outcome.metrics["loss"] == pytest.approx(outcome.metrics["denoise"] + outcome.metrics["equivariance"],
                                                    rel=1e-5)
    data = load_checkpoint(outcome.checkpoint)
    assert int(data.model["target_step"]) == 5  # synced at the first loss call of the last step
    assert any(key.startswith("target.") for key in data.model)

    # The denoising loss on a fixed batch and fixed noise, before and after training (the loop seeds the same way).
    torch.manual_seed(run.train.seed)
    initial = FAMILY.build(run)
    trained = FAMILY.build(run)
    trained.load_state_dict(data.model)

    def fixed_loss(model):
        ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(11),
                          extras=FAMILY.setup(run))
        with torch.no_grad():
            return float(FAMILY.losses(model, _glyph_batch(run, 8), ctx)["denoise"].mean())

    assert fixed_loss(trained) < 0.9 * fixed_loss(initial)
