"""How many torch threads the driver process may use without fighting Ray workers for cores.

Two compute threads on one core make torch 10-50x slower on small CPU models (measured here), so the driver
(sampling, evaluation) uses only the cores that no running Ray task or actor has reserved on a local cluster.
"""

from __future__ import annotations

import math
import os


def machine_cpus() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_cpus() -> int:
    """Cores left for the driver: this machine's, minus the CPUs Ray has handed out when the driver runs a
    local Ray cluster (on a remote cluster the workers are elsewhere). At least 1."""
    cores = machine_cpus()
    try:
        import ray

        if ray.is_initialized():
            total = ray.cluster_resources().get("CPU", 0.0)
            in_use = total - ray.available_resources().get("CPU", 0.0)
            if len(ray.nodes()) == 1:
                cores -= math.ceil(in_use - 1e-9)
    except ImportError:
        pass
    return max(1, cores)


def use_free_cpus() -> int:
    """Set torch's intra-op threads to `free_cpus` and return that number."""
    import torch

    threads = free_cpus()
    torch.set_num_threads(threads)
    return threads
