"""DiffusionConfig validation: a bad value names the field and what it allows."""

import pytest

from raytopo.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from raytopo.diffusion.schedules import cosine_betas
from raytopo.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = DiffusionConfig()
    assert (cfg.steps, cfg.schedule, cfg.mean_type, cfg.var_type, cfg.loss) == (
        1000, "linear", "epsilon", "learned_range", "mse")
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg
    tdn = DiffusionConfig(schedule="cosine", timestep_respacing="ddim50")
    assert DiffusionConfig.from_dict(tdn.to_dict()) == tdn


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("schedule", "quadratic", "schedule: expected one of linear, cosine, got 'quadratic'"),
        ("mean_type", "previous_x", "mean_type: expected one of epsilon, x0, got 'previous_x'"),
        ("var_type", "learned", "var_type: expected one of learned_range, fixed_large, fixed_small, got 'learned'"),
        ("loss", "l1", "loss: expected one of mse, rescaled_mse, kl, rescaled_kl, got 'l1'"),
        ("steps", 0, "steps: expected an integer >= 2"),
        ("steps", True, "steps: expected an integer >= 2"),
        ("steps", 10, "num_steps: the linear schedule needs more than 20 steps"),
        ("rescale_timesteps", "yes", "rescale_timesteps: expected true or false"),
        ("timestep_respacing", "ddim999", "timestep_respacing: no integer stride gives exactly 999"),
        ("timestep_respacing", 50, "timestep_respacing: expected a string"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError) as info:
        DiffusionConfig(**{field: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_field():
    with pytest.raises(ConfigError, match="unknown field.*learn_sigma"):
        DiffusionConfig.from_dict({"steps": 100, "learn_sigma": True})


def test_gaussian_diffusion_validates_its_choices():
    with pytest.raises(ConfigError, match="loss_type: expected one of"):
        GaussianDiffusion(cosine_betas(10), loss_type="hybrid")
