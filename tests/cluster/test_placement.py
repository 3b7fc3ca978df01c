"""Multi-node placement: training workers on the training node, persistence actors on the persistence node.

``ray.cluster_utils.Cluster`` starts two Ray nodes on this machine: a "train" node (the head) with the custom
resource ``trainer`` and a "persistence" node with ``persistence: 2``. A tiny TDN run asks for
``ray.worker_resources: {trainer: 1}`` and ``ray.actor_resources: {persistence: 1}``; Ray's state API then
says on which node each training worker (``RayTrainWorker``) and persistence actor (``_PersistenceWorker``)
ran, and the run's finite ``topo`` metric shows that TDN steps used diagrams computed across the two nodes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cluster_helpers import free_port, tiny_run


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch):
    """A 2-node cluster with a driver attached; never published as the machine's current cluster."""
    import ray
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster writes (and on shutdown deletes) /tmp/ray/ray_current_cluster, which a bare ray.init() elsewhere
    # on this machine would attach to; keep this cluster private.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster()
    try:
        train = cluster.add_node(num_cpus=1, resources={"trainer": 1}, include_dashboard=True,
                                 dashboard_host="127.0.0.1", dashboard_port=free_port(),
                                 dashboard_agent_listen_port=free_port())
        persistence = cluster.add_node(num_cpus=1, resources={"persistence": 2})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster, train.node_id, persistence.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()


def actor_nodes(address: str, class_name: str) -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", class_name)], detail=True)
    return [actor.node_id for actor in actors]


def test_workers_on_the_train_node_and_persistence_actors_on_the_persistence_node(two_nodes, tmp_path: Path) -> None:
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import run_training

    cluster, train_node, persistence_node = two_nodes
    run = parse_run_config(tiny_run(tmp_path / "runs", name="placed", num_workers=1, cpus_per_worker=0.5,
                                    worker_resources={"trainer": 1}, persistence_actors=2, cpus_per_actor=0.5,
                                    actor_resources={"persistence": 1}))
    outcome = run_training(run, address=cluster.address)

    assert outcome.metrics["step"] == 4 and outcome.checkpoint is not None
    assert math.isfinite(outcome.metrics["topo"]) and outcome.metrics["topo"] > 0
    workers = actor_nodes(cluster.address, "RayTrainWorker")
    actors = actor_nodes(cluster.address, "_PersistenceWorker")
    assert workers and set(workers) == {train_node}, workers
    assert len(actors) == 2 and set(actors) == {persistence_node}, actors
