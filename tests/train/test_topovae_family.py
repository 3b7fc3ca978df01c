"""The ``topovae`` family: loss bookkeeping, the topology term's gradient, diagrams from the very batch, and a
few real training steps in local mode.

Truth used: the reference's loss ``(BCE_sum + KLD_sum + topo) / B`` written out independently, central finite
differences in float64, ``rips_persistence`` of the batch's own images, a second identically seeded run with the
topology term switched off, and TensorBoard's own event reader.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raytopo.errors import ConfigError
from raytopo.families.base import StepContext, resolve_terms
from raytopo.families.topovae import scale_normalised, to_unit, topo_terms
from raytopo.parallel.pool import PersistencePool, PoolConfig
from raytopo.registry import get_family
from raytopo.topology.regularisers import TopologicalRegulariser, TopoRegulariserConfig
from raytopo.topology.rips import rips_persistence
from raytopo.train.config import parse_run_config
from raytopo.data.sources import in_memory_arrays
from raytopo.train.step import train_step

from train_helpers import tiny_config

SMALL_VAE = {"n_latent": 4, "c1": 4, "c2": 8, "hidden": 16}


def plain_config(tmp_path, topo=None, **sections):
    """A tiny topovae run on 16 px garments (sections merged over the defaults)."""
    defaults = {"data": {"source": "garments", "image_size": 16, "num_images": 64},
                "train": {"steps": 6, "batch_size": 16, "microbatches": 1, "grad_clip": None, "ema_rate": 0.0,
                          "lr": 2e-3, "log_every": 1, "checkpoint_every": 6},
                "ray": {"persistence_actors": 1}}
    merged = {key: {**defaults.get(key, {}), **sections.get(key, {})} for key in {*defaults, *sections}}
    config = tiny_config(tmp_path, name="topovae", family="topovae", **merged)
    config["model"] = {"vae": dict(SMALL_VAE), "topo": {"weights": [10, 10, 10, 10, 0, 0, 0], **(topo or {})}}
    return config


def garment_batch(run, rows):
    arrays = in_memory_arrays(run.data)
    return {"image": torch.from_numpy(arrays["image"][rows]), "label": torch.from_numpy(arrays["label"][rows])}


def context(family, run, pool=None, seed=0):
    pool = pool if pool is not None else PersistencePool(PoolConfig(num_actors=0))
    return StepContext(step=0, device=torch.device("cpu"), pool=pool, generator=torch.Generator().manual_seed(seed),
                       extras=family.setup(run))


class RecordingPool:
    """An in-process pool that records every submitted array."""

    def __init__(self):
        self.pool = PersistencePool(PoolConfig(num_actors=0))
        self.arrays = []

    def submit(self, batch, fn=None, **kwargs):
        self.arrays.append(np.array(batch))
        return self.pool.submit(batch, fn=fn, **kwargs)


class RecordingRegulariser(TopologicalRegulariser):
    """Records the diagrams the family hands to the regulariser."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def terms(self, points, true_points, diagrams=None, true_diagrams=None):
        self.calls.append((points.detach().clone(), true_points.detach().clone(), diagrams, true_diagrams))
        return super().terms(points, true_points, diagrams, true_diagrams)


# --- loss bookkeeping -----------------------------------------------------------------------------------------


