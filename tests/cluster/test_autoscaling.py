"""Ray's fake multi-node provider runs the real (v1) autoscaler on this machine.

The head has 1 CPU and no ``persistence`` resource; the only worker type, ``cpu_persistence``, has 1 CPU and
``persistence: 1`` (the CPU node type of cluster.yaml in miniature). A PersistencePool asking for two actors with
``resources={"persistence": 1}`` cannot be placed on the head, so the autoscaler launches two such nodes; the
pool's map returns correct results computed on them; after the pool closes, the idle nodes are removed
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

from cluster_helpers import REPO, free_port, ray_head, write_yaml

HERE = Path(__file__).resolve().parent


def fake_cluster_config(gcs_address: str) -> dict:
    """A complete autoscaler config for provider ``fake_multinode`` (what ``prepare_config`` would produce)."""
    return {
        "cluster_name": "raytopo-fake",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu_persistence": {"resources": {"CPU": 1, "persistence": 1}, "node_config": {},
                                "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.mark.slow
def test_persistence_node_type_scales_up_for_a_pool_and_down_when_idle(tmp_path: Path) -> None:
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
        driver = subprocess.run([sys.executable, str(HERE / "autoscale_driver.py"), "2", "180", str(result)],
                                env=driver_env, capture_output=True, text=True, timeout=540)
        assert driver.returncode == 0 and result.is_file(), (
            f"driver failed ({driver.returncode}):\n{driver.stdout[-2000:]}\n{driver.stderr[-4000:]}\n--- monitor.log ---\n"
            f"{head.logs('monitor.log')[-3000:]}")
    seen = json.loads(result.read_text())

    assert seen["before"] == 1
    assert seen["sums"] == seen["expected_sums"]
    assert seen["peak_persistence_nodes"] == 2 and seen["peak"] == 3
    assert len(seen["actor_nodes"]) == 2 and seen["head"] not in seen["actor_nodes"]
    assert seen["after"] == 1, f"idle persistence nodes were not removed: {seen}"
