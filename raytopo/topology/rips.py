"""Vietoris-Rips persistence of point clouds, with the edges that create and destroy each feature.

The filtration is the Euclidean Vietoris-Rips filtration with Z/2 coefficients, no threshold and no
edge collapse, exactly as Topo-GEN calls giotto-ph (docs/references.md, Topo-GEN A.2). Every diagram
point is tied to edges of the cloud (docs/references.md, Design 4, ``Diagram`` docstring):

* H0: ``(0, d)`` born at vertex ``v`` (birth cell ``(v, v)``) and killed by the edge ``(a, b)`` with
  ``d = ||P[a] - P[b]||``. Exactly one essential H0 point: death ``+inf``, death cell ``(-1, -1)``.
* H1: ``(b, d)`` born with the edge ``(v0, v1)`` and killed by the edge ``(v2, v3)`` (the longest edge of
  the triangle that fills the cycle), ``b = ||P[v0] - P[v1]||``, ``d = ||P[v2] - P[v3]||``.

giotto-ph computes in float32. The diagrams stored here hold the float64 lengths of the generator edges
instead (so they agree exactly with the differentiable rebuild in ``regularisers.live_diagram``), after
checking that they match giotto-ph's own values: a check that the generator rows are aligned with the
diagram rows. Zero-persistence pairs are not reported (as in ripser).

Backends: ``"giotto"`` (giotto-ph ``ripser_parallel``, the fastest measured, docs/references.md, Design 9)
and ``"gudhi"`` (``RipsComplex`` + ``flag_persistence_generators``; 60-90x slower, fine for small clouds).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.spatial.distance import cdist

from raytopo.errors import ConfigError, InputError
from raytopo.topology.diagrams import Diagram

RipsBackend = Literal["giotto", "gudhi"]
RIPS_BACKENDS: tuple[str, ...] = ("giotto", "gudhi")
_FLOAT32_RTOL = 1e-5


def as_point_cloud(batch: np.ndarray) -> np.ndarray:
    """A batch ``[B, ...]`` as a point cloud ``[B, D]`` float64: each sample is one point (Topo-GEN A.1)."""
    array = np.asarray(batch, dtype=np.float64)
    if array.ndim < 2:
        raise InputError(f"point cloud: expected a batch of shape [B, ...] with ndim >= 2, got shape {array.shape}")
    return array.reshape(array.shape[0], -1)


def _validated_cloud(points: np.ndarray) -> np.ndarray:
    cloud = as_point_cloud(points)
    if cloud.shape[0] < 2:
        raise InputError(f"point cloud: expected at least 2 points, got {cloud.shape[0]}")
    if cloud.shape[1] == 0:
        raise InputError(f"point cloud: expected points with at least one coordinate, got shape {cloud.shape}")
    if not np.all(np.isfinite(cloud)):
        raise InputError("point cloud: expected finite coordinates, found NaN or inf")
    return cloud


def _validated_options(maxdim: int, backend: str) -> None:
    if maxdim not in (0, 1):
        raise ConfigError(f"rips maxdim: expected 0 or 1, got {maxdim!r}")
    if backend not in RIPS_BACKENDS:
        raise ConfigError(f"rips backend: expected one of {RIPS_BACKENDS}, got {backend!r}")


def _edge_lengths(cloud: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Euclidean lengths of the given edges only (not the whole distance matrix: the hot path)."""
    if not len(edges):
        return np.zeros(0)
    return np.sqrt(((cloud[edges[:, 0]] - cloud[edges[:, 1]]) ** 2).sum(axis=1))