def test_terms_add_up_to_the_reference_losses(tmp_path):
    family = get_family("topovae")
    run = parse_run_config(plain_config(tmp_path))
    torch.manual_seed(0)
    model = family.build(run)
    batch = garment_batch(run, np.arange(16))
    ctx = context(family, run)
    terms = resolve_terms(family.losses(model, batch, ctx))
    weights = family.loss_weights(run)
    assert set(terms) == set(weights) == {"vae_rec", "vae_kl", "topovae_rec", "topovae_kl", "topo", "topo_bottleneck0",
                                          "topo_bottleneck1", "topo_persentropy0", "topo_persentropy1"}
    assert all(value.shape == (16,) for value in terms.values())

    # The same forward pass written the reference's way (same noise: the generator re-seeded identically).
    x = (batch["image"] + 1) / 2
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    out = model.topovae(x, noise)
    bce = torch.nn.functional.binary_cross_entropy(out.reconstruction, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    regulariser = TopologicalRegulariser(TopoRegulariserConfig(weights=(10, 10, 10, 10, 0, 0, 0)))
    topo, _ = regulariser(out.reconstruction.reshape(16, -1), x.reshape(16, -1))
    reference = (bce + kld + topo) / 16
    ours = sum(weights[name] * terms[name].mean() for name in ("topovae_rec", "topovae_kl", "topo"))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # the logged raw values are the unweighted regularisers
    raw = regulariser.terms(out.reconstruction.reshape(16, -1), x.reshape(16, -1))
    for name, (value, _) in raw.items():
        torch.testing.assert_close(terms[f"topo_{name}"][0], value.detach(), rtol=1e-5, atol=1e-6)


def _step_pair(run, family, seed=0):
    torch.manual_seed(seed)
    model = family.build(run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.train.lr, weight_decay=0.0)
    batch = garment_batch(run, np.arange(16))
    metrics = train_step(model, family, batch, context(family, run), family.loss_weights(run), optimizer, 1, None)
    return model, metrics


def test_pair_diverges_only_through_the_topology_term(tmp_path):
    family = get_family("topovae")
    without = parse_run_config(plain_config(tmp_path, topo={"weights": [0] * 7}))
    with_topo = parse_run_config(plain_config(tmp_path))
    assert not family.needs_pool(without) and family.needs_pool(with_topo)
    assert "topo" not in family.loss_weights(without)

    plain_pair, _ = _step_pair(without, family)
    for key, value in plain_pair.vae.state_dict().items():  # no topology term: the two stay identical
        torch.testing.assert_close(value, plain_pair.topovae.state_dict()[key], rtol=0, atol=0)

    topo_pair, metrics = _step_pair(with_topo, family)
    assert metrics["topo"] > 0
    # the plain VAE moved exactly as without the topology term; the TopoVAE moved differently
    for key, value in topo_pair.vae.state_dict().items():
        torch.testing.assert_close(value, plain_pair.vae.state_dict()[key], rtol=0, atol=0)
    moved = sum(float((topo_pair.topovae.state_dict()[k] - plain_pair.topovae.state_dict()[k]).abs().sum())
                for k in plain_pair.topovae.state_dict())
    assert moved > 0


def test_topology_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(7)
    points = torch.rand(7, 3, dtype=torch.float64, generator=generator)
    truth = torch.rand(7, 3, dtype=torch.float64, generator=generator)
    config = TopoRegulariserConfig(weights=(1, 2, 3, 4, 0.5, 0.5, 1), density_maxrange=2.0, density_sigma=0.3)
    regulariser = TopologicalRegulariser(config)
    diagrams = rips_persistence(points.numpy(), maxdim=1)
    true_diagrams = rips_persistence(truth.numpy(), maxdim=1)

    def total(cloud):
        return topo_terms(regulariser, cloud, truth, diagrams, true_diagrams)["topo"].sum()

    live = points.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(total(live), live)
    assert gradient.abs().sum() > 0
    step = 1e-6
    numeric = torch.zeros_like(points)
    for index in np.ndindex(*points.shape):
        shift = torch.zeros_like(points)
        shift[index] = step
        numeric[index] = (total(points + shift) - total(points - shift)) / (2 * step)
    torch.testing.assert_close(gradient, numeric, rtol=1e-5, atol=1e-6)
    # the per-sample term averages to topo / B and its sum is the weighted regulariser value
    value, _ = regulariser(points, truth, diagrams, true_diagrams)
    torch.testing.assert_close(total(points), value)


# --- point clouds and diagrams --------------------------------------------------------------------------------


def test_true_diagrams_come_from_the_batch_itself_under_shuffling(tmp_path):
    family = get_family("topovae")
    run = parse_run_config(plain_config(tmp_path))
    torch.manual_seed(0)
    model = family.build(run)
    recorded = {}
    for name, rows in (("first", np.random.default_rng(1).permutation(64)[:16]),
                       ("second", np.random.default_rng(2).permutation(64)[:16])):
        batch = garment_batch(run, rows)
        ctx = context(family, run)
        ctx.extras["regulariser"] = spy = RecordingRegulariser(ctx.extras["parsed"].topo)
        resolve_terms(family.losses(model, batch, ctx))
        (_, true_points, _, true_diagrams), = spy.calls
        own = ((batch["image"].double() + 1) / 2).reshape(16, -1).numpy()
        np.testing.assert_allclose(true_points.numpy(), own, atol=1e-6)
        recorded[name] = (own, true_diagrams)
    for name, other in (("first", "second"), ("second", "first")):
        own, used = recorded[name]
        expected = rips_persistence(own, maxdim=1)
        wrong = rips_persistence(recorded[other][0], maxdim=1)
        for dim in (0, 1):
            np.testing.assert_allclose(used[dim].points, expected[dim].points, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(used[dim].death_cells, expected[dim].death_cells)
        assert not (used[0].points.shape == wrong[0].points.shape and np.allclose(used[0].points, wrong[0].points))


def test_latent_space_uses_normalised_mu_and_spares_the_decoder(tmp_path):
    family = get_family("topovae")
    run = parse_run_config(plain_config(tmp_path, topo={"space": "latents", "weights": [0, 0, 10, 10, 1, 1, 0]}))
    torch.manual_seed(0)
    model = family.build(run)
    batch = garment_batch(run, np.arange(16))
    pool = RecordingPool()
    terms = family.losses(model, batch, context(family, run, pool))
    truth_array, generated_array = pool.arrays   # truth first: submitted before the forward pass
    mu, _ = model.topovae.encode(to_unit(batch["image"]))
    np.testing.assert_allclose(generated_array[0], scale_normalised(mu).detach().numpy(), rtol=1e-5, atol=1e-6)
    images = to_unit(batch["image"]).reshape(16, -1).double()
    pairwise = torch.cdist(images, images)
    np.testing.assert_allclose(truth_array[0], (images / (pairwise.sum() / (16 * 15))).numpy(), rtol=1e-5, atol=1e-6)
    assert generated_array.shape == (1, 16, 4)

    topo = terms["topo"].result().mean()
    topo.backward()
    encoder_grad = sum(float(p.grad.abs().sum()) for p in model.topovae.encoder.parameters())
    assert encoder_grad > 0
    assert all(p.grad is None for p in model.topovae.decoder.parameters())
    assert all(p.grad is None for p in model.vae.parameters())


def test_scale_normalisation_makes_clouds_scale_free():
    cloud = torch.rand(9, 5, dtype=torch.float64)
    torch.testing.assert_close(scale_normalised(cloud * 37.0), scale_normalised(cloud))
    torch.testing.assert_close(torch.pdist(scale_normalised(cloud)).mean(), torch.tensor(1.0, dtype=torch.float64))


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,field", [
    ({"vae": {"n_latent": 0}}, "model.vae.n_latent"),
    ({"vae": {"recon": "l1"}}, "recon"),
    ({"vae": {"width": 3}}, "width"),
    ({"topo": {"weights": [1, 2, 3]}}, "weights"),
    ({"topo": {"weights": {"bottleneck2": 1}}}, "model.topo.weights.bottleneck2"),
    ({"topo": {"space": "pixels"}}, "model.topo.space"),
    ({"topo": {"backend": "ripser"}}, "backend"),
    ({"topo": {"maxdim": 0}}, "maxdim"),          # the default weights need H1
    ({"topo": {"dsigma0_sigma": -1}}, "dsigma0_sigma"),
])
def test_bad_model_settings_name_the_field(tmp_path, model, field):
    config = plain_config(tmp_path)
    for section, values in model.items():
        config["model"][section] = {**config["model"].get(section, {}), **values}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_run_config(config)


