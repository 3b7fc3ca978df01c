"""Where outputs go when a command runs as a submitted Ray job.

``ray job submit --working-dir .`` runs the job's driver inside a temporary copy of the uploaded directory,
keyed by its hash: a relative ``runs/`` written by one job is gone for the next one as soon as a single file
of the upload changes. So inside a job every *run or sample path* (``ray.storage_path``, a checkpoint, a
samples folder, ``--out``) must outlive the job:

* an absolute path or a URI (``s3://...``) is used as given;
* a relative path is placed under ``$RAYTOPO_JOB_ROOT`` when the cluster sets it (cluster.yaml sets
  ``/mnt/shared``, the shared file system every node mounts), so the README's relative ``runs/...`` works
  from job to job;
* otherwise it is refused with one line, before Ray or any worker starts.

Inputs that ship with the upload (configs, small datasets) stay relative to the working directory; only the
paths raytopo writes, and those it reads back from earlier jobs, go through :func:`outside_job_copy`.
Outside a job nothing changes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

from raytopo.errors import ConfigError

JOB_MARKER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray sets it for the driver of every submitted job
JOB_ROOT_ENV = "RAYTOPO_JOB_ROOT"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3://..., gs://..., pretrained:NAME

PathLike = TypeVar("PathLike", str, Path)


def in_ray_job() -> bool:
    """True in the driver process of a job started by ``ray job submit``."""
    return JOB_MARKER_ENV in os.environ


def outside_job_copy(path: PathLike, what: str) -> PathLike:
    """``path`` unchanged outside a job; inside one, a path that outlives the job (see the module docstring).

    Args:
        path: a run, checkpoint or output path as the user gave it.
        what: the flag or config key it came from, for the error message.

    Raises:
        ConfigError: inside a job, ``path`` is relative and ``RAYTOPO_JOB_ROOT`` is not set (or not absolute).
    """
    text = str(path)
    if not in_ray_job() or _SCHEME.match(text) or Path(text).expanduser().is_absolute():
        return path
    root = os.environ.get(JOB_ROOT_ENV, "")
    if not root:
        raise ConfigError(
            f"{what}: {text!r} is relative, and inside a Ray job it would land in the job's temporary copy of the "
            f"working directory; give an absolute path on shared storage (e.g. /mnt/shared/{text}), a URI, or set "
            f"{JOB_ROOT_ENV} on the cluster")
    if not Path(root).is_absolute():
        raise ConfigError(f"{JOB_ROOT_ENV}: expected an absolute path, got {root!r}")
    return type(path)(Path(root) / text)
