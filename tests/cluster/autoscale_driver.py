"""Driver for test_autoscaling.py, run as its own process against a fake multi-node cluster (RAY_ADDRESS).

A PersistencePool asks for more ``persistence`` actors than the head can hold (the head has none of that
resource), waits for the autoscaler to add nodes, maps a batch, closes, and watches the nodes go away.
Writes its observations as JSON to the file named by argv[3]; the test asserts on them. Run as a separate process so that the token
settings of the cluster never leak into the pytest process.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import ray


def node_and_sum(item: np.ndarray) -> tuple[str, float]:
    """Defined in __main__, so Ray pickles it by value for the actors."""
    return ray.get_runtime_context().get_node_id(), float(item.sum())


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def main(num_actors: int, scale_down_timeout: float) -> dict:
    from raytopo.parallel.pool import PersistencePool, PoolConfig

    ray.init()  # RAY_ADDRESS
    head = ray.get_runtime_context().get_node_id()
    before = len(alive_nodes())
    batch = np.arange(4 * 3 * 3, dtype=np.float32).reshape(4, 3, 3)
    pool = PersistencePool(PoolConfig(num_actors=num_actors, cpus_per_actor=1, resources={"persistence": 1}),
                           fn=node_and_sum)
    try:
        results = pool.map(batch)
        peak = alive_nodes()
    finally:
        pool.close()
    deadline = time.monotonic() + scale_down_timeout
    while len(alive_nodes()) > before and time.monotonic() < deadline:
        time.sleep(1)
    return {
        "head": head,
        "before": before,
        "peak": len(peak),
        "peak_persistence_nodes": sum(1 for n in peak if n["Resources"].get("persistence", 0) > 0),
        "after": len(alive_nodes()),
        "sums": [value for _, value in results],
        "expected_sums": [float(item.sum()) for item in batch],
        "actor_nodes": sorted({node for node, _ in results}),
    }


if __name__ == "__main__":
    observations = main(int(sys.argv[1]), float(sys.argv[2]))
    with open(sys.argv[3], "w") as out:
        json.dump(observations, out)