def test_gradient_clipping_is_per_model_so_the_pair_stays_independent(tmp_path):
    """With train.grad_clip the VAE and the TopoVAE are clipped on their own norms (one parameter group each): the
    plain VAE moves exactly as it does when the TopoVAE's gradients are different (topology term on or off)."""
    from raytopo.train.loop import make_optimizer

    family = get_family("topovae")
    moved = {}
    for label, topo in (("plain", {"weights": [0] * 7}), ("topo", None)):
        run = parse_run_config(plain_config(tmp_path, topo=topo, train={"grad_clip": 1e-3}))
        torch.manual_seed(0)
        model = family.build(run)
        optimizer = make_optimizer(family, model, run)
        assert [group["name"] for group in optimizer.param_groups] == ["vae", "topovae"]
        metrics = train_step(model, family, garment_batch(run, np.arange(16)), context(family, run),
                             family.loss_weights(run), optimizer, 1, run.train.grad_clip)
        assert metrics["grad_norm_vae"] > 1e-3 and metrics["grad_norm_topovae"] > 1e-3   # both really clipped
        moved[label] = model
    for key, value in moved["plain"].vae.state_dict().items():
        torch.testing.assert_close(value, moved["topo"].vae.state_dict()[key], rtol=0, atol=0)
    assert any(not torch.equal(value, moved["topo"].topovae.state_dict()[key])
               for key, value in moved["plain"].topovae.state_dict().items())


