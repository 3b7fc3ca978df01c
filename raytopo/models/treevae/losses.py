"""TreeVAE's ELBO pieces (brief ``treevae.md`` section 1 "Node" and "Loss"; Manduchi et al. 2023, eqs. for the
node KLs and the decision KLs).

Where the clamps sit (as in the reference ``models/model.py``):

- per node and per sample: ``clamp(P(n) * KL_n, -1, 1000)``, for the root (``P = 1``) and every other node. These
  are applied inside ``TreeVAE.forward``, so its ``kl_root`` and ``kl_nodes`` ``[B]`` terms already carry them;
- on the batch: ``clamp(mean_b kl_nodes, -10, 1e10)``. This one acts on a batch mean, so the per-sample
  ``kl_nodes`` of ``forward`` are left without it and :func:`reference_loss` applies it;
- ``rec`` and ``kl_decisions`` have no clamp.

``EPS = 1e-7`` sits in the posterior's precisions, in every standard deviation ``sqrt(var + EPS)`` (so the
analytic KLs compare ``N(mu, var + EPS)`` distributions), and twice in the decision KL (see :func:`decision_kl`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from raytopo.errors import ConfigError

EPS = 1e-7
NODE_KL_CLAMP = (-1.0, 1000.0)
BATCH_KL_NODES_CLAMP = (-10.0, 1e10)

Reconstruction = Literal["bce", "mse"]


def precision_weighted_posterior(mu_hat: torch.Tensor, var_hat: torch.Tensor, mu_p: torch.Tensor,
                                 var_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ladder-VAE posterior of a non-root node (brief section 1 "Node"):
    ``var_q = 1 / (1/(var_hat + EPS) + 1/(var_p + EPS))`` and
    ``mu_q = (mu_hat/(var_hat + EPS) + mu_p/(var_p + EPS)) * var_q``."""
    precision_hat = 1.0 / (var_hat + EPS)
    precision_p = 1.0 / (var_p + EPS)
    var_q = 1.0 / (precision_hat + precision_p)
    return (mu_hat * precision_hat + mu_p * precision_p) * var_q, var_q


def gaussian_kl(mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor, var_p: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_q, var_q) || N(mu_p, var_p))`` of diagonal Gaussians summed over the last dimension:
    ``1/2 sum [var_q/var_p + (mu_p - mu_q)^2/var_p - 1 + log(var_p/var_q)]``. The model passes ``var + EPS``."""
    terms = var_q / var_p + (mu_p - mu_q).pow(2) / var_p - 1.0 + torch.log(var_p) - torch.log(var_q)
    return 0.5 * terms.sum(dim=-1)


def node_kl(prob: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor,
            var_p: torch.Tensor) -> torch.Tensor:
    """Per-sample node term ``clamp(P(n) * KL(N(mu_q, var_q + EPS) || N(mu_p, var_p + EPS)), -1, 1000)``, ``[B]``."""
    kl = prob * gaussian_kl(mu_q, var_q + EPS, mu_p, var_p + EPS)
    return kl.clamp(*NODE_KL_CLAMP)


def decision_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Bernoulli KL of one routing decision with the reference's epsilons, ``[B]``:
    ``q log(EPS + q/(p + EPS)) + (1 - q) log(EPS + (1 - q)/(1 - p + EPS))``; zero (to ~1e-7) when ``q = p``."""
    left = q * torch.log(EPS + q / (p + EPS))
    right = (1.0 - q) * torch.log(EPS + (1.0 - q) / (1.0 - p + EPS))
    return left + right


def leaf_reconstruction(x: torch.Tensor, x_hat: torch.Tensor, kind: Reconstruction) -> torch.Tensor:
    """Per-sample pixel sum of ``BCE(x, x_hat)`` (``bce``) or ``(x_hat - x)^2`` (``mse``), ``[B]``."""
    if kind == "bce":
        pixels = F.binary_cross_entropy(x_hat, x, reduction="none")
    elif kind == "mse":
        pixels = (x_hat - x).pow(2)
    else:
        raise ConfigError(f"recon: expected 'bce' or 'mse', got {kind!r}")
    return pixels.flatten(1).sum(dim=1)


def reference_loss(terms: dict, alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The reference's scalar loss from ``TreeVAE.forward``'s per-sample terms (without the contrastive term):
    ``mean(rec) + alpha * (mean(kl_root) + clamp(mean(kl_nodes), -10, 1e10) + mean(kl_decisions))``.

    ``alpha`` is the KL-annealing weight. The per-node ``[-1, 1000]`` clamps are already in the terms.
    """
    kl_nodes = terms["kl_nodes"].mean().clamp(*BATCH_KL_NODES_CLAMP)
    kl = terms["kl_root"].mean() + kl_nodes + terms["kl_decisions"].mean()
    return terms["rec"].mean() + alpha * kl


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample InfoNCE (NT-Xent) of the pairs ``(first_i, second_i)``, ``[2B]``: with ``u`` the L2-normalised
    rows of ``[first; second]`` and ``s_ij = exp(u_i . u_j / temperature)``, sample ``i``'s loss is
    ``-log(s_{i,pair(i)} / sum_{j != i} s_ij)`` (reference ``calc_aug_loss``; Chen et al. 2020, eq. 1)."""
    first, second = F.normalize(first, dim=1), F.normalize(second, dim=1)
    pair = torch.exp((first * second).sum(dim=1) / temperature).repeat(2)
    rows = torch.cat([first, second])
    similarity = torch.exp(rows @ rows.t() / temperature)
    others = similarity.sum(dim=1) - similarity.diagonal()
    return -torch.log(pair / others)


def decision_contrast(q_left: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """Contrastive term of one routing decision on a batch ``[view 1; view 2]`` (brief section 1 "Contrastive"):
    InfoNCE at temperature 1 between the two views' normalised ``[q, 1 - q]``, averaged with the node's
    detached path probability as the weight (``sum P l / sum P``)."""
    half = len(q_left) // 2
    decisions = torch.stack([q_left, 1.0 - q_left], dim=1)
    weight = prob.detach()
    return (weight * info_nce(decisions[:half], decisions[half:], 1.0)).sum() / weight.sum().clamp_min(EPS)


def instance_contrast(embeddings: list[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """Instance-wise InfoNCE (temperature 0.5) between the two views of every bottom-up projection, averaged over
    the projections (the reference's ``instancewise_full``)."""
    half = len(embeddings[0]) // 2
    losses = [info_nce(e[:half], e[half:], temperature).mean() for e in embeddings]
    return torch.stack(losses).mean()
