"""Topo-GEN's seven point-cloud topological regularisers and their weighted combination.

Reference: Topo-GEN ``topogen/topo_functions.py`` (``TopologicalLoss``), summarised in
docs/references.md, Topo-GEN A.3-A.4. A batch ``[B, ...]`` is a cloud of B points (A.1). Diagrams are
computed once without gradient (Rips, ``rips.rips_persistence``); each diagram point is then rebuilt from
the *live* points as lengths of its generator edges (``live_diagram``), so gradient reaches exactly the
endpoints of those edges (A.3). Ground-truth values enter as constants; dsigma and density recompute them
from the true points and the ground-truth generators under ``no_grad``, as the reference does.

Every loss returns ``(value, gotloss)``; ``gotloss`` is False when the value does not depend on the
learnable points (then the weighted sum skips it). Notation: D the learnable diagram, G the ground truth;
H0 uses its finite points ``(0, d)`` with persistence ``d``; H1 points ``(b, d)`` have persistence ``d - b``.

Departures from the reference code (each deliberate, each documented where it happens):

* ``loss_dsigma1`` sums the kernel over *all* pairs of H1 points, the formula the reference states. The
  reference loops ``range(len(dgm['gens'][1]))``, which is the number of homology degrees above 0 (one),
  so it only ever uses the first H1 point of each diagram, and it raises ``IndexError`` when G has no H1
  point although it means to return ``k(D, D)``.
* Every loss returns ``(0, False)`` when D has no finite point of its dimension (the reference returns
  ``(0, True)`` from dsigma0 on a single-point cloud and crashes in ``loss_push0``).
* ``loss_bottleneck1`` treats an empty G as empty; the reference substitutes ``{(0, 0)}``, which gives the
  same optimal value since ``(0, 0)`` lies on the diagonal.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError
from raytopo.topology.diagrams import Diagram
from raytopo.topology.distances import bottleneck_matching
from raytopo.topology.rips import RIPS_BACKENDS, rips_persistence

LOSS_NAMES: tuple[str, ...] = (
    "bottleneck0", "bottleneck1", "persentropy0", "persentropy1", "dsigma0", "dsigma1", "density",
)
_DIM1_LOSSES = ("bottleneck1", "persentropy1", "dsigma1")
Diagrams = Sequence[Diagram]
LossValue = tuple[torch.Tensor, bool]


# ---------------------------------------------------------------------------------------------- live diagrams


def flatten_cloud(points: torch.Tensor) -> torch.Tensor:
    """``[B, ...] -> [B, D]``: every sample is one point (Topo-GEN A.1); keeps the autograd graph."""
    if points.dim() < 2:
        raise InputError(f"point cloud: expected a batch of shape [B, ...] with ndim >= 2, got {tuple(points.shape)}")
    return points.reshape(points.shape[0], -1)


def edge_lengths(points: torch.Tensor, edges: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``||P[u] - P[v]||`` for each edge ``(u, v)``, with gradient 0 (not NaN) where ``P[u] == P[v]``."""
    edges = torch.as_tensor(np.array(edges, dtype=np.int64), device=points.device).reshape(-1, 2)
    difference = points[edges[:, 0]] - points[edges[:, 1]]
    squared = (difference * difference).sum(dim=1)
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


def live_diagram(points: torch.Tensor, diagram: Diagram) -> torch.Tensor:
    """The ``[n, 2]`` (birth, death) of a Rips ``diagram`` rebuilt from the live cloud ``points`` ``[B, ...]``.

    Birth and death are the lengths of the birth and death edges (A.3); an H0 birth edge ``(v, v)`` gives
    0; an essential death (cell ``(-1, -1)``) gives ``+inf`` with no gradient.
    """
    cloud = flatten_cloud(points)
    if diagram.birth_cells.ndim != 2 or diagram.birth_cells.shape[1] != 2:
        raise InputError(f"live_diagram: expected a Rips diagram with edge cells [n, 2], got {diagram.birth_cells.shape}")
    if len(diagram) and int(max(diagram.birth_cells.max(), diagram.death_cells.max())) >= cloud.shape[0]:
        raise InputError(f"live_diagram: diagram H{diagram.dim} refers to vertices beyond the {cloud.shape[0]} points")
    essential = torch.as_tensor(diagram.essential, device=cloud.device)
    death_edges = np.where(diagram.death_cells < 0, 0, diagram.death_cells)
    births = edge_lengths(cloud, diagram.birth_cells)
    deaths = torch.where(essential, torch.full_like(births, math.inf), edge_lengths(cloud, death_edges))
    return torch.stack([births, deaths], dim=1)


