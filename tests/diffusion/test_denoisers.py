"""DiscreteVPDenoiser: the VE <-> VP change of variables, the sigma -> timestep map and the x0 read-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytopo.diffusion.denoisers import DiscreteVPDenoiser
from raytopo.diffusion.gaussian import DiffusionConfig
from raytopo.diffusion.respace import build_diffusion, space_timesteps
from raytopo.diffusion.samplers import karras_sigmas, vp_sigmas, vp_timesteps
from raytopo.diffusion.schedules import cosine_betas
from raytopo.families.sampling import SamplerSettings, sample_with

D = torch.float64
ABAR = np.cumprod(1.0 - cosine_betas(100))


class Recorder:
    """A network that records what it is called with and returns a fixed function of (x, t)."""

    def __init__(self, channels_out: int) -> None:
        self.channels_out = channels_out
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone()))
        out = torch.sin(3 * x) * (1 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 100)
        return torch.cat([out] * (self.channels_out // x.shape[1]), dim=1)


def _denoiser(mean_type="epsilon", var_type="learned_range", rescale=False, clip=False):
    config = DiffusionConfig(steps=100, schedule="cosine", mean_type=mean_type, var_type=var_type,
                             rescale_timesteps=rescale)
    net = Recorder(2 if var_type == "learned_range" else 1)
    return DiscreteVPDenoiser(net, build_diffusion(config), clip=clip), net


def test_sigma_range_is_the_vp_table():
    denoiser, _ = _denoiser()
    assert denoiser.sigma_min == pytest.approx(np.sqrt((1 - ABAR[0]) / ABAR[0]), rel=1e-12)
    assert denoiser.sigma_max == pytest.approx(np.sqrt((1 - ABAR[-1]) / ABAR[-1]), rel=1e-12)


@pytest.mark.parametrize("steps, spec", [(10, "ddim10"), (4, "ddim4"), (7, "7"), (100, "ddim100")])
def test_default_sigmas_sit_on_respace_steps(steps, spec):
    denoiser, _ = _denoiser()
    kept = space_timesteps(100, spec)
    assert vp_timesteps(100, steps) == kept
    expected = [np.sqrt((1 - ABAR[t]) / ABAR[t]) for t in reversed(kept)] + [0.0]
    torch.testing.assert_close(denoiser.sigmas(steps), torch.tensor(expected, dtype=D), rtol=1e-12, atol=0)
    # nearest-step lookup is exact on that grid
    assert denoiser.timesteps(denoiser.sigmas(steps)[:-1]).tolist() == list(reversed(kept))
    assert len(denoiser.sigmas(500)) == 101  # more steps than the diffusion has: all of them


def test_off_grid_sigmas_map_to_the_nearest_step_in_log_sigma():
    denoiser, _ = _denoiser()
    table = np.sqrt((1 - ABAR) / ABAR)
    for sigma in karras_sigmas(9, denoiser.sigma_min, denoiser.sigma_max)[:-1].tolist():
        expected = int(np.argmin(np.abs(np.log(table) - np.log(sigma))))
        assert denoiser.timesteps(torch.tensor([sigma], dtype=D)).item() == expected


@pytest.mark.parametrize("rescale", [False, True])
def test_eps_model_sees_the_vp_state_and_gives_x_minus_sigma_eps(rescale):
    denoiser, net = _denoiser(rescale=rescale)
    t = torch.tensor([3, 40, 97])
    sigma = torch.from_numpy(np.sqrt((1 - ABAR[t]) / ABAR[t]))
    x0 = torch.rand(3, 1, 4, 4, dtype=D, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    x_vp = torch.from_numpy(np.sqrt(ABAR[t])).reshape(-1, 1, 1, 1) * x0 + torch.from_numpy(
        np.sqrt(1 - ABAR[t])).reshape(-1, 1, 1, 1) * eps
    x_ve = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    out = denoiser(x_ve, sigma)
    seen_x, seen_t = net.calls[-1]
    torch.testing.assert_close(seen_x, x_vp, rtol=1e-12, atol=1e-12)
    expected_t = t.to(D) * 10.0 if rescale else t  # rescaled to [0, 1000)
    torch.testing.assert_close(seen_t, expected_t.to(seen_t.dtype))
    # x0 = x_vp / sqrt(abar) - sqrt(1/abar - 1) eps_hat (Ho et al. eq. 15); learned-variance channels dropped
    eps_hat = net(x_vp, seen_t)[:, :1]
    abar = torch.from_numpy(ABAR[t]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, x_vp / abar.sqrt() - (1 / abar - 1).sqrt() * eps_hat, rtol=1e-10, atol=1e-10)


def test_x0_model_output_is_the_estimate_and_clip_clamps_it():
    denoiser, net = _denoiser(mean_type="x0", var_type="fixed_small")
    x = torch.linspace(-3, 3, 16, dtype=D).reshape(1, 1, 4, 4)
    sigma = torch.tensor([denoiser.sigma_min], dtype=D)
    raw = denoiser(x, sigma)
    torch.testing.assert_close(raw, torch.sin(3 * net.calls[-1][0]))  # t = 0: the net's output itself
    clipped, _ = _denoiser(mean_type="x0", var_type="fixed_small", clip=True)
    big = DiscreteVPDenoiser(lambda x, t: 5 * x, clipped.diffusion, clip=True)
    assert big(x, sigma).abs().max() == 1.0 and DiscreteVPDenoiser(lambda x, t: 5 * x, clipped.diffusion,
                                                                   clip=False)(x, sigma).abs().max() > 1


def test_model_kwargs_are_passed_through():
    seen = {}

    def model(x, t, counts):
        seen["counts"] = counts
        return torch.zeros_like(x)

    denoiser, _ = _denoiser(var_type="fixed_small")
    conditioned = DiscreteVPDenoiser(model, denoiser.diffusion, {"counts": torch.tensor([2.0])})
    conditioned(torch.zeros(1, 1, 2, 2, dtype=D), torch.tensor([1.0], dtype=D))
    assert seen["counts"].tolist() == [2.0]


def test_sample_with_uses_the_denoisers_schedule_and_seed():
    """``sample_with`` on a denoiser whose answer is known: x0 = c for every input gives c exactly (euler ends on
    the estimate), whatever the schedule; the initial noise is sigmas[0] * N(0, I) from the seed."""

    class Constant:
        sigma_min, sigma_max = 0.01, 50.0

        def __init__(self):
            self.first = None

        def sigmas(self, steps):
            return vp_sigmas(ABAR, steps)

        def __call__(self, x, sigma):
            if self.first is None:
                self.first = (x.clone(), sigma.clone())
            return torch.full_like(x, 0.25)

    for schedule, top in (("default", np.sqrt((1 - ABAR[90]) / ABAR[90])), ("karras", 50.0)):
        constant = Constant()
        out = sample_with(constant, (64, 3), SamplerSettings(name="euler", steps=10, schedule=schedule, seed=3),
                          "cpu", D)
        torch.testing.assert_close(out, torch.full((64, 3), 0.25, dtype=D))
        x, sigma = constant.first
        noise = torch.randn(64, 3, dtype=D, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(x, noise * top, rtol=1e-12, atol=0)
        assert sigma.shape == (64,) and sigma[0].item() == pytest.approx(top, rel=1e-12)
