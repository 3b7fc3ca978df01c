"""Did a deformed cloud reach the target's topology? Clusters and loops read off Rips diagrams at one scale.

* **clusters at scale ``s``**: the connected components of the ``s``-neighbourhood graph (an edge joins two
  points at distance ``<= s``). In the Rips filtration an H0 bar dies at the length of the edge that merges
  its component into an older one, so this number is the count of H0 bars with death ``> s``, the essential
  (infinite) bar included.
* **loops**: H1 bars of the Rips diagram with persistence ``death - birth > loop_persistence``.

The cloud *reached the target* when both counts equal the target cloud's at the same scale and threshold.

**Default scale** (``default_scale``): the middle of the widest gap in the sorted list
``[0, finite H0 deaths of the target..., diameter of the target]``. Within-cluster deaths are short and the
deaths that merge clusters are long, so the widest gap separates the two; the ends 0 and the diameter make a
target whose points are all far apart count every point as a cluster (the gap above 0 is the widest), and a
single blob or a circle count as one cluster (the gap below the diameter is the widest). The loop threshold
defaults to the same scale: a loop counts when it lives longer than the distance at which clusters merge, so
the small loops inside a noisy cluster never count. Both can be set explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import pdist

from raytopo.errors import InputError
from raytopo.topology.diagrams import Diagram
from raytopo.topology.rips import rips_persistence


@dataclass(frozen=True)
class CloudTopology:
    """Clusters at a scale and loops above a persistence threshold of one cloud."""

    clusters: int
    loops: int


@dataclass(frozen=True)
class TopologyCheck:
    """The final cloud's topology against the target's, at ``scale`` and ``loop_persistence``."""

    scale: float
    loop_persistence: float
    target: CloudTopology
    final: CloudTopology

    @property
    def reached(self) -> bool:
        return self.final == self.target

    def as_dict(self) -> dict:
        return {
            "reached": self.reached, "scale": self.scale, "loop_persistence": self.loop_persistence,
            "target": {"clusters": self.target.clusters, "loops": self.target.loops},
            "final": {"clusters": self.final.clusters, "loops": self.final.loops},
        }


def count_clusters(h0: Diagram, scale: float) -> int:
    """Connected components of the ``scale``-neighbourhood graph: H0 bars with death ``> scale`` (inf included)."""
    if h0.dim != 0:
        raise InputError(f"count_clusters: expected an H0 diagram, got H{h0.dim}")
    return int(np.count_nonzero(h0.deaths > scale))


def count_loops(h1: Diagram, min_persistence: float) -> int:
    """H1 bars with persistence ``death - birth > min_persistence``."""
    if h1.dim != 1:
        raise InputError(f"count_loops: expected an H1 diagram, got H{h1.dim}")
    return int(np.count_nonzero(h1.persistence > min_persistence))


def cloud_topology(diagrams: list[Diagram], scale: float, loop_persistence: float) -> CloudTopology:
    """Clusters and loops from a cloud's Rips diagrams ``[H0, H1]``."""
    return CloudTopology(count_clusters(diagrams[0], scale), count_loops(diagrams[1], loop_persistence))


def default_scale(points: np.ndarray, h0: Diagram | None = None) -> float:
    """The middle of the widest gap in ``[0, finite H0 deaths..., diameter]`` of ``points`` (module docstring)."""
    h0 = h0 if h0 is not None else rips_persistence(points, maxdim=0)[0]
    deaths = h0.deaths[np.isfinite(h0.deaths)]
    levels = np.sort(np.concatenate([[0.0], deaths, [float(pdist(np.asarray(points, dtype=np.float64)).max())]]))
    widest = int(np.argmax(np.diff(levels)))
    return float((levels[widest] + levels[widest + 1]) / 2.0)


def check_topology(
    final_diagrams: list[Diagram], target_diagrams: list[Diagram], scale: float, loop_persistence: float
) -> TopologyCheck:
    """Compare the final cloud's clusters and loops with the target's (diagrams ``[H0, H1]`` of each)."""
    return TopologyCheck(
        scale=scale, loop_persistence=loop_persistence,
        target=cloud_topology(target_diagrams, scale, loop_persistence),
        final=cloud_topology(final_diagrams, scale, loop_persistence),
    )
