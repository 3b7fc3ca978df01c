"""The sampler library against closed forms (Gaussian data), against GaussianDiffusion's own DDIM/DDPM loops,
its argument checks, and `raytopo sample --sampler heun` on a TDN checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from raytopo import cli
from raytopo.diffusion.denoisers import DiscreteVPDenoiser
from raytopo.diffusion.gaussian import DiffusionConfig
from raytopo.diffusion.respace import build_diffusion
from raytopo.diffusion.samplers import (SAMPLERS, is_deterministic, karras_sigmas, sample, sample_ddim, sample_ddpm,
                                       vp_sigmas)
from raytopo.errors import ConfigError, InputError
from raytopo.families.sampling import SamplerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import tiny_config  # noqa: E402

D = torch.float64
MU = torch.tensor([0.3, -0.2], dtype=D)
S = torch.tensor([0.5, 0.5], dtype=D)
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
N = 20_000
ODE = ("euler", "heun", "dpm2", "dpmpp_2m", "ddim")          # ddim at its default eta 0
STOCHASTIC = (("ddpm", 1.0), ("ddpm_learned", 1.0), ("euler_ancestral", 1.0), ("ddim", 0.5))
assert set(ODE) | {name for name, _ in STOCHASTIC} | {"onestep"} == set(SAMPLERS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, S^2) per dimension: MU + S^2 / (S^2 + sigma^2) (x - MU)."""
    sigma = sigma[:, None]
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


# As a learned-variance model that always picks the posterior variance beta~ (f = 0): ddpm_learned is then ddpm.
gaussian_denoiser.with_variance = lambda x, sigma: (gaussian_denoiser(x, sigma), torch.zeros_like(x))


