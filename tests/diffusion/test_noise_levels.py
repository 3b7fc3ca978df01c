"""Noise-level samplers: moments against their defining distributions, reproducibility, ranges."""

from __future__ import annotations

import math

import pytest
import torch

from raytopo.diffusion.noise_levels import (
    karras_grid_sigmas,
    karras_ramp,
    karras_ramp_sigmas,
    lognormal_sigmas,
    uniform_times,
)
from raytopo.diffusion.samplers import karras_sigmas
from raytopo.errors import ConfigError, InputError

N = 200_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_lognormal_log_sigma_has_edm_mean_and_std():
    sigma = lognormal_sigmas(N, _gen(), p_mean=-1.2, p_std=1.2)
    log_sigma = sigma.double().log()
    # standard errors: 1.2 / sqrt(N) ~ 0.0027 for the mean, ~0.0019 for the std
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.015)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.01)
    # third standardised moment of a normal is 0
    z = (log_sigma - log_sigma.mean()) / log_sigma.std()
    assert abs(float((z**3).mean())) < 0.03
    # P(sigma > 1) = P(Z > 1.2 / 1.2) = 1 - Phi(1)
    assert float((sigma > 1).double().mean()) == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=0.005)


def test_draws_are_reproducible_from_the_generator():
    assert torch.equal(lognormal_sigmas(16, _gen(3)), lognormal_sigmas(16, _gen(3)))
    assert not torch.equal(lognormal_sigmas(16, _gen(3)), lognormal_sigmas(16, _gen(4)))
    assert torch.equal(uniform_times(16, _gen(5), 0.1, 0.9), uniform_times(16, _gen(5), 0.1, 0.9))


def test_uniform_times_moments_and_range():
    t = uniform_times(N, _gen(), 0.2, 0.8).double()
    assert float(t.min()) >= 0.2 and float(t.max()) < 0.8
    assert float(t.mean()) == pytest.approx(0.5, abs=0.003)
    assert float(t.var()) == pytest.approx(0.6**2 / 12, rel=0.02)


def test_karras_ramp_end_points_and_grid_match_the_sampler_schedule():
    assert float(karras_ramp(torch.tensor(0.0), 0.002, 80.0)) == pytest.approx(80.0)
    assert float(karras_ramp(torch.tensor(1.0), 0.002, 80.0)) == pytest.approx(0.002)
    grid = karras_sigmas(10, 0.002, 80.0, 7.0)[:-1]
    draws = karras_grid_sigmas(5000, 10, _gen(), 0.002, 80.0, 7.0).double()
    # every draw is a grid point, and every grid point is drawn about 1/10 of the time
    nearest = (draws[:, None] - grid[None]).abs().argmin(1)
    torch.testing.assert_close(draws, grid[nearest].float().double(), rtol=1e-6, atol=0)
    counts = torch.bincount(nearest, minlength=10).double() / len(draws)
    assert float((counts - 0.1).abs().max()) < 0.025


def test_continuous_ramp_sigmas_stay_in_range_and_follow_the_ramp():
    sigma = karras_ramp_sigmas(N, _gen(), 0.002, 80.0, 7.0).double()
    assert float(sigma.min()) >= 0.002 * (1 - 1e-6) and float(sigma.max()) <= 80.0 * (1 + 1e-6)
    # u = (smax^(1/rho) - sigma^(1/rho)) / (smax^(1/rho) - smin^(1/rho)) is uniform on [0, 1]
    u = (80.0 ** (1 / 7) - sigma ** (1 / 7)) / (80.0 ** (1 / 7) - 0.002 ** (1 / 7))
    assert float(u.mean()) == pytest.approx(0.5, abs=0.003)
    assert float(u.var()) == pytest.approx(1 / 12, rel=0.02)


@pytest.mark.parametrize("call", [
    lambda: lognormal_sigmas(0),
    lambda: lognormal_sigmas(4, p_std=0.0),
    lambda: uniform_times(4, t_min=0.5, t_max=0.5),
    lambda: karras_grid_sigmas(4, 1),
])
def test_bad_arguments_raise_input_error(call):
    with pytest.raises(InputError):
        call()


def test_bad_karras_ramp_is_a_config_error():
    with pytest.raises(ConfigError, match="sigma_min/sigma_max"):
        karras_ramp(torch.tensor(0.5), 1.0, 0.5)
