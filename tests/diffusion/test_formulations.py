"""EDM and cosine-VP formulations against their defining formulas (Karras et al. 2022 Table 1; the cosine
schedule gamma(t) = cos^2((t + 0.0002) / 1.00025 * pi / 2)), and a Gaussian-data check through a library sampler."""

from __future__ import annotations

import math

import pytest
import torch

from raytopo.diffusion.formulations import (
    COSINE_SIGMA_MAX,
    COSINE_SIGMA_MIN,
    FormulationConfig,
    NetworkDenoiser,
    call_network,
    cosine_gamma,
    cosine_sigma,
    cosine_time,
    make_formulation,
    self_condition_input,
)
from raytopo.diffusion.samplers import karras_sigmas
from raytopo.errors import ConfigError
from raytopo.families.sampling import SamplerSettings, sample_with

SD = 0.5


def edm(**kw):
    return make_formulation(FormulationConfig(kind="edm", **kw))


def cosine(pred="x", **kw):
    return make_formulation(FormulationConfig(kind="cosine", pred=pred, **kw))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- EDM ------------------------------------------------------------------------------------------------------


def test_edm_denoiser_tends_to_the_identity_as_sigma_goes_to_zero_for_any_network():
    f = edm()
    x = torch.randn(3, 1, 4, 4, generator=_gen())
    weights = torch.randn(1, 1, 4, 4, generator=_gen(1))

    def arbitrary(net_input, net_time):  # any function of the inputs, of size O(1)
        return torch.tanh(net_input * weights + net_time.view(-1, 1, 1, 1) / 1000) * 3

    previous = None
    for sigma in (1e-1, 1e-3, 1e-6):
        s = torch.full((3,), sigma)
        net_input, net_time = f.network_inputs(x, s)
        error = float((f.denoised(arbitrary(net_input, net_time), x, s) - x).abs().max())
        # |D - x| = |(c_skip - 1) x + c_out F| <= sigma^2 / (sigma^2 + sd^2) |x| + c_out |F|
        bound = sigma**2 / (sigma**2 + SD**2) * float(x.abs().max()) + 3 * sigma * SD / math.sqrt(sigma**2 + SD**2)
        assert error <= bound + 1e-6
        assert previous is None or error < previous
        previous = error
    assert previous < 1e-5


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_edm_input_and_effective_target_have_unit_variance(sigma):
    f = edm()
    x0 = SD * torch.randn(20000, 1, 2, 2, generator=_gen(2), dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=_gen(3), dtype=torch.float64)
    pair = f.training_pair(x0, torch.full((len(x0),), sigma, dtype=torch.float64), noise)
    assert float(pair.net_input.var()) == pytest.approx(1.0, rel=0.03)  # Var(c_in x) = 1 (EDM eq. 7 rationale)
    assert float(pair.target.var()) == pytest.approx(1.0, rel=0.03)  # Var of F's effective target = 1
    torch.testing.assert_close(pair.x, x0 + sigma * noise)
    torch.testing.assert_close(pair.net_time, torch.full_like(pair.net_time, 250 * math.log(sigma)))


