"""The ``ldm`` and ``controlnet`` families against independent truth (docs/latent.md; the brief's checks):
guidance arithmetic, label-drop rate, the ControlNet at initialisation, frozen tensors, build-time shape errors,
diffusers' own noise schedule and DDIM grid, the latent scale, shared flips, and overfitting 8 images."""

from __future__ import annotations

import json

import pytest
import torch

from raytopo.checkpoint import save_checkpoint
from raytopo.data.sources import in_memory_arrays
from raytopo.diffusion.guidance import GuidedModel, drop_labels
from raytopo.errors import ConfigError, InputError
from raytopo.families.base import StepContext
from raytopo.families.latent import latent_diffusion, random_hflip
from raytopo.models.ema import make_ema
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config
from raytopo.train.loop import make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBJECTS = {"source": "objects", "channels": 3, "image_size": 16, "num_images": 16, "max_count": 2}
TINY_LDM = {"autoencoder": {"steps": 2, "block_out_channels": [16, 16], "norm_num_groups": 8},
            "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8}}


def ldm_run(**model):
    return parse_run_config({"family": "ldm", "model": {**TINY_LDM, **model}, "data": OBJECTS,
                             "train": {"steps": 4, "batch_size": 8, "lr": 1e-3},
                             "ray": {"num_workers": 0, "persistence_actors": 0}})


def controlnet_run(ldm_path, **model):
    return parse_run_config({"family": "controlnet", "model": {"ldm": str(ldm_path), **model}, "data": OBJECTS,
                             "train": {"steps": 4, "batch_size": 8, "lr": 1e-3},
                             "ray": {"num_workers": 0, "persistence_actors": 0}})


def random_weights(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (diffusers zero-initialises some output layers): outputs depend on every input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


def write_ldm(directory, seed: int = 0):
    family, run = get_family("ldm"), ldm_run()
    torch.manual_seed(seed)
    model = family.build(run)
    random_weights(model.unet, seed)
    return save_checkpoint(directory, model, make_ema(model), None, 4, run.to_plain(), 1, family.structure(model))


@pytest.fixture(scope="module")
def ldm_checkpoint(tmp_path_factory):
    return write_ldm(tmp_path_factory.mktemp("ldm") / "checkpoint")


def batch_of(run, n=8):
    return {key: torch.from_numpy(value[:n]) for key, value in in_memory_arrays(run.data).items()}


# --- classifier-free guidance ------------------------------------------------------------------------------------


class Linear:
    """A toy conditional model whose output depends on the label (and on a mask keyword)."""

    def __call__(self, x, t, label, mask=None):
        out = x * (1 + label.float().view(-1, 1, 1, 1)) + t.float().view(-1, 1, 1, 1) / 100
        return out if mask is None else out + mask


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    model, x, t = Linear(), torch.randn(4, 2, 3, 3), torch.tensor([1, 5, 7, 9])
    label, null = torch.tensor([0, 1, 2, 1]), torch.full((4,), 3)
    torch.testing.assert_close(GuidedModel(model, 3, 1.0)(x, t, label), model(x, t, label), rtol=0, atol=0)
    torch.testing.assert_close(GuidedModel(model, 3, 0.0)(x, t, label), model(x, t, null), rtol=0, atol=0)
    s = 3.0
    expected = model(x, t, null) + s * (model(x, t, label) - model(x, t, null))
    torch.testing.assert_close(GuidedModel(model, 3, s)(x, t, label), expected, rtol=0, atol=1e-6)


def test_guidance_batched_call_equals_separate_calls_on_the_real_unet(ldm_checkpoint):
    from raytopo.families.controlnet import load_ldm

    ldm = load_ldm(str(ldm_checkpoint)).eval()
    z, t, label = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        conditional = ldm(z, t, label)
        unconditional = ldm(z, t, torch.full((3,), ldm.null_class))
        guided = GuidedModel(ldm, ldm.null_class, 3.0)(z, t, label=label)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), rtol=0, atol=1e-5)
    assert not torch.allclose(conditional, unconditional)   # the class really enters


def test_label_drop_rate_over_ten_thousand_draws():
    labels = torch.randint(0, 4, (10_000,))
    dropped = drop_labels(labels, null_class=4, rate=0.1, generator=torch.Generator().manual_seed(0))
    assert abs((dropped == 4).float().mean().item() - 0.10) <= 0.01
    kept = dropped != 4
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(drop_labels(labels, 4, 0.0), labels)   # evaluation: nothing dropped


