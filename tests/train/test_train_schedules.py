"""The learning-rate and EMA warm-ups of the train config, against their closed forms."""

from __future__ import annotations

import pytest

from raytopo.errors import ConfigError
from raytopo.train.config import TrainConfig


def test_linear_lr_warmup_reaches_lr_at_the_last_warmup_step_and_stays():
    config = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [config.lr_at(step) for step in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert TrainConfig(lr=1e-3).lr_at(0) == 1e-3


def test_ema_warmup_is_min_of_rate_and_1_plus_n_over_10_plus_n():
    config = TrainConfig(ema_rate=0.99, ema_warmup=True)
    assert config.ema_rate_at(0) == pytest.approx(0.1)
    assert config.ema_rate_at(90) == pytest.approx(91 / 100)
    assert config.ema_rate_at(10_000) == 0.99
    assert TrainConfig(ema_rate=0.99).ema_rate_at(0) == 0.99


def test_negative_warmup_is_rejected_naming_the_field():
    with pytest.raises(ConfigError, match="train.warmup_steps: expected >= 0, got -1"):
        TrainConfig(warmup_steps=-1)


def test_cosine_schedule_follows_its_closed_form_after_the_warmup():
    import math

    config = TrainConfig(steps=12, lr=1e-3, warmup_steps=2, lr_schedule="cosine", final_lr_ratio=0.1)
    assert [config.lr_at(step) for step in range(2)] == pytest.approx([5e-4, 1e-3])
    for step in range(2, 12):
        progress = (step - 2) / 9
        expected = 1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * progress)) / 2)
        assert config.lr_at(step) == pytest.approx(expected)
    assert config.lr_at(11) == pytest.approx(1e-4)       # the last step reaches final_lr_ratio * lr
    with pytest.raises(ConfigError, match="train.final_lr_ratio"):
        TrainConfig(final_lr_ratio=1.5)
