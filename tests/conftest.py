"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """One local 2-CPU Ray instance per test module (never attaches to a cluster left by ``ray start``)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()