def test_image_size_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        parse_run_config(plain_config(tmp_path, data={"image_size": 18}))


def test_weights_mapping_equals_the_list(tmp_path):
    family = get_family("topovae")
    mapped = plain_config(tmp_path, topo={"weights": {"persentropy1": 5, "bottleneck0": 2}})
    listed = plain_config(tmp_path, topo={"weights": [2, 0, 0, 5, 0, 0, 0]})
    assert family.parse(parse_run_config(mapped)).topo == family.parse(parse_run_config(listed)).topo


# --- sampling, previews, evaluation -----------------------------------------------------------------------------


def test_sample_preview_and_evaluation(tmp_path):
    family = get_family("topovae")
    run = parse_run_config(plain_config(tmp_path))
    torch.manual_seed(0)
    model = family.build(run)
    from raytopo.families.sampling import SamplerSettings

    samples = family.sample(model, run, 5, {}, SamplerSettings(seed=3))
    assert samples.shape == (5, 1, 16, 16) and samples.min() >= -1 and samples.max() <= 1
    torch.testing.assert_close(samples, family.sample(model, run, 5, {}, SamplerSettings(seed=3)))

    grids = family.preview(model, run)
    images, captions = grids["reconstructions"]
    assert images.shape == (36, 1, 16, 16) and captions[:3] == ["input", "vae", "topovae"]
    assert set(grids) == {"reconstructions", "prior_vae", "prior_topovae"}
    torch.testing.assert_close(grids["prior_vae"][0], grids["prior_topovae"][0])  # identical weights, same z

    scores = family.evaluate_model(model, run, None, per_count=2, batch_size=16)
    assert set(scores) == family.metric_names(run)
    assert scores["bce_ratio"] == pytest.approx(1.0)  # identical weights
    assert scores["vae_bce"] == pytest.approx(256 * math.log(2), rel=0.2)  # sigmoid outputs near 0.5 at init
    assert all(math.isfinite(value) and value >= 0 for value in scores.values())


# --- the real trainer -------------------------------------------------------------------------------------------


def tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars, tags = {}, set()
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, []).append((event.step, float(value.tensor.float_val[0])))
    return scalars, tags


def test_local_training_lowers_reconstruction_and_logs_both_models(ray_local, tmp_path):
    from raytopo.train.trainer import run_training

    run = parse_run_config(plain_config(tmp_path, train={"steps": 8, "sample_every": 8, "checkpoint_every": 8,
                                                         "lr": 2e-2}))
    outcome = run_training(run)
    metrics = outcome.metrics
    for name in ("vae_rec", "vae_kl", "topovae_rec", "topovae_kl", "topo", "loss"):
        assert math.isfinite(metrics[name]), name
    expected = sum(metrics[name] for name in ("vae_rec", "vae_kl", "topovae_rec", "topovae_kl", "topo"))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    scalars, tags = tensorboard_tags(run.run_dir / "tensorboard")
    for name in ("vae_rec", "topovae_rec"):
        curve = [value for _, value in scalars[f"train/{name}"]]
        assert len(curve) == 8
        assert np.mean(curve[-2:]) < 0.96 * np.mean(curve[:2]), (name, curve)
    assert {"train/topo", "train/topo_persentropy1", "samples/reconstructions", "samples/prior_topovae"} <= tags
