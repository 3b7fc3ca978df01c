"""Timestep samplers: importance weights 1/(T p_t) and the loss-second-moment distribution (iDDPM eq. 18)."""

import numpy as np
import pytest
import torch

from raytopo.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler, named_sampler
from raytopo.errors import ConfigError, InputError


def test_uniform_sampler():
    sampler = UniformSampler(50)
    t, w = sampler.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and w.dtype == torch.float32 and t.shape == w.shape == (20_000,)
    assert t.min() >= 0 and t.max() < 50 and torch.all(w == 1)
    counts = np.bincount(t.numpy(), minlength=50)
    assert np.abs(counts - 400).max() < 5 * np.sqrt(400)


def _warm(sampler, losses_per_step):
    for _ in range(sampler.history):
        sampler.update(torch.arange(sampler.num_steps), torch.as_tensor(losses_per_step))


def test_loss_second_moment_is_uniform_until_warmed_up():
    sampler = LossSecondMomentSampler(8, history=3)
    sampler.update([0, 1, 2, 3, 4, 5, 6], [1.0] * 7)
    for _ in range(2):
        sampler.update(list(range(8)), [5.0] * 8)
    assert not sampler.warmed_up()  # step 7 has only 2 of 3 losses
    np.testing.assert_array_equal(sampler.weights(), np.ones(8))
    sampler.update([7], [1.0])
    assert sampler.warmed_up()


def test_loss_second_moment_probabilities_and_weights():
    steps = 10
    sampler = LossSecondMomentSampler(steps, history=4, uniform_prob=0.01)
    losses = np.arange(1, steps + 1, dtype=np.float64)
    _warm(sampler, losses)
    expected_p = 0.99 * losses / losses.sum() + 0.01 / steps  # RMS of a constant history is the loss
    np.testing.assert_allclose(sampler.probabilities(), expected_p, rtol=1e-12)
    t, w = sampler.sample(50_000, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(w.numpy(), 1.0 / (steps * expected_p[t.numpy()]), rtol=1e-6)
    freq = np.bincount(t.numpy(), minlength=steps) / 50_000
    assert np.abs(freq - expected_p).max() < 5 * np.sqrt(expected_p.max() / 50_000)
    # importance weighting keeps the objective unbiased: E_p[w L] equals the uniform mean of L
    assert (w.double().numpy() * losses[t.numpy()]).mean() == pytest.approx(losses.mean(), rel=0.02)


def test_history_keeps_the_most_recent_losses():
    sampler = LossSecondMomentSampler(2, history=2, uniform_prob=0.5)
    for loss in (100.0, 3.0, 4.0):  # 100 is shifted out
        sampler.update([0, 1], [loss, 1.0])
    rms0 = np.sqrt((3.0**2 + 4.0**2) / 2)
    p0 = 0.5 * rms0 / (rms0 + 1.0) + 0.25
    np.testing.assert_allclose(sampler.probabilities(), [p0, 1 - p0], rtol=1e-12)


def test_update_validation_and_names():
    sampler = LossSecondMomentSampler(5)
    with pytest.raises(InputError, match="ts: expected steps in"):
        sampler.update([5], [1.0])
    with pytest.raises(InputError, match="one loss per timestep"):
        sampler.update([1, 2], [1.0])
    with pytest.raises(InputError, match="finite"):
        sampler.update([1], [float("nan")])
    assert isinstance(named_sampler("uniform", 5), UniformSampler)
    assert isinstance(named_sampler("loss-second-moment", 5), LossSecondMomentSampler)
    with pytest.raises(ConfigError, match="schedule_sampler: expected one of uniform, loss-second-moment"):
        named_sampler("lossaware", 5)
    with pytest.raises(ConfigError, match="num_steps"):
        UniformSampler(0)
