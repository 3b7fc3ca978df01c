"""`ensure_ray` starts its own local cluster unless an address is given: a cluster that `ray start` left running on
the machine is never joined by accident (ray.init(address=None) would attach to it)."""

from __future__ import annotations

import pytest

from raytopo.train.trainer import ensure_ray


@pytest.fixture
def recorded_init(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_no_address_starts_a_new_local_cluster(recorded_init):
    assert ensure_ray(None) is True
    assert recorded_init[0]["address"] == "local" and recorded_init[0]["include_dashboard"] is False


def test_an_address_or_ray_address_attaches(recorded_init, monkeypatch):
    assert ensure_ray("ray://head:10001") is False
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert ensure_ray(None) is False
    assert [call["address"] for call in recorded_init] == ["ray://head:10001", "head:6379"]
