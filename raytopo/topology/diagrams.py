"""The persistence-diagram type shared by the cubical and Rips engines, the losses and the pool.

A `Diagram` holds the pairs of one homology dimension together with the *cells* that create and
destroy each feature, so a loss can gather a live tensor at those cells and be differentiable without
differentiating through the persistence algorithm (docs/references.md, Design 4).

Conventions
-----------
* ``births[i]`` and ``deaths[i]`` are filtration values in the units of the input (image intensity or
  point distance). For a cubical diagram ``births[i] == image.flat[birth_cells[i]]`` and likewise for
  deaths, whatever the filtration direction: under a *superlevel* filtration features are born at high
  values and die at lower ones, so ``births >= deaths``.
* Essential (never-dying) features have ``deaths[i] = +inf`` (sublevel, Rips) or ``-inf`` (superlevel)
  and their death cell is ``-1``. ``persistence`` is ``|death - birth|`` and therefore ``inf`` for them.
* Cells: cubical diagrams store flat pixel indices (row-major, ``H * W``), shape ``[n]``; Rips diagrams
  store edges as vertex pairs, shape ``[n, 2]`` (the birth "edge" of an H0 point is ``(v, v)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    """A read-only view (a copy only when the dtype or layout must change): writes through a Diagram fail."""
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.setflags(write=False)
    return view


@dataclass(frozen=True, eq=False)
class Diagram:
    """The persistence pairs of one homology dimension, with their critical cells."""

    dim: int
    births: np.ndarray
    deaths: np.ndarray
    birth_cells: np.ndarray
    death_cells: np.ndarray

    def __post_init__(self) -> None:
        births = _read_only(self.births, np.float64).reshape(-1)
        deaths = _read_only(self.deaths, np.float64).reshape(-1)
        birth_cells = _read_only(self.birth_cells, np.int64)
        death_cells = _read_only(self.death_cells, np.int64)
        n = births.shape[0]
        if deaths.shape[0] != n or birth_cells.shape[:1] != (n,) or death_cells.shape[:1] != (n,):
            raise ValueError(
                f"Diagram(dim={self.dim}): births, deaths and cells must have the same length, got "
                f"{births.shape[0]}, {deaths.shape[0]}, {birth_cells.shape}, {death_cells.shape}"
            )
        object.__setattr__(self, "births", births)
        object.__setattr__(self, "deaths", deaths)
        object.__setattr__(self, "birth_cells", birth_cells)
        object.__setattr__(self, "death_cells", death_cells)

    @classmethod
    def empty(cls, dim: int, cell_shape: tuple[int, ...] = ()) -> "Diagram":
        """A diagram with no points; ``cell_shape`` is ``()`` for pixels and ``(2,)`` for edges."""
        cells = np.zeros((0, *cell_shape), dtype=np.int64)
        return cls(dim, np.zeros(0), np.zeros(0), cells, cells)

    def __len__(self) -> int:
        return int(self.births.shape[0])

    @property
    def points(self) -> np.ndarray:
        """``[n, 2]`` array of (birth, death)."""
        return np.stack([self.births, self.deaths], axis=1)

    @property
    def persistence(self) -> np.ndarray:
        """``|death - birth|`` per point; ``inf`` for essential features."""
        return np.abs(self.deaths - self.births)

    @property
    def essential(self) -> np.ndarray:
        """Boolean mask of the features that never die."""
        return ~np.isfinite(self.deaths)

    def select(self, mask_or_index: np.ndarray) -> "Diagram":
        """The sub-diagram of the points picked by a boolean mask or an index array."""
        return Diagram(
            self.dim,
            self.births[mask_or_index],
            self.deaths[mask_or_index],
            self.birth_cells[mask_or_index],
            self.death_cells[mask_or_index],
        )

    def finite(self) -> "Diagram":
        """The sub-diagram of the features that die."""
        return self.select(~self.essential)

    def sorted_by_persistence(self) -> "Diagram":
        """The same points, most persistent first (ties keep their original order)."""
        return self.select(np.argsort(-self.persistence, kind="stable"))

    def __repr__(self) -> str:
        return f"Diagram(dim={self.dim}, n={len(self)}, essential={int(self.essential.sum())})"
