"""Persistent homology, diagram distances and topology losses (numpy/torch only; never imports ray)."""

from raytopo.topology.diagrams import Diagram

__all__ = ["Diagram"]
