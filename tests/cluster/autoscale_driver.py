"""Driver for test_autoscaling.py, run as its own process against a fake multi-node cluster (RAY_ADDRESS).

It trains a tiny TDN run whose persistence actors ask for ``resources={"persistence": 1}``, which the head
does not have: the run can only proceed once the autoscaler has added ``cpu_persistence`` nodes. A thread
watches the cluster's nodes while it trains; after the run (and its pool) ends, the driver waits for the idle
nodes to go away. Writes its observations as JSON to the file named by argv[3]; the test asserts on them. Run
as a separate process so that the token settings of the cluster never leak into the pytest process.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray

from cluster_helpers import tiny_run


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def count_by_resource(nodes: list[dict]) -> dict[str, int]:
    """How many alive nodes offer each of ``persistence`` and ``GPU``."""
    return {key: sum(1 for n in nodes if n["Resources"].get(key, 0) > 0) for key in ("persistence", "GPU")}


class NodeWatcher(threading.Thread):
    """Polls the alive nodes every half second; keeps the peak counts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"nodes": 0, "persistence": 0, "GPU": 0}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            nodes = alive_nodes()
            for key, value in {"nodes": len(nodes), **count_by_resource(nodes)}.items():
                self.peak[key] = max(self.peak[key], value)
            self._stop_event.wait(0.5)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main(num_actors: int, scale_down_timeout: float, storage: Path) -> dict:
    from raytopo.train.config import parse_run_config
    from raytopo.train.trainer import run_training

    ray.init()  # RAY_ADDRESS
    before = len(alive_nodes())
    run = parse_run_config(tiny_run(storage, name="autoscaled", persistence_actors=num_actors, cpus_per_actor=1,
                                    actor_resources={"persistence": 1}))
    watcher = NodeWatcher()
    watcher.start()
    started = time.monotonic()
    outcome = run_training(run)
    trained_s = time.monotonic() - started
    watcher.stop()
    deadline = time.monotonic() + scale_down_timeout
    while len(alive_nodes()) > before and time.monotonic() < deadline:
        time.sleep(1)
    return {"before": before, "peak": watcher.peak, "after": len(alive_nodes()), "step": outcome.metrics.get("step"),
            "checkpoint": str(outcome.checkpoint), "trained_s": round(trained_s, 1)}


if __name__ == "__main__":
    observations = main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[4]))
    with open(sys.argv[3], "w") as out:
        json.dump(observations, out)
