"""2-D point clouds for the deformation experiments: seeded generators and user files.

The generators reproduce the shapes of Topo-GEN's synthetic demos (``synthetic_experiments.py``, summarised in
docs/references.md, Topo-GEN A.5 "Synthetic demo"), but draw from a seeded ``numpy`` generator so that a
preset gives the same clouds on every run. User clouds are a JSON list of ``[x, y]`` pairs or a ``.npy`` array
``[N, 2]``; anything else is an ``InputError`` naming the file and the expected shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from raytopo.errors import InputError

EXPECTED_SHAPE = "a JSON list of [x, y] pairs or a .npy array of shape [N, 2] with N >= 2"


def gaussian_clusters(
    rng: np.random.Generator, centres: Sequence[Sequence[float]], sizes: Sequence[int], spread: float
) -> np.ndarray:
    """``sum(sizes)`` points ``[N, 2]``: ``sizes[k]`` draws of a Gaussian (std ``spread``) about ``centres[k]``."""
    return np.concatenate([
        np.asarray(centre, dtype=np.float64) + rng.normal(scale=spread, size=(size, 2))
        for centre, size in zip(centres, sizes, strict=True)
    ])


def noisy_segment(
    rng: np.random.Generator, start: Sequence[float], step: Sequence[float], count: int, noise: float
) -> np.ndarray:
    """``count`` points ``start + i * step`` (``i = 0 .. count-1``) with Gaussian noise of std ``noise``."""
    offsets = np.arange(count, dtype=np.float64)[:, None] * np.asarray(step, dtype=np.float64)
    return np.asarray(start, dtype=np.float64) + offsets + rng.normal(scale=noise, size=(count, 2))


def random_circle(rng: np.random.Generator, count: int, radius: float) -> np.ndarray:
    """``count`` points on the circle of ``radius`` about the origin at uniformly random angles
    (as Topo-GEN's ``tadasets.dsphere(d=1, noise=0)``)."""
    angles = rng.uniform(0.0, 2.0 * np.pi, size=count)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def load_cloud(path: Path, role: str = "points") -> np.ndarray:
    """A user cloud ``[N, 2]`` float64 from a ``.json`` (list of ``[x, y]``) or ``.npy`` file.

    ``role`` names the cloud in messages (e.g. ``"target points"``). Raises ``InputError`` with one line naming
    the file for a missing or unreadable file, an unknown extension, a wrong shape, fewer than 2 points, or a
    non-finite coordinate.
    """
    path = Path(path)
    where = f"{role} file {path}"
    if not path.is_file():
        raise InputError(f"{where}: not found; expected {EXPECTED_SHAPE}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        raw = _read_json(path, where)
    elif suffix == ".npy":
        raw = _read_npy(path, where)
    else:
        raise InputError(f"{where}: unknown extension {path.suffix!r}; expected {EXPECTED_SHAPE}")
    return _validated_cloud(raw, where)


def _read_json(path: Path, where: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{where}: not readable as JSON ({_one_line(error)}); expected {EXPECTED_SHAPE}") from None


def _read_npy(path: Path, where: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{where}: not readable as .npy ({_one_line(error)}); expected {EXPECTED_SHAPE}") from None


def _validated_cloud(raw: object, where: str) -> np.ndarray:
    try:
        cloud = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected numeric coordinates, as {EXPECTED_SHAPE}") from None
    if cloud.ndim != 2 or cloud.shape[1] != 2 or cloud.shape[0] < 2:
        raise InputError(f"{where}: expected shape [N, 2] with N >= 2, got shape {list(cloud.shape)}")
    if not np.all(np.isfinite(cloud)):
        raise InputError(f"{where}: expected finite coordinates, found NaN or inf")
    return cloud


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
