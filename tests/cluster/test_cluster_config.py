"""cluster.yaml passes Ray's own cluster-config validation offline and has what the README promises.

Ray 2.60: ``ray.autoscaler._private.util.prepare_config`` (merges the provider's defaults, the setup commands and
per-type worker limits) then ``validate_config`` (the JSON schema plus the head/min/max checks); no cloud calls.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster_helpers import REPO, tiny_run, write_yaml

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def node_types(config: dict) -> dict[str, dict]:
    return {name: spec for name, spec in config["available_node_types"].items() if name != config["head_node_type"]}


def setup_commands_of(config: dict, node_type: str) -> list[str]:
    """What the autoscaler runs on a worker of ``node_type``: its own list replaces the merged global one."""
    spec = config["available_node_types"][node_type]
    return spec.get("worker_setup_commands", config["worker_setup_commands"])


def test_ray_validation_accepts_the_file_and_rejects_a_broken_copy(raw: dict, prepared: dict) -> None:
    assert prepared["provider"]["type"] == "aws"
    broken = copy.deepcopy(raw)
    del broken["available_node_types"]["cpu_persistence"]["resources"]
    with pytest.raises(Exception, match="resources"):
        validate_config(prepare_config(broken))


def test_cpu_node_type_carries_the_persistence_resource_and_gpu_type_the_gpus(prepared: dict) -> None:
    workers = node_types(prepared)
    with_persistence = [name for name, spec in workers.items() if spec["resources"].get("persistence", 0) > 0]
    with_gpus = [name for name, spec in workers.items() if spec["resources"].get("GPU", 0) > 0]
    assert with_persistence == ["cpu_persistence"] and with_gpus == ["gpu_train"]
    cpu = workers["cpu_persistence"]["resources"]
    assert cpu.get("GPU", 0) == 0 and cpu["persistence"] <= cpu["CPU"]  # one unit per 1-CPU actor at most
    head = prepared["available_node_types"][prepared["head_node_type"]]["resources"]
    assert head.get("GPU", 0) == 0 and head.get("persistence", 0) == 0
    for spec in workers.values():  # autoscaling: may scale to zero, and up
        assert 0 == spec["min_workers"] < spec["max_workers"] <= prepared["max_workers"]


def test_dashboard_is_bound_to_loopback_and_token_auth_is_on(prepared: dict) -> None:
    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_every_node_type_installs_ray_and_raytopo_with_the_right_torch(prepared: dict) -> None:
    cpu_index = "download.pytorch.org/whl/cpu"
    for node_type, torch_from_cpu_index in (("cpu_persistence", True), ("gpu_train", False)):
        commands = setup_commands_of(prepared, node_type)
        text = "\n".join(commands)
        assert "ray[default" in text and "pip install -q -e ~/raytopo" in text, node_type
        torch_lines = [line for line in commands if '"torch==' in line]
        assert torch_lines and all((cpu_index in line) == torch_from_cpu_index for line in torch_lines), node_type
    assert prepared["file_mounts"]["~/raytopo"] == "."


def test_readme_cluster_overrides_place_actors_on_the_persistence_type(tmp_path, prepared: dict) -> None:
    """The README's `--set ray.actor_resources.persistence=1` asks for exactly the resource the CPU type has."""
    from raytopo.train.config import load_run_config

    config = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "runs"))
    run = load_run_config(config, ["ray.use_gpu=true", "ray.actor_resources.persistence=1"])
    assert run.ray.use_gpu and run.ray.actor_resources == {"persistence": 1}
    cpu_type = prepared["available_node_types"]["cpu_persistence"]["resources"]
    assert set(run.ray.actor_resources) <= set(cpu_type)
    readme = (REPO / "README.md").read_text()
    assert "--set ray.actor_resources.persistence=1" in readme


def _all_setup_commands(prepared: dict) -> dict[str, str]:
    commands = {prepared["head_node_type"]: "\n".join(prepared["setup_commands"])}
    commands.update({name: "\n".join(setup_commands_of(prepared, name)) for name in node_types(prepared)})
    return commands


def test_ssh_is_not_open_to_the_world(prepared: dict) -> None:
    """Without SecurityGroupIds Ray creates a group with SSH from 0.0.0.0/0 (ray/autoscaler/_private/aws/config.py,
    _create_default_ssh_inbound_rules): every node type must name its own group."""
    for name, spec in prepared["available_node_types"].items():
        assert spec["node_config"].get("SecurityGroupIds"), name
    assert "--cidr YOUR.IP.ADDRESS/32" in CLUSTER_YAML.read_text() and "0.0.0.0/0" not in CLUSTER_YAML.read_text()


def test_every_node_mounts_shared_storage_and_exports_the_token_mode(prepared: dict) -> None:
    for name, text in _all_setup_commands(prepared).items():
        assert "export RAY_AUTH_MODE=token' >> ~/.bashrc" in text, name        # ray exec / attach shells
        assert "/mnt/shared" in text and "mount -t nfs4" in text, name
    assert "--set ray.storage_path=/mnt/shared/runs" in (REPO / "README.md").read_text()


def test_the_git_history_is_not_synced(prepared: dict) -> None:
    assert {"**/.git", "**/.git/**"} <= set(prepared["rsync_exclude"])


def test_job_drivers_on_the_head_put_relative_outputs_on_the_shared_mount(prepared: dict) -> None:
    """Job drivers inherit the head's `ray start` environment: RAYTOPO_JOB_ROOT must name the shared mount."""
    from raytopo.job_paths import JOB_ROOT_ENV

    start = " ".join(prepared["head_start_ray_commands"])
    assert f"{JOB_ROOT_ENV}=/mnt/shared" in start
    assert all("/mnt/shared" in text for text in _all_setup_commands(prepared).values())
