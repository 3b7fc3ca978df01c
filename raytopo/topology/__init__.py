"""Persistent homology, diagram distances and topology losses (numpy/torch only; never imports ray)."""

from raytopo.topology.betti import Betti, betti_numbers
from raytopo.topology.cubical import cubical_persistence, cubical_persistence_batch
from raytopo.topology.diagrams import Diagram
from raytopo.topology.distances import Matching, bottleneck_matching, wasserstein_matching
from raytopo.topology.losses import TDNLossConfig, critical_targets, gather_loss, tdn_loss
from raytopo.topology.regularisers import TopologicalRegulariser, TopoRegulariserConfig
from raytopo.topology.rips import rips_persistence

__all__ = [
    "Betti",
    "Diagram",
    "Matching",
    "TDNLossConfig",
    "TopoRegulariserConfig",
    "TopologicalRegulariser",
    "betti_numbers",
    "bottleneck_matching",
    "critical_targets",
    "cubical_persistence",
    "cubical_persistence_batch",
    "gather_loss",
    "rips_persistence",
    "tdn_loss",
    "wasserstein_matching",
]
