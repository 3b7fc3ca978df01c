"""Beta schedules against their closed forms (Ho et al. 2020 sec. 4; Nichol & Dhariwal 2021 eq. 17)."""

import math

import numpy as np
import pytest

from raytopo.diffusion.schedules import cosine_betas, linear_betas, named_betas
from raytopo.errors import ConfigError


@pytest.mark.parametrize("steps", [1000, 250, 4000])
def test_linear_endpoints_scale_with_steps(steps):
    betas = linear_betas(steps)
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    assert betas[0] == pytest.approx(1e-4 * 1000 / steps, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * 1000 / steps, rel=1e-12)
    assert np.allclose(np.diff(betas), (betas[-1] - betas[0]) / (steps - 1), rtol=1e-9)


@pytest.mark.parametrize("steps", [20, 5, 0, -3])
def test_linear_rejects_steps_that_push_beta_to_one(steps):
    with pytest.raises(ConfigError, match="num_steps"):
        linear_betas(steps)


def _f(u, s=0.008):
    return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2


@pytest.mark.parametrize("steps", [1000, 100])
def test_cosine_cumulative_alphas_follow_eq17(steps):
    betas = cosine_betas(steps)
    assert betas.dtype == np.float64 and betas.shape == (steps,)
    unclipped = betas < 0.999
    assert not unclipped[-1], "the last step must hit the 0.999 clip"
    first_clip = int(np.argmin(unclipped))
    abar = np.cumprod(1.0 - betas)
    t = np.arange(first_clip)
    # alpha_bar after step t (0-based) is f((t+1)/T) / f(0) until the first clipped step.
    np.testing.assert_allclose(abar[t], _f((t + 1) / steps) / _f(0.0), rtol=1e-10)


def test_cosine_chain_factor_matches_tdn_table():
    """docs/references.md, TDN 2.7: sqrt(1/abar_t - 1) for the cosine schedule at T = 1000 (values as printed there)."""
    abar = np.cumprod(1.0 - cosine_betas(1000))
    table = {0: (0.006, 5e-4), 250: (0.43, 5e-3), 500: (1.02, 5e-3), 750: (2.45, 5e-3),
             900: (6.43, 5e-3), 990: (71.0, 0.5), 999: (2.0e4, 0.05e4)}
    for t, (expected, half_digit) in table.items():
        assert abs(math.sqrt(1.0 / abar[t] - 1.0) - expected) <= half_digit, t


def test_cosine_max_beta_and_offset():
    assert cosine_betas(1000, max_beta=0.5).max() == 0.5
    # s = 0: the first beta is 1 - cos^2(pi / (2T)) = sin^2(pi / (2T)).
    assert cosine_betas(1000, s=0.0)[0] == pytest.approx(math.sin(math.pi / 2000) ** 2, rel=1e-9)
    with pytest.raises(ConfigError, match="max_beta"):
        cosine_betas(10, max_beta=1.5)


def test_named_betas():
    np.testing.assert_array_equal(named_betas("linear", 100), linear_betas(100))
    np.testing.assert_array_equal(named_betas("cosine", 100), cosine_betas(100))
    with pytest.raises(ConfigError, match=r"schedule: expected one of linear, cosine, got 'sigmoid'"):
        named_betas("sigmoid", 100)
