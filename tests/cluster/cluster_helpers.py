"""Helpers for the cluster tests: a tiny TDN run, free ports, and a real `ray start --head` we always stop.

A head started here runs ``ray start --head --block`` in a new session with its own ``--temp-dir`` (so it never
becomes the machine's "current cluster" that a bare ``ray.init()`` would attach to) and its own ports. Teardown
never calls ``ray stop`` (that kills every Ray process on the machine, other people's included): it sends
SIGTERM to the ``ray start`` process, then SIGKILLs whatever is left in that session (GCS, raylets, dashboard,
workers, and the raylets the fake autoscaler started), by process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]


def tiny_run(storage: Path, name: str = "tiny", **ray: Any) -> dict[str, Any]:
    """The plain dict of a 4-step TDN run on 16 px shapes with one worker and one persistence actor."""
    return {
        "family": "tdn",
        "model": {"unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": [8]},
                  "diffusion": {"steps": 100}, "topo": {"weight": 0.01}},
        "data": {"source": "shapes", "image_size": 16, "num_images": 32, "max_count": 3},
        "train": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 4},
        "ray": {"num_workers": 1, "cpus_per_worker": 0.5, "persistence_actors": 1, "cpus_per_actor": 0.5,
                "storage_path": str(storage), "name": name, **ray},
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_sources(dest: Path) -> Path:
    """A minimal working directory for a job: the package and the job scripts, no caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("raytopo", "jobs"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    return dest


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns a truthy value; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def session_pids(sid: int) -> list[int]:
    """Process ids in session ``sid`` (read from /proc), this process excluded."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


class RayHead:
    """What a started head offers: its GCS and dashboard addresses, and the session's logs folder."""

    def __init__(self, port: int, dashboard_port: int, temp_dir: Path, process: subprocess.Popen):
        self.port, self.dashboard_port, self.temp_dir, self.process = port, dashboard_port, temp_dir, process

    @property
    def gcs_address(self) -> str:
        from ray._private.services import get_node_ip_address

        return f"{get_node_ip_address()}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def logs(self, name: str) -> str:
        found = sorted(self.temp_dir.glob(f"session_*/logs/{name}"))
        return found[-1].read_text(errors="replace") if found else f"(no {name})"


@contextmanager
def ray_head(num_cpus: float, env: dict[str, str], extra: Sequence[str] = (), port: int | None = None
             ) -> Iterator[RayHead]:
    """``ray start --head --block`` with the dashboard on 127.0.0.1; stopped by process id on exit.

    The temp dir is a short one under /tmp (Ray's socket paths must stay under 107 bytes), removed afterwards.
    """
    port, dashboard_port = port or free_port(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
        f"--num-cpus={num_cpus}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", *extra,
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env}
    env.pop("RAY_ADDRESS", None)
    output = open(temp_dir / "ray_start.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(port, dashboard_port, temp_dir, process)
    try:
        wait_for(lambda: process.poll() is not None or (_port_open(port) and _port_open(dashboard_port)),
                 timeout=120, what="the Ray head's GCS and dashboard ports")
        if process.poll() is not None:
            raise AssertionError(f"ray start exited with {process.returncode}:\n"
                                 + (temp_dir / "ray_start.log").read_text(errors="replace")[-3000:])
        yield head
    finally:
        _stop_session(process)
        output.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_session(process: subprocess.Popen) -> None:
    """SIGTERM the ``ray start --block`` process (it stops its node), then SIGKILL anything left in its session."""
    sid = process.pid  # start_new_session: the session id is the leader's pid
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for _ in range(3):
        left = session_pids(sid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