def _h0_diagram(cloud: np.ndarray, finite_gens: np.ndarray, essential_vertices: np.ndarray) -> Diagram:
    """H0 from rows ``[birth vertex, a, b]`` (finite) and essential birth vertices; finite points first."""
    finite_gens = np.asarray(finite_gens, dtype=np.int64).reshape(-1, 3)
    essential_vertices = np.asarray(essential_vertices, dtype=np.int64).reshape(-1)
    birth_vertices = np.concatenate([finite_gens[:, 0], essential_vertices])
    death_edges = np.concatenate([finite_gens[:, 1:3], np.full((len(essential_vertices), 2), -1)])
    deaths = np.concatenate([_edge_lengths(cloud, finite_gens[:, 1:3]), np.full(len(essential_vertices), np.inf)])
    return Diagram(0, np.zeros(len(birth_vertices)), deaths, np.stack([birth_vertices] * 2, axis=1), death_edges)


def _h1_diagram(cloud: np.ndarray, gens: np.ndarray) -> Diagram:
    """H1 from rows ``[v0, v1, v2, v3]``: birth edge ``(v0, v1)``, death edge ``(v2, v3)``."""
    gens = np.asarray(gens, dtype=np.int64).reshape(-1, 4)
    births, deaths = _edge_lengths(cloud, gens[:, 0:2]), _edge_lengths(cloud, gens[:, 2:4])
    return Diagram(1, births, deaths, gens[:, 0:2], gens[:, 2:4])


def _check_aligned(diagram: Diagram, backend_points: np.ndarray) -> None:
    """The generator rows must reproduce the backend's own (float32) values, row by row."""
    expected = np.asarray(backend_points, dtype=np.float64).reshape(-1, 2)
    ours = diagram.points
    if expected.shape != ours.shape or not np.allclose(ours, expected, rtol=_FLOAT32_RTOL, atol=1e-6):
        raise RuntimeError(f"giotto-ph H{diagram.dim}: generator rows do not match diagram rows")


def _giotto_diagrams(cloud: np.ndarray, maxdim: int) -> list[Diagram]:
    from gph import ripser_parallel

    result = ripser_parallel(cloud, maxdim=maxdim, return_generators=True, n_threads=1)
    finite_h0, finite_higher, essential_h0, _essential_higher = result["gens"]
    h0 = _h0_diagram(cloud, finite_h0, essential_h0)
    _check_aligned(h0, result["dgms"][0])  # dgms[0]: finite rows in generator order, the infinite bar last
    diagrams = [h0]
    if maxdim >= 1:
        h1 = _h1_diagram(cloud, finite_higher[0])
        _check_aligned(h1, result["dgms"][1])
        diagrams.append(h1)
    return diagrams


def _gudhi_diagrams(cloud: np.ndarray, maxdim: int) -> list[Diagram]:
    import gudhi

    simplex_tree = gudhi.RipsComplex(distance_matrix=cdist(cloud, cloud)).create_simplex_tree(max_dimension=maxdim + 1)
    simplex_tree.compute_persistence(homology_coeff_field=2, min_persistence=0.0)
    finite_h0, finite_higher, essential_h0, _essential_higher = simplex_tree.flag_persistence_generators()
    h0 = _h0_diagram(cloud, finite_h0, essential_h0)
    diagrams = [h0.select(h0.deaths > h0.births)]
    if maxdim >= 1:
        h1 = _h1_diagram(cloud, finite_higher[0] if len(finite_higher) else np.zeros((0, 4)))
        diagrams.append(h1.select(h1.deaths > h1.births))
    return diagrams


def rips_persistence(points: np.ndarray, maxdim: int = 1, backend: RipsBackend = "giotto") -> list[Diagram]:
    """Vietoris-Rips diagrams ``[H0, ..., H_maxdim]`` of a cloud ``[n, ...]`` (flattened to ``[n, D]``).

    ``maxdim`` is 0 or 1. Raises ``InputError`` for fewer than 2 points or non-finite coordinates and
    ``ConfigError`` for an unknown ``backend`` or ``maxdim``.
    """
    _validated_options(maxdim, backend)
    cloud = _validated_cloud(points)
    if backend == "giotto":
        return _giotto_diagrams(cloud, maxdim)
    return _gudhi_diagrams(cloud, maxdim)