def _diagram_of_dim(diagrams: Diagrams, dim: int, role: str) -> Diagram:
    if len(diagrams) <= dim:
        raise InputError(f"{role} diagrams: expected an H{dim} diagram (compute with maxdim >= {dim}), got {len(diagrams)}")
    return diagrams[dim]


def _diagrams_or_computed(points: torch.Tensor | None, diagrams: Diagrams | None, maxdim: int, backend: str) -> Diagrams:
    """Use the given diagrams, or compute them once without gradient from a detached CPU copy."""
    if diagrams is not None:
        return diagrams
    if points is None:
        raise InputError("ground truth: expected true_points or precomputed true_diagrams, got neither")
    return rips_persistence(flatten_cloud(points).detach().cpu().numpy(), maxdim=maxdim, backend=backend)


def _live_finite(points: torch.Tensor, diagrams: Diagrams, dim: int) -> torch.Tensor:
    return live_diagram(points, _diagram_of_dim(diagrams, dim, "learnable").finite())


def _true_finite(
    true_points: torch.Tensor | None, true_diagrams: Diagrams, dim: int, like: torch.Tensor
) -> torch.Tensor:
    """Finite ground-truth points as constants: recomputed from the true cloud and its generators when given."""
    diagram = _diagram_of_dim(true_diagrams, dim, "ground-truth").finite()
    if true_points is None:
        return torch.as_tensor(diagram.points, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        return live_diagram(true_points.detach(), diagram).to(dtype=like.dtype, device=like.device)


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def _live_and_truth(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None,
    true_diagrams: Diagrams | None, dim: int, backend: str, truth_from_points: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The live (differentiable) finite points of dimension ``dim`` and the ground truth's, as constants.

    ``truth_from_points`` recomputes the ground-truth values from ``true_points`` and its generators
    (dsigma, density) instead of taking the diagram's values (bottleneck, entropy), as the reference does.
    """
    diagrams = _diagrams_or_computed(points, diagrams, dim, backend)
    true_diagrams = _diagrams_or_computed(true_points, true_diagrams, dim, backend)
    live = _live_finite(points, diagrams, dim)
    return live, _true_finite(true_points if truth_from_points else None, true_diagrams, dim, live)


# ------------------------------------------------------------------------------------------------ bottleneck


def _bottleneck_worst_pair_loss(live: torch.Tensor, truth: torch.Tensor) -> LossValue:
    """Loss on the single pair of maximal cost in an optimal bottleneck matching (A.4 rows 1-2).

    Both points off the diagonal: ``max(|b_i - b_j|, |d_i - d_j|)`` (``|d_i - d_j|`` for H0); a learnable
    point matched to the diagonal: ``(d_i - b_i) / 2``; a ground-truth point matched to the diagonal: 0
    with ``gotloss`` False (the value does not depend on the learnable points).
    """
    if live.shape[0] == 0:
        return _zero(live), False
    matching = bottleneck_matching(live.detach().cpu().numpy(), truth.detach().cpu().numpy())
    i, j = matching.worst_pair()
    if i < 0:
        return _zero(live), False
    if j < 0:
        return (live[i, 1] - live[i, 0]) / 2.0, True
    return torch.maximum((live[i, 0] - truth[j, 0]).abs(), (live[i, 1] - truth[j, 1]).abs()), True


def loss_bottleneck0(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_bottleneck0``: bottleneck loss on the finite H0 points (docs/references.md, Topo-GEN A.4 row 1)."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 0, backend, False)
    return _bottleneck_worst_pair_loss(live, truth)


def loss_bottleneck1(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_bottleneck1``: bottleneck loss on the H1 points (docs/references.md, Topo-GEN A.4 row 2)."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 1, backend, False)
    return _bottleneck_worst_pair_loss(live, truth)


# ------------------------------------------------------------------------------------------- persistent entropy


def signed_persistent_entropy(persistence: torch.Tensor, delta: float) -> torch.Tensor | None:
    """Topo-GEN's ``E = sum_{p > delta} (p / L) log(p / L)``, ``L = sum_{p > delta} p`` (minus Shannon's).

    None when no persistence exceeds ``delta`` (the reference's ``L == 0``).
    """
    kept = persistence[persistence > delta]
    if kept.numel() == 0:
        return None
    total = kept.sum()
    return (kept * torch.log(kept / total)).sum() / total


def _persentropy_loss(live: torch.Tensor, truth: torch.Tensor, delta: float) -> LossValue:
    """``(E(D) - E(G))**2``, or ``E(D)**2`` when G has no persistence above delta (A.4 rows 3-4)."""
    entropy = signed_persistent_entropy(live[:, 1] - live[:, 0], delta)
    if entropy is None:
        return _zero(live), False
    true_entropy = signed_persistent_entropy(truth[:, 1] - truth[:, 0], delta)
    if true_entropy is None:
        return entropy**2, True
    return (entropy - true_entropy) ** 2, True


def loss_persentropy0(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, delta: float = 0.001, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_persentropy0`` on finite H0 persistence ``d`` (docs/references.md, Topo-GEN A.4 row 3)."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 0, backend, False)
    return _persentropy_loss(live, truth, delta)


def loss_persentropy1(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, delta: float = 0.001, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_persentropy1`` on H1 persistence ``d - b`` (docs/references.md, Topo-GEN A.4 row 4)."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 1, backend, False)
    return _persentropy_loss(live, truth, delta)


# ----------------------------------------------------------------------------------------------------- dsigma


def reininghaus_kernel(first: torch.Tensor, second: torch.Tensor, sigma: float) -> torch.Tensor:
    """Persistence scale-space kernel (Reininghaus et al. 2015, arXiv:1412.6821, eq. 10):

    ``k(F, H) = 1/(8 pi sigma) sum_{p in F, q in H} exp(-||p - q||^2 / (8 sigma)) - exp(-||p - qbar||^2 / (8 sigma))``
    with ``qbar = (d, b)`` the mirror of ``q = (b, d)``.
    """
    to_point = ((first[:, None, :] - second[None, :, :]) ** 2).sum(dim=2)
    to_mirror = ((first[:, None, :] - second[None, :, [1, 0]]) ** 2).sum(dim=2)
    terms = torch.exp(-to_point / (8.0 * sigma)) - torch.exp(-to_mirror / (8.0 * sigma))
    return terms.sum() / (8.0 * math.pi * sigma)


def _dsigma_loss(live: torch.Tensor, truth: torch.Tensor, sigma: float) -> LossValue:
    """``k(D, D) - 2 k(D, G)`` (the constant ``k(G, G)`` dropped, so the value can be negative); ``k(D, D)`` if G is empty."""
    if live.shape[0] == 0:
        return _zero(live), False
    self_term = reininghaus_kernel(live, live, sigma)
    if truth.shape[0] == 0:
        return self_term, True
    return self_term - 2.0 * reininghaus_kernel(live, truth, sigma), True


def loss_dsigma0(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, sigma: float = 0.05, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_dsigma0`` on finite H0 points (docs/references.md, Topo-GEN A.4 row 5); can be negative."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 0, backend, True)
    return _dsigma_loss(live, truth, sigma)


def loss_dsigma1(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, sigma: float = 0.05, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_dsigma1`` on H1 points, all pairs (docs/references.md, Topo-GEN A.4 row 6; see the module note)."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 1, backend, True)
    return _dsigma_loss(live, truth, sigma)


# ---------------------------------------------------------------------------------------------------- density


def persistence_density(deaths: torch.Tensor, grid: torch.Tensor, sigma: float, scale: float) -> torch.Tensor:
    """Topo-GEN's "4SGDE" density ``f(x) = scale * sum_i d_i^4 exp(-((d_i - x) / sigma)^2)`` on ``grid``."""
    weights = deaths[:, None] ** 4
    return scale * (weights * torch.exp(-(((deaths[:, None] - grid[None, :]) / sigma) ** 2))).sum(dim=0)


def loss_density(
    points: torch.Tensor, true_points: torch.Tensor | None, diagrams: Diagrams | None = None,
    true_diagrams: Diagrams | None = None, sigma: float = 0.2, scale: float = 0.002,
    maxrange: float = 35.0, npoints: int = 30, backend: str = "giotto",
) -> LossValue:
    """Topo-GEN ``loss_density`` (docs/references.md, Topo-GEN A.4 row 7): ``mean_x (f_D(x) - f_G(x))^2``,
    ``x in linspace(0, maxrange, npoints)``, over finite H0 deaths."""
    live, truth = _live_and_truth(points, true_points, diagrams, true_diagrams, 0, backend, True)
    if live.shape[0] == 0:
        return _zero(live), False
    grid = torch.linspace(0.0, maxrange, npoints, dtype=live.dtype, device=live.device)
    difference = persistence_density(live[:, 1], grid, sigma, scale) - persistence_density(truth[:, 1], grid, sigma, scale)
    return (difference**2).sum() / npoints, True


# ------------------------------------------------------------------------------------------------------ push0


def loss_push0(points: torch.Tensor, diagrams: Diagrams | None = None, backend: str = "giotto") -> torch.Tensor:
    """Topo-GEN ``loss_push0``: ``-sum_i d_i / 2`` over finite H0 points (minus their distance to the diagonal).

    Not a regulariser (no ground truth): it pushes clusters apart; the reference demos use it whenever every
    active loss has ``gotloss`` False. 0 for a diagram without finite H0 points.
    """
    diagrams = _diagrams_or_computed(points, diagrams, 0, backend)
    live = _live_finite(points, diagrams, 0)
    return -(live[:, 1] - live[:, 0]).sum() / 2.0


# ------------------------------------------------------------------------------------------------ combination


@dataclass(frozen=True)
class TopoRegulariserConfig(Checked):
    """Weights and parameters of ``TopologicalRegulariser``; defaults are Topo-GEN's ``TopologicalLoss``.

    ``weights`` order: bottleneck0, bottleneck1, persentropy0, persentropy1, dsigma0, dsigma1, density; a
    weight of 0 switches the loss off.
    """

    weights: tuple[float, ...] = (15, 15, 0, 0, 0, 0, 0)
    pers0_delta: float = 0.001
    pers1_delta: float = 0.001
    dsigma0_sigma: float = 0.05
    dsigma1_sigma: float = 0.05
    density_sigma: float = 0.2
    density_scale: float = 0.002
    density_maxrange: float = 35.0
    density_npoints: int = 30
    maxdim: int = 1
    backend: str = "giotto"

    def __post_init__(self) -> None:
        weights = tuple(float(w) for w in self.weights)
        object.__setattr__(self, "weights", weights)
        if len(weights) != len(LOSS_NAMES):
            raise ConfigError(f"weights: expected {len(LOSS_NAMES)} values {LOSS_NAMES}, got {len(weights)}")
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ConfigError(f"weights: expected finite non-negative values, got {weights}")
        for name in ("dsigma0_sigma", "dsigma1_sigma", "density_sigma", "density_scale", "density_maxrange"):
            _require(name, getattr(self, name), lambda v: v > 0, "> 0")
        for name in ("pers0_delta", "pers1_delta"):
            _require(name, getattr(self, name), lambda v: v >= 0, ">= 0")
        if not isinstance(self.density_npoints, int) or self.density_npoints < 1:
            raise ConfigError(f"density_npoints: expected an integer >= 1, got {self.density_npoints!r}")
        if self.maxdim not in (0, 1):
            raise ConfigError(f"maxdim: expected 0 or 1, got {self.maxdim!r}")
        if self.backend not in RIPS_BACKENDS:
            raise ConfigError(f"backend: expected one of {RIPS_BACKENDS}, got {self.backend!r}")
        needs_h1 = [name for name, w in zip(LOSS_NAMES, weights) if w and name in _DIM1_LOSSES]
        if needs_h1 and self.maxdim < 1:
            raise ConfigError(f"maxdim: the losses {needs_h1} need H1 diagrams, expected maxdim 1, got 0")


def _require(name: str, value: float, ok: Callable[[float], bool], expected: str) -> None:
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and ok(value)):
        raise ConfigError(f"{name}: expected a finite number {expected}, got {value!r}")


class TopologicalRegulariser:
    """Weighted sum of the seven regularisers (Topo-GEN ``TopologicalLoss.compute_loss``).

    ``__call__`` returns ``(sum of w_i * loss_i over active losses with gotloss True, any gotloss)``.
    Diagrams are computed once per call and shared by all losses; pass precomputed ones (for example the
    ground truth from the ``PersistencePool``) to skip that.
    """

    def __init__(self, config: TopoRegulariserConfig | None = None) -> None:
        self.config = config if config is not None else TopoRegulariserConfig()
        c, b = self.config, self.config.backend
        self._losses: dict[str, Callable[..., LossValue]] = {
            "bottleneck0": partial(loss_bottleneck0, backend=b),
            "bottleneck1": partial(loss_bottleneck1, backend=b),
            "persentropy0": partial(loss_persentropy0, delta=c.pers0_delta, backend=b),
            "persentropy1": partial(loss_persentropy1, delta=c.pers1_delta, backend=b),
            "dsigma0": partial(loss_dsigma0, sigma=c.dsigma0_sigma, backend=b),
            "dsigma1": partial(loss_dsigma1, sigma=c.dsigma1_sigma, backend=b),
            "density": partial(
                loss_density, sigma=c.density_sigma, scale=c.density_scale,
                maxrange=c.density_maxrange, npoints=c.density_npoints, backend=b,
            ),
        }

    def diagrams(self, points: torch.Tensor) -> list[Diagram]:
        """The Rips diagrams of a batch, computed without gradient with this config's maxdim and backend."""
        return list(_diagrams_or_computed(points, None, self.config.maxdim, self.config.backend))

    def terms(
        self, points: torch.Tensor, true_points: torch.Tensor,
        diagrams: Diagrams | None = None, true_diagrams: Diagrams | None = None,
    ) -> dict[str, LossValue]:
        """``{name: (value, gotloss)}`` of every loss with a non-zero weight (unweighted, for logging)."""
        diagrams = diagrams if diagrams is not None else self.diagrams(points)
        true_diagrams = true_diagrams if true_diagrams is not None else self.diagrams(true_points)
        return {
            name: self._losses[name](points, true_points, diagrams, true_diagrams)
            for name, weight in zip(LOSS_NAMES, self.config.weights)
            if weight != 0
        }

    def __call__(
        self, points: torch.Tensor, true_points: torch.Tensor,
        diagrams: Diagrams | None = None, true_diagrams: Diagrams | None = None,
    ) -> tuple[torch.Tensor, bool]:
        weight_of = dict(zip(LOSS_NAMES, self.config.weights))
        total, got_any = _zero(points), False
        for name, (value, gotloss) in self.terms(points, true_points, diagrams, true_diagrams).items():
            if gotloss:
                total, got_any = total + weight_of[name] * value, True
        return total, got_any
