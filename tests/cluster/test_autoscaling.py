"""Ray's fake multi-node provider runs the real (v1) autoscaler on this machine, on cluster.yaml's node types.

The node types are read from the repository's own ``cluster.yaml`` and translated for the fake provider: the
same names and the same kinds of resources (``CPU``, ``GPU``, ``persistence``), one unit of each, since this
machine has two cores (the fake provider requires its head type to be called ``ray.head.default``). As in the
real file, the head has no ``persistence``: a tiny TDN training whose two persistence actors ask for
``persistence: 1`` can only run once the autoscaler has launched two ``cpu_persistence`` nodes; ``gpu_train``
nodes are never asked for (the run trains on CPU) and must not appear; after the run the idle nodes are removed
(``idle_timeout_minutes: 0.1``).

``ray.cluster_utils.AutoscalingCluster`` is not used: in Ray 2.60 it runs ``ray stop --force`` (every Ray process
on the machine, other people's included) and reads ``fake_multi_node/example.yaml``, which the wheel does not
ship. The full config it would generate is written here instead, and the head is stopped by process id.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster_helpers import REPO, free_port, ray_head, write_yaml

HERE = Path(__file__).resolve().parent
FAKE_HEAD_TYPE = "ray.head.default"


def fake_node_types(cluster_yaml: Path, max_workers: int = 2) -> dict:
    """cluster.yaml's node types for the fake provider: one unit of each resource, at most ``max_workers`` each."""
    real = yaml.safe_load(cluster_yaml.read_text())
    types = {}
    for name, spec in real["available_node_types"].items():
        head = name == real["head_node_type"]
        types[FAKE_HEAD_TYPE if head else name] = {
            "resources": {key: min(value, 1) for key, value in spec["resources"].items()},
            "node_config": {},
            "min_workers": 0 if head else spec.get("min_workers", 0),
            "max_workers": 0 if head else min(spec.get("max_workers", 0), max_workers),
        }
    return types


def test_fake_node_types_keep_cluster_yaml_names_and_resource_kinds() -> None:
    types = fake_node_types(REPO / "cluster.yaml")
    assert types[FAKE_HEAD_TYPE]["resources"] == {"CPU": 1}  # no GPU, no persistence on the head
    assert types["cpu_persistence"]["resources"] == {"CPU": 1, "persistence": 1}
    assert types["gpu_train"]["resources"] == {"CPU": 1, "GPU": 1}


def fake_cluster_config(gcs_address: str) -> dict:
    """A complete autoscaler config for provider ``fake_multinode`` (what ``prepare_config`` would produce)."""
    return {
        "cluster_name": "raytopo-fake",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": fake_node_types(REPO / "cluster.yaml"),
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {}, "docker": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.mark.slow
def test_training_scales_the_persistence_node_type_up_and_back_down(tmp_path: Path) -> None:
    from ray._private.services import get_node_ip_address

    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_AUTH_TOKEN": ""}
    port = free_port()
    config = write_yaml(tmp_path / "fake.yaml", fake_cluster_config(f"{get_node_ip_address()}:{port}"))
    env = {**auth, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "0"}

    with ray_head(num_cpus=1, env=env, port=port, extra=[f"--autoscaling-config={config}"]) as head:
        driver_env = {**os.environ, **auth, "RAY_ADDRESS": head.gcs_address, "PYTHONPATH": str(REPO)}
        result = tmp_path / "observed.json"
        driver = subprocess.run([sys.executable, str(HERE / "autoscale_driver.py"), "2", "180", str(result),
                                 str(tmp_path / "runs")],
                                env=driver_env, capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0 and result.is_file(), (
            f"driver failed ({driver.returncode}):\n{driver.stdout[-2000:]}\n{driver.stderr[-4000:]}\n--- monitor.log ---\n"
            f"{head.logs('monitor.log')[-3000:]}")
    seen = json.loads(result.read_text())

    assert seen["before"] == 1
    assert seen["step"] == 4, seen  # the run trained to the end with its actors on the new nodes
    assert seen["peak"]["persistence"] == 2 and seen["peak"]["nodes"] == 3, seen
    assert seen["peak"]["GPU"] == 0, f"a gpu_train node was launched for a CPU run: {seen}"
    assert seen["after"] == 1, f"idle persistence nodes were not removed: {seen}"
