"""TreeVAE (Manduchi et al. 2023) as a plain-torch module with a mutable tree, its loss pieces and its
growth / pruning rules (``raytopo.models.treevae.tree`` explains the node layout)."""

from raytopo.models.treevae.growth import choose_leaf_to_grow, effective_leaves, leaves_to_prune
from raytopo.models.treevae.losses import (
    EPS,
    decision_kl,
    gaussian_kl,
    leaf_reconstruction,
    node_kl,
    precision_weighted_posterior,
    reference_loss,
)
from raytopo.models.treevae.settings import TreeVAESettings
from raytopo.models.treevae.structure import default_structure, validate_structure
from raytopo.models.treevae.tree import TreeVAE

__all__ = [
    "EPS",
    "TreeVAE",
    "TreeVAESettings",
    "choose_leaf_to_grow",
    "decision_kl",
    "default_structure",
    "effective_leaves",
    "gaussian_kl",
    "leaf_reconstruction",
    "leaves_to_prune",
    "node_kl",
    "precision_weighted_posterior",
    "reference_loss",
    "validate_structure",
]