# --- the ldm family ---------------------------------------------------------------------------------------------


def test_ldm_stages_and_latent_scale_make_unit_std_latents():
    family, run = get_family("ldm"), ldm_run()
    assert [(s.name, s.steps) for s in family.stages(run)] == [("autoencoder", 2), ("diffusion", 2)]
    model = family.build(run)
    batch = batch_of(run, 16)

    def stream():
        while True:
            yield batch

    family.enter_stage(model, run, family.stages(run)[1], stream())
    with torch.no_grad():
        latents = model.encode(batch["image"], torch.Generator().manual_seed(1))
    assert latents.std().item() == pytest.approx(1.0, abs=0.15)
    assert model.latent_scale.item() != 1.0


def test_noise_process_and_ddim_grid_match_diffusers():
    from diffusers import DDIMScheduler, DDPMScheduler

    from raytopo.diffusion.samplers import vp_sigma_table, vp_sigmas

    diffusion = latent_diffusion(get_family("ldm").parse(ldm_run()))
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              prediction_type="epsilon", clip_sample=False)
    x0, noise, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise=noise).float(),
                               reference.add_noise(x0, noise, t), rtol=0, atol=1e-5)
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    ddim.set_timesteps(50)
    table = vp_sigma_table(diffusion.alphas_cumprod)
    torch.testing.assert_close(vp_sigmas(diffusion.alphas_cumprod, 50, offset=1)[:-1],
                               table[ddim.timesteps.long()])   # 981, 961, ..., 1


