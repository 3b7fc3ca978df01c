"""The Diffuse-TreeVAE refiner (``diffuse_treevae``) against independent truth: leaf draws follow the TreeVAE's
probabilities (chi-square), the null index is no leaf, with the condition zeroed it is an unconditional DDPM,
28-px images are padded and cropped, it overfits 8 images, and bad pairings fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from raytopo.checkpoint import save_checkpoint
from raytopo.data.sources import in_memory_arrays
from raytopo.errors import InputError
from raytopo.families.base import StepContext
from raytopo.families.refiner import refine, sample_leaves
from raytopo.families.sampling import SamplerSettings, sample_from, schedule_sigmas
from raytopo.models.ema import make_ema
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config
from raytopo.train.loop import make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GARMENTS = {"source": "garments", "image_size": 16, "num_images": 16}
TREE = {"tree": {"latent_dim": 4, "hidden": 16, "encoder_channels": [4, 8, 8], "max_depth": 3},
        "schedule": {"root": 1, "grow": 1, "grows": 1, "finetune": 1}}
UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}


def write_treevae(directory, seed: int = 0, data=GARMENTS):
    run = parse_run_config({"family": "treevae", "model": TREE, "data": data, "train": {"steps": 3}})
    family = get_family("treevae")
    torch.manual_seed(seed)
    model = family.build(run)
    model.grow("1")
    return save_checkpoint(directory, model, make_ema(model), None, 3, run.to_plain(), 2, family.structure(model))


@pytest.fixture(scope="module")
def treevae_checkpoint(tmp_path_factory):
    return write_treevae(tmp_path_factory.mktemp("treevae") / "checkpoint")


def refiner_run(path, data=GARMENTS, **model):
    return parse_run_config({"family": "diffuse_treevae", "model": {"treevae": str(path), "unet": UNET, **model},
                             "data": data, "train": {"steps": 10, "batch_size": 8}})


def test_leaf_draws_follow_the_probabilities_and_the_null_index_is_no_leaf(treevae_checkpoint):
    probabilities = torch.tensor([[0.6, 0.3, 0.1]]).repeat(10_000, 1)
    leaves = sample_leaves(probabilities, torch.Generator().manual_seed(0))
    observed = np.bincount(leaves.numpy(), minlength=3)
    assert stats.chisquare(observed, 10_000 * np.array([0.6, 0.3, 0.1])).pvalue > 1e-3
    model = get_family("diffuse_treevae").build(refiner_run(treevae_checkpoint))
    assert model.leaves == 3 and model.null_class == 3
    assert model.unet.class_embedding.num_embeddings == 4


def test_with_the_condition_zeroed_it_is_an_unconditional_ddpm(treevae_checkpoint):
    family, run = get_family("diffuse_treevae"), refiner_run(treevae_checkpoint, guidance=1.0)
    torch.manual_seed(0)
    model = family.build(run).eval()
    parsed = family.parse(run)
    settings = SamplerSettings(name="ddpm", steps=5, seed=3)
    zero, null = torch.zeros(2, 1, 16, 16), torch.full((2,), model.null_class)
    refined = refine(model, parsed, zero, null, settings)

    from raytopo.diffusion.denoisers import DiscreteVPDenoiser
    from raytopo.families.refiner import _diffusion

    def unconditional(x, t):   # the bare UNet on [x_t, 0] with the null leaf: a plain unconditional DDPM
        return model.unet(torch.cat([x, torch.zeros_like(x)], dim=1), t, class_labels=null).sample

    denoiser = DiscreteVPDenoiser(unconditional, _diffusion(parsed), clip=True)
    sigmas = schedule_sigmas(denoiser, settings)
    generator = torch.Generator().manual_seed(3)
    x = sigmas[0].float() * torch.randn(zero.shape, generator=generator)
    with torch.no_grad():
        expected = sample_from(denoiser, x, sigmas.float(), settings, generator).clamp(-1, 1)
    torch.testing.assert_close(refined, expected, rtol=0, atol=1e-5)


def test_the_default_sampler_is_stochastic_ddim(treevae_checkpoint):
    family, run = get_family("diffuse_treevae"), refiner_run(treevae_checkpoint)
    torch.manual_seed(0)
    model = family.build(run).eval()
    parsed = family.parse(run)
    cond, leaf = torch.rand(2, 1, 16, 16) * 2 - 1, torch.tensor([0, 1])
    default = refine(model, parsed, cond, leaf, SamplerSettings(steps=4, seed=1))
    assert torch.equal(default, refine(model, parsed, cond, leaf, SamplerSettings(steps=4, seed=1, eta=1.0)))
    assert not torch.allclose(default, refine(model, parsed, cond, leaf, SamplerSettings(steps=4, seed=1, eta=0.0)))


def test_28_pixel_images_are_padded_for_the_unet_and_cropped(tmp_path):
    data = {"source": "garments", "image_size": 28, "num_images": 8}
    path = write_treevae(tmp_path / "tree28", data=data)
    model = get_family("diffuse_treevae").build(refiner_run(path, data=data))
    eps = model(torch.randn(2, 1, 28, 28), torch.tensor([5, 900]), torch.tensor([0, 3]), torch.randn(2, 1, 28, 28))
    assert eps.shape == (2, 1, 28, 28)


def test_the_refiner_overfits_eight_images(treevae_checkpoint):
    family, run = get_family("diffuse_treevae"), refiner_run(treevae_checkpoint, label_drop=0.0)
    torch.manual_seed(0)
    model = family.build(run)
    optimizer = make_optimizer(family, model, run)
    for group in optimizer.param_groups:
        group["lr"] = 2e-3
    batch = {key: torch.from_numpy(value[:8]) for key, value in in_memory_arrays(run.data).items()}
    extras, losses = family.setup(run), []
    frozen = {key: value.clone() for key, value in model.treevae.state_dict().items()}
    for step in range(300):
        ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(step % 4),
                          extras=extras)
        loss = family.losses(model, batch, ctx)["mse"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.1 * sum(losses[:4]), (losses[:4], losses[-4:])
    assert all(torch.equal(frozen[key], value) for key, value in model.treevae.state_dict().items())


def test_bad_pairings_and_leaves_fail_in_one_line(treevae_checkpoint, tmp_path):
    family, run = get_family("diffuse_treevae"), refiner_run(treevae_checkpoint)
    model = family.build(run)
    with pytest.raises(InputError, match=r"leaf: expected indices 0..2 \(or 3, none\), got \[7\]"):
        refine(model, family.parse(run), torch.zeros(1, 1, 16, 16), torch.tensor([7]), SamplerSettings(steps=2))
    other = write_treevae(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="built from another treevae checkpoint"):
        family.build(refiner_run(other), json.loads(json.dumps(family.structure(model))))
    ldm = tmp_path / "ldm"
    ldm.mkdir()
    (ldm / "config.json").write_text(json.dumps({"family": "ldm"}))
    with pytest.raises(InputError, match="expected a checkpoint of family 'treevae', it is of family 'ldm'") as error:
        refiner_run(ldm)
    assert "\n" not in str(error.value)


def test_the_preview_shows_the_three_sampling_modes(treevae_checkpoint):
    family = get_family("diffuse_treevae")
    run = parse_run_config({"family": "diffuse_treevae",
                            "model": {"treevae": str(treevae_checkpoint), "unet": UNET},
                            "data": GARMENTS, "train": {"steps": 10, "batch_size": 8, "sample_steps": 2}})
    torch.manual_seed(0)
    grids = family.preview(family.build(run).eval(), run)
    assert set(grids) == {"refined", "leaves", "reconstructions"}
    assert grids["refined"][0].shape == (16, 1, 16, 16)
    leaves, captions = grids["leaves"]
    assert leaves.shape == (6, 1, 16, 16) and captions == ["0", "10", "11"] * 2
    assert grids["reconstructions"][0].shape == (24, 1, 16, 16)
    assert all(float(images.abs().max()) <= 1 for images, _ in grids.values())