def test_edm_loss_weight_and_f_space_loss_equal_lambda_times_the_denoiser_error():
    f = edm()
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    torch.testing.assert_close(f.loss_weight(sigma), 1 / sigma**2 + 1 / SD**2)
    torch.testing.assert_close(f.loss_weight(sigma), (sigma**2 + SD**2) / (sigma * SD) ** 2)
    x0 = torch.rand(4, 1, 3, 3, generator=_gen(), dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(1), dtype=torch.float64)
    pair = f.training_pair(x0, sigma, noise)
    output = torch.randn(x0.shape, generator=_gen(2), dtype=torch.float64)  # any network output
    f_space = pair.weight * ((output - pair.target) ** 2).mean(dim=(1, 2, 3))
    d_space = (1 / sigma**2 + 1 / SD**2) * ((f.denoised(output, pair.x, sigma) - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(f_space, d_space)
    torch.testing.assert_close(pair.weight, torch.ones_like(sigma))  # lambda c_out^2 = 1


def test_edm_default_sigmas_are_the_karras_grid():
    f = edm(sigma_min=0.01, sigma_max=20.0, rho=5.0)
    torch.testing.assert_close(f.default_sigmas(12), karras_sigmas(12, 0.01, 20.0, 5.0).float())


# --- cosine VP ------------------------------------------------------------------------------------------------


def test_cosine_sigma_is_the_ve_level_of_gamma_and_time_is_its_exact_inverse():
    t = torch.linspace(0.0, 0.999, 1001, dtype=torch.float64)
    gamma = torch.cos((t + 0.0002) / 1.00025 * math.pi / 2) ** 2  # the reference's schedule, written out
    torch.testing.assert_close(cosine_gamma(t), gamma)
    torch.testing.assert_close(cosine_sigma(t), ((1 - gamma) / gamma).sqrt())
    torch.testing.assert_close(cosine_time(cosine_sigma(t)), t, rtol=0, atol=1e-12)
    sigma = torch.logspace(math.log10(COSINE_SIGMA_MIN), math.log10(COSINE_SIGMA_MAX), 500, dtype=torch.float64)
    torch.testing.assert_close(cosine_sigma(cosine_time(sigma)), sigma, rtol=1e-6, atol=0)


def test_cosine_time_never_reaches_one_even_for_huge_or_lognormal_levels():
    huge = torch.tensor([1e4, 1e6, 1e12, float("inf")], dtype=torch.float64)
    assert bool((cosine_time(huge) < 1).all()) and bool((cosine_time(torch.tensor([0.0, 1e-9])) >= 0).all())
    f = cosine(sigma_max=1000.0)
    sigma = f.sample_sigmas(50000, _gen(), "cpu")
    _, net_time = f.network_inputs(torch.zeros(50000, 1, 1, 1), sigma)
    assert float(net_time.max()) < 1000 and float(net_time.min()) >= 0
    # the reference's mapping would put ~16% of lognormal draws at t > 1; here sigma is clamped, then inverted
    assert float(sigma.max()) <= 1000.0


@pytest.mark.parametrize("noise_levels", ["lognormal", "uniform"])
def test_cosine_network_input_is_the_vp_state(noise_levels):
    f = cosine(noise_levels=noise_levels)
    x0 = torch.rand(64, 1, 3, 3, generator=_gen(), dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(1), dtype=torch.float64)
    sigma = f.sample_sigmas(64, _gen(2), "cpu").double()
    pair = f.training_pair(x0, sigma, noise)
    t = pair.net_time / 1000
    gamma = (torch.cos((t + 0.0002) / 1.00025 * math.pi / 2) ** 2).view(-1, 1, 1, 1)
    torch.testing.assert_close(pair.net_input, gamma.sqrt() * x0 + (1 - gamma).sqrt() * noise, rtol=1e-5, atol=1e-6)
    if noise_levels == "uniform":  # uniform in t between t(sigma_min) and t(sigma_max)
        assert float(t.min()) >= float(cosine_time(torch.tensor(0.002))) - 1e-9
        assert float(t.max()) <= float(cosine_time(torch.tensor(80.0))) + 1e-9


def test_cosine_eps_and_x_predictions_give_the_same_x0_for_consistent_outputs():
    x0 = torch.rand(5, 1, 4, 4, generator=_gen(), dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(1), dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 60.0], dtype=torch.float64)
    by_x, by_eps = cosine("x"), cosine("eps")
    pair_x, pair_eps = by_x.training_pair(x0, sigma, noise), by_eps.training_pair(x0, sigma, noise)
    torch.testing.assert_close(pair_x.target, x0)
    torch.testing.assert_close(pair_eps.target, noise)
    torch.testing.assert_close(by_x.denoised(x0, pair_x.x, sigma), x0)
    torch.testing.assert_close(by_eps.denoised(noise, pair_eps.x, sigma), x0)
    torch.testing.assert_close(pair_x.weight, torch.ones_like(sigma))


def test_cosine_default_sigmas_are_uniform_in_t_and_end_in_zero():
    f = cosine()
    sigmas = f.default_sigmas(10).double()
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0
    t = cosine_time(sigmas[:-1])
    torch.testing.assert_close(t.diff(), torch.full((9,), float(t.diff()[0]), dtype=torch.float64), rtol=1e-4, atol=0)
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-5) and float(sigmas[-2]) == pytest.approx(0.002, rel=1e-4)


# --- a formulation's Denoiser around the exact posterior mean samples the data distribution ------------------


MU, S = 0.3, 0.2  # x0 ~ N(MU, S^2) per pixel: E[x0 | x] = (S^2 x + sigma^2 MU) / (S^2 + sigma^2)