def fit(family, run, model, batch, stage, steps: int, lr: float = 2e-3) -> list[float]:
    """``steps`` Adam steps of ``stage`` on one fixed batch, cycling four noise seeds; the weighted losses."""
    optimizer = make_optimizer(family, model, run, stage)
    for group in optimizer.param_groups:
        group["lr"] = lr
    stages, extras, weights = family.stages(run), family.setup(run), family.loss_weights(run)
    step_in_stage = sum(s.steps for s in stages[:stages.index(stage)])
    losses = []
    for step in range(steps):
        ctx = StepContext(step=step_in_stage, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(step % 4), extras=extras)
        terms = family.losses(model, batch, ctx)
        loss = sum(weights[name] * value.mean() for name, value in terms.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def endless(batch):
    while True:
        yield batch


@pytest.fixture(scope="module")
def trained_ldm(tmp_path_factory):
    """A tiny LDM trained as a run trains it: autoencoder on 16 images, latent scale, then the UNet on 8 of them
    (the other 8 are the ControlNet's). Returns the checkpoint and the UNet stage's losses."""
    family, run = get_family("ldm"), ldm_run(label_drop=0.0, flip=False)
    torch.manual_seed(0)
    model = family.build(run)
    images = batch_of(run, 16)
    autoencoder, diffusion = family.stages(run)
    fit(family, run, model, images, autoencoder, 150)
    family.enter_stage(model, run, diffusion, endless(images))
    losses = fit(family, run, model, {key: value[8:] for key, value in images.items()}, diffusion, 300)
    directory = tmp_path_factory.mktemp("trained_ldm") / "checkpoint"
    return save_checkpoint(directory, model, make_ema(model), None, 4, run.to_plain(), 1,
                           family.structure(model)), losses


def test_ldm_overfits_eight_images(trained_ldm):
    _, losses = trained_ldm
    assert sum(losses[-4:]) < 0.1 * sum(losses[:4]), (losses[:4], losses[-4:])


def test_vae_path_loads_a_local_diffusers_directory_and_skips_stage_one(tmp_path):
    from raytopo.models.latent.networks import AutoencoderSettings, build_autoencoder

    vae = build_autoencoder(AutoencoderSettings(block_out_channels=(16, 16), norm_num_groups=8), 16, 3)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    family = get_family("ldm")
    run = parse_run_config({"family": "ldm", "model": {"vae_path": str(tmp_path / "vae"), "unet": TINY_LDM["unet"]},
                            "data": OBJECTS, "train": {"steps": 3}})
    assert [s.name for s in family.stages(run)] == ["diffusion"]
    model = family.build(run)
    assert model.latent_scale.item() == 0.5
    for name, value in vae.state_dict().items():
        assert torch.equal(model.vae.state_dict()[name], value)
    rebuilt = family.build(run, json.loads(json.dumps(family.structure(model))))   # without reading the folder
    rebuilt.load_state_dict(model.state_dict())


def test_vae_path_that_is_not_an_autoencoder_directory_fails_in_one_line(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    for path, expected in ((tmp_path / "missing", "no config.json"), (tmp_path / "unet", "UNet2DModel")):
        with pytest.raises(InputError, match=expected) as error:
            parse_run_config({"family": "ldm", "model": {"vae_path": str(path)}, "data": OBJECTS,
                              "train": {"steps": 3}})
        assert "\n" not in str(error.value)


# --- the controlnet family --------------------------------------------------------------------------------------


def test_controlnet_at_initialisation_is_exactly_the_trained_ldm(ldm_checkpoint):
    family, run = get_family("controlnet"), controlnet_run(ldm_checkpoint)
    model = family.build(run).eval()
    batch = batch_of(run, 4)
    z, t, label = torch.randn(4, 4, 8, 8), torch.tensor([3, 300, 600, 999]), batch["label"]
    with torch.no_grad():
        down, middle = model.residuals(z, t, label, batch["mask"])
        assert all(not r.any() for r in down) and not middle.any()
        for null in (False, True):
            labels = torch.full_like(label, model.null_class) if null else label
            assert torch.equal(model(z, t, labels, batch["mask"]), model.ldm(z, t, labels))
    assert torch.equal(model.controlnet.class_embedding.weight, model.ldm.unet.class_embedding.weight)
    assert torch.equal(model.controlnet.conv_in.weight, model.ldm.unet.conv_in.weight)


def test_one_controlnet_step_leaves_every_frozen_tensor_unchanged(ldm_checkpoint):
    from raytopo.train.step import train_step

    family, run = get_family("controlnet"), controlnet_run(ldm_checkpoint)
    model = family.build(run)
    optimizer = make_optimizer(family, model, run)
    frozen = {name: value.clone() for name, value in model.ldm.state_dict().items()}
    trained = {name: value.clone() for name, value in model.controlnet.state_dict().items()}
    ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                      extras=family.setup(run))
    train_step(model, family, batch_of(run), ctx, family.loss_weights(run), optimizer, 1, 1.0)
    assert all(torch.equal(frozen[name], value) for name, value in model.ldm.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.ldm.parameters())
    assert any(not torch.equal(trained[name], value) for name, value in model.controlnet.state_dict().items())


def test_mask_latent_ratio_the_encoder_cannot_produce_fails_at_build(ldm_checkpoint):
    with pytest.raises(ConfigError, match=r"conditioning_channels.*latent is 8; expected 2 entries") as error:
        controlnet_run(ldm_checkpoint, conditioning_channels=[16, 32, 64])
    assert "\n" not in str(error.value)


def test_controlnet_refuses_a_non_ldm_checkpoint_and_another_ldm(ldm_checkpoint, tmp_path):
    family, run = get_family("controlnet"), controlnet_run(ldm_checkpoint)
    structure = family.structure(family.build(run))
    other = write_ldm(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="built from another ldm checkpoint"):
        family.build(controlnet_run(other), structure)
    family.build(run, structure)   # its own LDM: fine
    tdn = tmp_path / "tdn"
    tdn.mkdir()
    (tdn / "config.json").write_text(json.dumps({"family": "tdn"}))
    with pytest.raises(InputError, match="expected a checkpoint of family 'ldm'"):
        controlnet_run(tdn)


def test_random_hflip_flips_image_and_mask_together():
    image = torch.randn(64, 3, 4, 5)
    batch = {"image": image, "mask": image[:, :1] > 0}
    flipped = random_hflip(batch, ("image", "mask"), torch.Generator().manual_seed(0))
    assert torch.equal(flipped["mask"], flipped["image"][:, :1] > 0)
    changed = (flipped["image"] != image).flatten(1).any(1).float().mean().item()
    assert 0.3 < changed < 0.7


def test_controlnet_overfits_eight_images(trained_ldm):
    """On 8 images the LDM never saw, the ControlNet alone (LDM frozen) drives the loss below 0.1x its start."""
    family, run = get_family("controlnet"), controlnet_run(trained_ldm[0], label_drop=0.0, flip=False)
    torch.manual_seed(0)
    model = family.build(run)
    losses = fit(family, run, model, batch_of(run), family.stages(run)[0], 300)
    assert sum(losses[-4:]) < 0.1 * sum(losses[:4]), (losses[:4], losses[-4:])