def exact_flow(x: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE solved exactly from SIGMA_MAX to 0 for that data: the map keeps the standardised
    value, x(sigma) = MU + sqrt((S^2 + sigma^2) / (S^2 + SIGMA_MAX^2)) (x - MU)."""
    return MU + S / torch.sqrt(S**2 + SIGMA_MAX**2) * (x - MU)


def start(seed: int = 0) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, 2, dtype=D, generator=generator) * SIGMA_MAX, generator


def run(name: str, steps: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    x, generator = start()
    out = sample(name, gaussian_denoiser, x, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), generator=generator,
                 **kwargs)
    return x, out


# Statistical tolerances: 5 standard errors of a mean / variance of N draws with variance S^2, plus the bias of
# starting at N(0, SIGMA_MAX^2) instead of the true N(MU, S^2 + SIGMA_MAX^2) (|MU| S / SIGMA_MAX <= 0.002).
MEAN_TOL = 5 * 0.5 / math.sqrt(N) + 0.002
VAR_TOL = 5 * 0.25 * math.sqrt(2 / N)


def moment_errors(out: torch.Tensor) -> tuple[float, float]:
    return (out.mean(0) - MU).abs().max().item(), (out.var(0) - S**2).abs().max().item()


@pytest.mark.parametrize("name", ODE)
def test_ode_samplers_converge_to_the_exact_flow_and_the_data_moments(name):
    errors = []
    for steps in (16, 64, 256):
        x, out = run(name, steps)
        errors.append((out - exact_flow(x)).abs().max().item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.03, errors
    mean_error, var_error = moment_errors(out)
    assert mean_error < MEAN_TOL and var_error < VAR_TOL, (mean_error, var_error)


def test_second_order_samplers_converge_faster_than_euler():
    """Global error O(h) for Euler vs O(h^2) for Heun, DPM2 and DPM-Solver++(2M): at 256 steps >= 10x smaller."""
    x, euler = run("euler", 256)
    euler_error = (euler - exact_flow(x)).abs().max().item()
    for name in ("heun", "dpm2", "dpmpp_2m"):
        x, out = run(name, 256)
        assert (out - exact_flow(x)).abs().max().item() < euler_error / 10, name


@pytest.mark.parametrize("name, eta", STOCHASTIC)
def test_stochastic_samplers_reach_the_data_moments(name, eta):
    _, few = run(name, 4, eta=eta)
    _, many = run(name, 1024, eta=eta)
    mean_error, var_error = moment_errors(many)
    assert mean_error < MEAN_TOL and var_error < VAR_TOL, (mean_error, var_error)
    assert moment_errors(few)[1] > 5 * VAR_TOL  # the discretisation error is visible at 4 steps and shrinks


def test_stochastic_samplers_are_reproducible_from_the_generator():
    for name, eta in STOCHASTIC:
        a, b = run(name, 8, eta=eta)[1], run(name, 8, eta=eta)[1]
        x, generator = start()
        other = sample(name, gaussian_denoiser, x, karras_sigmas(8, SIGMA_MIN, SIGMA_MAX),
                       generator=generator.manual_seed(1), eta=eta)
        assert torch.equal(a, b) and not torch.equal(a, other), name


@pytest.mark.parametrize("name, eta", [(name, None) for name in SAMPLERS] + [("ddim", 0.3), ("euler_ancestral", 0.0)])
def test_is_deterministic_matches_what_the_sampler_does(name, eta):
    """Two generator seeds give the same samples exactly when ``is_deterministic`` says so."""
    kwargs = {} if eta is None else {"eta": eta}
    x = torch.randn(64, 2, dtype=D, generator=torch.Generator().manual_seed(0)) * 10
    a, b = (sample(name, gaussian_denoiser, x, karras_sigmas(4, 0.01, 10.0),
                   generator=torch.Generator().manual_seed(seed), **kwargs) for seed in (1, 2))
    assert torch.equal(a, b) == is_deterministic(name, eta)


def test_onestep_gives_the_posterior_mean_not_samples():
    """One call of the exact denoiser returns E[x0 | x]: the right mean, but spread c * SIGMA_MAX with
    c = S^2 / (S^2 + SIGMA_MAX^2), i.e. about S^2 / SIGMA_MAX -> 0 (only a consistency model gives samples)."""
    x, out = run("onestep", 40)
    mean_error, _ = moment_errors(out)
    assert mean_error < MEAN_TOL
    c = S**2 / (S**2 + SIGMA_MAX**2)
    torch.testing.assert_close(out.std(0), c * x.std(0), rtol=1e-9, atol=0)
    assert (out.var(0) < 1e-3 * S**2).all()


# --- against GaussianDiffusion's loops on the same VP grid -----------------------------------------------------


class TinyNet(nn.Module):
    """A small random conv net whose output depends on the timestep (so a wrong timestep map shows)."""

    def __init__(self, out_channels: int = 2) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(2, out_channels, 3, padding=1).double()
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=D) * 0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * (1.0 + t.to(x.dtype).reshape(-1, 1, 1, 1) / 100.0)


def _vp_setup(var_type: str, mean_type: str = "epsilon", steps: int = 10):
    config = DiffusionConfig(steps=100, schedule="cosine", mean_type=mean_type, var_type=var_type)
    net = TinyNet(4 if var_type == "learned_range" else 2)
    base = build_diffusion(config)
    sigmas = vp_sigmas(base.alphas_cumprod, steps)
    noise = torch.randn(3, 2, 6, 6, dtype=D, generator=torch.Generator().manual_seed(5))
    # the VP prior sample x_T is the VE state x_T * sqrt(1 + sigma_T^2)
    return config, net, DiscreteVPDenoiser(net, base, clip=True), sigmas, noise, noise * (1 + sigmas[0] ** 2).sqrt()


@pytest.mark.parametrize("var_type, mean_type", [("learned_range", "epsilon"), ("fixed_small", "x0")])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_library_ddim_reproduces_the_respaced_ddim_loop(var_type, mean_type, eta):
    config, net, denoiser, sigmas, noise, x = _vp_setup(var_type, mean_type)
    expected = build_diffusion(config, "ddim10").ddim_sample_loop(
        net, noise.shape, noise=noise, eta=eta, generator=torch.Generator().manual_seed(7))
    got = sample_ddim(denoiser, x, sigmas, eta=eta, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_library_ddpm_reproduces_ancestral_ddpm_with_the_posterior_variance():
    """Same noise draws: library ddpm == p_sample_loop with fixed_small (beta~) on the ddim10 grid."""
    config, net, denoiser, sigmas, noise, x = _vp_setup("fixed_small")
    expected = build_diffusion(config, "ddim10").p_sample_loop(
        net, noise.shape, noise=noise, generator=torch.Generator().manual_seed(7))
    got = sample_ddpm(denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # ... and it is not what the large (beta_t) variance gives: the variance really is beta~.
    large = build_diffusion(DiffusionConfig(**{**config.to_dict(), "var_type": "fixed_large"}), "ddim10")
    other = large.p_sample_loop(net, noise.shape, noise=noise, generator=torch.Generator().manual_seed(7))
    assert (other - got).abs().max() > 1e-3


class InRangeVariance(nn.Module):
    """A learned-variance net whose variance channels v stay in [-1, 1] (f in [0, 1]), as iDDPM intends."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mean, v = self.net(x, t).chunk(2, dim=1)
        return torch.cat([mean, torch.tanh(v)], dim=1)


@pytest.mark.parametrize("var_type, mean_type", [("learned_range", "epsilon"), ("learned_range", "x0")])
def test_library_ddpm_learned_reproduces_ancestral_ddpm_with_the_learned_variance(var_type, mean_type):
    """Same noise draws: ddpm_learned == p_sample_loop of a learned-variance model respaced to ddim10 (what the
    TDN reference samples with), and it differs from the posterior-variance ddpm on the same draws."""
    config, net, _, sigmas, noise, x = _vp_setup(var_type, mean_type)
    net = InRangeVariance(net)
    denoiser = DiscreteVPDenoiser(net, build_diffusion(config), clip=True)
    expected = build_diffusion(config, "ddim10").p_sample_loop(
        net, noise.shape, noise=noise, generator=torch.Generator().manual_seed(7))
    got = sample("ddpm_learned", denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    posterior = sample_ddpm(denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    assert (posterior - got).abs().max() > 1e-3


@pytest.mark.parametrize("fraction, clamped", [(0.0, 0.0), (0.3, 0.3), (1.0, 1.0), (40.0, 1.0), (-3.0, 0.0)])
def test_ddpm_learned_step_has_the_interpolated_variance(fraction, clamped):
    """One step from a fixed x with a constant fraction f: the draws have mean D + (s'^2/s^2)(x - D) and, in VP
    terms, variance beta^f beta~^(1-f) (iDDPM eq. 15), beta = 1 - abar/abar', beta~ = beta (1-abar')/(1-abar).
    f outside [0, 1] (a drifted variance head) is clamped: the variance stays between beta~ and beta."""
    sigma, sigma_next, n = 2.0, 0.7, 200_000
    x = torch.full((n, 2), 1.3, dtype=D)

    class Constant:
        def __call__(self, x, s):
            return torch.full_like(x, 0.25)

        def with_variance(self, x, s):
            return self(x, s), torch.full_like(x, fraction)

    after_first_step = []
    sample("ddpm_learned", Constant(), x, torch.tensor([sigma, sigma_next, 0.0], dtype=D),
           generator=torch.Generator().manual_seed(0), callback=lambda i, x, d: after_first_step.append(x) if i == 0 else None)
    out = after_first_step[0]
    abar, abar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    beta = 1 - abar / abar_next
    beta_tilde = beta * (1 - abar_next) / (1 - abar)
    vp_variance = beta**clamped * beta_tilde ** (1 - clamped)
    mean = 0.25 + sigma_next**2 / sigma**2 * (1.3 - 0.25)
    ve_std = math.sqrt(vp_variance / abar_next)
    assert abs(out.mean().item() - mean) < 5 * ve_std / math.sqrt(2 * n)
    assert abs(out.std().item() / ve_std - 1) < 0.01


def test_ddpm_learned_needs_a_learned_variance():
    config, net, denoiser, sigmas, noise, x = _vp_setup("fixed_small")
    with pytest.raises(ConfigError, match="sampler ddpm_learned: the model has no learned variance"):
        sample("ddpm_learned", denoiser, x, sigmas)
    with pytest.raises(ConfigError, match="sampler ddpm_learned: expected a model trained with a learned variance"):
        sample("ddpm_learned", lambda x, s: x, x, sigmas)


# --- argument checks -----------------------------------------------------------------------------------------


def test_unknown_sampler_lists_the_registered_names():
    with pytest.raises(ConfigError, match="sampler: expected one of ddim, ddpm, ddpm_learned, euler, .*onestep, got 'pdm'"):
        sample("pdm", gaussian_denoiser, torch.zeros(2, 2), karras_sigmas(2, 0.1, 1.0))


@pytest.mark.parametrize("changes, field", [
    ({"name": "pdm"}, "sampler name"),
    ({"steps": 0}, "sampler steps"),
    ({"steps": 2.5}, "sampler steps"),
    ({"eta": 1.5}, "sampler eta"),
    ({"eta": -0.1}, "sampler eta"),
    ({"schedule": "linear"}, "sampler schedule"),
    ({"rho": 0.0}, "sampler rho"),
])
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError) as caught:
        SamplerSettings(**changes)
    assert str(caught.value).startswith(field + ":") and "\n" not in str(caught.value)


def test_sampler_argument_checks():
    x = torch.zeros(2, 2, dtype=D)
    with pytest.raises(ConfigError, match=r"eta: expected a number in \[0, 1\]"):
        sample_ddim(gaussian_denoiser, x, karras_sigmas(2, 0.1, 1.0), eta=1.5)
    with pytest.raises(ConfigError, match="steps: expected an integer >= 1"):
        karras_sigmas(0, 0.1, 1.0)
    with pytest.raises(ConfigError, match="sigma_min/sigma_max"):
        karras_sigmas(4, 1.0, 0.1)
    with pytest.raises(InputError, match="sigmas: expected positive, non-increasing values"):
        sample("euler", gaussian_denoiser, x, torch.tensor([1.0, 2.0, 0.0], dtype=D))
    with pytest.raises(InputError, match="sigmas: expected positive"):
        sample("euler", gaussian_denoiser, x, torch.tensor([1.0, 0.5], dtype=D))


def test_karras_sigmas_follow_eq_5():
    steps, low, high, rho = 5, 0.02, 20.0, 3.0
    expected = [(high ** (1 / rho) + i / (steps - 1) * (low ** (1 / rho) - high ** (1 / rho))) ** rho
                for i in range(steps)] + [0.0]
    torch.testing.assert_close(karras_sigmas(steps, low, high, rho), torch.tensor(expected, dtype=D))
    torch.testing.assert_close(karras_sigmas(1, low, high), torch.tensor([high, 0.0], dtype=D))


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tdn_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny TDN checkpoint written directly (no training, no Ray)."""
    from raytopo.registry import get_family
    from raytopo.checkpoint import save_checkpoint
    from raytopo.train.config import parse_run_config

    root = tmp_path_factory.mktemp("tdn")
    run = parse_run_config(tiny_config(root, name="heun", family="tdn"))
    torch.manual_seed(0)
    model = get_family("tdn").build(run)
    return save_checkpoint(root / "checkpoint", model, model, None, 0, run.to_plain())


def test_cli_samples_a_tdn_checkpoint_with_heun(tdn_checkpoint, tmp_path, capsys, monkeypatch):
    calls = []

    def spy(denoiser, x, sigmas, **kwargs):
        calls.append((denoiser, sigmas.clone()))
        return heun(denoiser, x, sigmas, **kwargs)

    heun = SAMPLERS["heun"]
    monkeypatch.setitem(SAMPLERS, "heun", spy)

    def masks(out: Path, *extra: str) -> dict[str, bytes]:
        assert cli.main(["sample", str(tdn_checkpoint), "--counts", "1,2", "--per-count", "1", "--steps", "3",
                         "--sampler", "heun", "--out", str(out), *extra]) == 0
        return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}

    first = masks(tmp_path / "heun")
    assert sorted(first) == ["1_00000.png", "2_00001.png"]
    assert masks(tmp_path / "again") == first
    # The TDN model ran through heun on its own grid: 3 strided steps of its 100-step cosine diffusion.
    denoiser, sigmas = calls[0]
    assert isinstance(denoiser, DiscreteVPDenoiser) and denoiser.diffusion.num_timesteps == 100
    torch.testing.assert_close(sigmas.double(), vp_sigmas(denoiser.diffusion.alphas_cumprod, 3).float().double())
    masks(tmp_path / "karras", "--schedule", "karras", "--rho", "3")
    denoiser, sigmas = calls[-1]
    expected = karras_sigmas(3, denoiser.sigma_min, denoiser.sigma_max, 3.0)
    torch.testing.assert_close(sigmas.double(), expected.float().double())
    capsys.readouterr()
    assert cli.main(["sample", str(tdn_checkpoint), "--counts", "1", "--sampler", "ddim", "--eta", "2",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "sampler eta: expected a number in [0, 1]" in capsys.readouterr().err