def _posterior_mean(x, sigma):
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def _exact_network(kind):
    """A 'network' whose formulation output is the exact posterior mean, inverting the input maps by hand."""
    def network(net_input, net_time):
        if kind == "edm":
            sigma = torch.exp(net_time / 250).double()
            x = net_input * (sigma**2 + SD**2).sqrt().view(-1, 1, 1, 1)
            c_skip = (SD**2 / (sigma**2 + SD**2)).view(-1, 1, 1, 1)
            c_out = (sigma * SD / (sigma**2 + SD**2).sqrt()).view(-1, 1, 1, 1)
            return (_posterior_mean(x, sigma) - c_skip * x) / c_out
        t = (net_time / 1000).double()
        sigma = torch.tan((t + 0.0002) / 1.00025 * math.pi / 2)
        x = net_input * (1 + sigma**2).sqrt().view(-1, 1, 1, 1)
        if kind == "cosine-x":
            return _posterior_mean(x, sigma)
        return (x - _posterior_mean(x, sigma)) / sigma.view(-1, 1, 1, 1)  # eps = (x - x0) / sigma
    return network


@pytest.mark.parametrize("kind,sampler", [("edm", "heun"), ("edm", "dpmpp_2m"), ("cosine-x", "heun"),
                                         ("cosine-eps", "heun")])
def test_denoiser_around_the_posterior_mean_samples_the_gaussian_data(kind, sampler):
    config = FormulationConfig(kind="edm") if kind == "edm" else FormulationConfig(
        kind="cosine", pred=kind.split("-")[1])
    denoiser = NetworkDenoiser(make_formulation(config), _exact_network(kind))
    settings = SamplerSettings(name=sampler, steps=40, seed=1, clip=False)
    samples = sample_with(denoiser, (4000, 1, 2, 2), settings, "cpu", torch.float64)
    assert float(samples.mean()) == pytest.approx(MU, abs=0.01)
    assert float(samples.std()) == pytest.approx(S, rel=0.03)  # 40 second-order steps: ~1% discretisation error


# --- self-conditioning ----------------------------------------------------------------------------------------


class Recorder:
    """A network over 2C input channels that records its self-conditioning half and outputs 2C channels."""

    def __init__(self):
        self.seen = []

    def __call__(self, net_input, net_time):
        self.seen.append(net_input[:, 1:].clone())
        return torch.cat([net_input[:, :1] * 0 + 0.25, net_input[:, :1] * 0 - 7.0], dim=1)


def test_self_conditioning_feeds_back_the_previous_estimate_and_resets():
    f = make_formulation(FormulationConfig(kind="cosine", self_cond=True))
    network = Recorder()
    denoiser = NetworkDenoiser(f, network)
    x = torch.randn(2, 1, 3, 3, generator=_gen())
    first = denoiser(x, torch.full((2,), 1.0))
    assert first.shape == x.shape and torch.equal(first, torch.full_like(x, 0.25))  # extra output channel dropped
    denoiser(x, torch.full((2,), 0.5))
    assert torch.equal(network.seen[0], torch.zeros_like(x))
    assert torch.equal(network.seen[1], first)
    denoiser.reset()
    denoiser(x, torch.full((2,), 0.5))
    assert torch.equal(network.seen[2], torch.zeros_like(x))


def test_training_self_conditioning_runs_a_first_pass_about_half_of_the_calls():
    f = make_formulation(FormulationConfig(kind="cosine", self_cond=True))
    x0 = torch.zeros(2, 1, 3, 3)
    pair = f.training_pair(x0, torch.full((2,), 1.0), torch.ones_like(x0))
    used = 0
    for seed in range(400):
        cond = self_condition_input(f, Recorder(), pair, _gen(seed))
        assert torch.equal(cond, torch.zeros_like(x0)) or torch.equal(cond, torch.full_like(x0, 0.25))
        used += int(bool((cond != 0).any()))
    assert 150 < used < 250  # Binomial(400, 1/2): mean 200, std 10
    assert self_condition_input(make_formulation(FormulationConfig()), Recorder(), pair, _gen()) is None
    assert call_network(f, Recorder(), pair.net_input, pair.net_time, None).shape == x0.shape


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,field", [
    ({"kind": "edm", "pred": "eps"}, "model.formulation.pred"),
    ({"kind": "vp"}, "model.formulation.kind"),
    ({"sigma_data": 0.0}, "model.formulation.sigma_data"),
    ({"sigma_min": 1.0, "sigma_max": 0.5}, "model.formulation.sigma_min"),
    ({"kind": "cosine", "sigma_max": 2e4}, "model.formulation.sigma_min/sigma_max"),
    ({"kind": "cosine", "sigma_min": 1e-5}, "model.formulation.sigma_min/sigma_max"),
    ({"noise_levels": "karras"}, "model.formulation.noise_levels"),
])
def test_bad_formulation_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("/", "/")):
        FormulationConfig(**kwargs)
