"""The TDN loss through the PersistencePool equals the in-process loss (what the trainer relies on)."""

import numpy as np
import pytest
import ray
import torch

from raytopo.parallel.pool import PersistencePool, PoolConfig
from raytopo.topology.losses import TDNLossConfig, critical_targets, gather_loss, tdn_loss


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("selection", ["match", "count"])
def test_pool_targets_give_the_in_process_loss_and_gradient(ray_cluster, selection):
    rng = np.random.default_rng(0)
    pred = torch.tensor(rng.uniform(-1, 1, size=(5, 1, 12, 10)), requires_grad=True)
    masks = -np.ones((5, 1, 12, 10))
    for i in range(5):
        masks[i, 0, 2:5, 2:5] = 1
        masks[i, 0, 7:10, 5 + i % 3:8 + i % 3] = 1
    config = TDNLossConfig(dims=(0, 1), selection=selection, noisy=True)
    target = np.full((5, 2), 2.0) if selection == "count" else masks
    expected = tdn_loss(pred, torch.tensor(target), config)
    (grad_expected,) = torch.autograd.grad(expected.sum(), pred)
    with PersistencePool(PoolConfig(num_actors=2, cpus_per_actor=0.5)) as pool:
        future = pool.submit((pred.detach().numpy(), target), fn=critical_targets, config=config)
        loss = gather_loss(pred, future.result())
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, grad_expected)
    assert (loss > 0).all()
