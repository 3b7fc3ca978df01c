"""TreeVAE (Manduchi et al., NeurIPS 2023) in its CNN form, as a plain-torch module whose tree changes shape.

Brief ``treevae.md`` sections 1 and 6. Nodes are keyed by their path from the root: ``""`` is the root, ``"0"`` /
``"1"`` its left / right child, ``"01"`` the right child of ``"0"``, and so on; a node's depth is ``len(path)``.
Each node's modules live in ``nn.ModuleDict``s under the key ``"r" + path`` (a ModuleDict key cannot be empty):

- ``denses[k]`` (every node): ``d -> (mu_hat, var_hat)``;
- ``transformations[k]`` (every node but the root): ``z_parent -> (mu_p, var_p)``;
- ``routers[k]`` / ``routers_q[k]`` (internal nodes only): ``p(left | z_n)`` and ``q(left | d)``;
- ``decoders[k]`` (leaves only).

A node with neither routers nor a decoder is a **pass-through** node left by pruning: it has one child, to which
it forwards its path probability and its sample ``z``. Which modules exist *is* the tree, so
``structure()`` / ``from_structure`` rebuild a model that loads a ``state_dict`` with ``strict=True``.

**Bottom-up pass.** ``d_0 = encoder(x)`` and ``d_k = MLP_k(d_{k-1})`` for ``k = 1..max_depth``. A node at depth
``k`` reads ``encoders[-1-k]`` of the list ``[d_0, ..., d_max_depth]``, i.e. ``d_{max_depth - k}``: the root reads
the most abstract ``d_max_depth``, a node at ``max_depth`` reads ``d_0`` (ladder-VAE pairing, as the reference).
Both its dense head and its ``router_q`` read that feature.

**Top-down pass** (one ``rsample`` per node, breadth-first, left to right): the root's posterior is
``N(mu_hat, var_hat)`` with prior ``N(0, I)``; every other node's prior is ``N(mu_p, var_p)`` from its parent's
sample and its posterior is the precision-weighted combination (``losses.precision_weighted_posterior``).
``z = mu_q + sqrt(var_q + 1e-7) * noise``. ``P(child) = P(node) * q`` (left) or ``P(node) * (1 - q)`` (right) when
reconstructing, with ``p`` instead of ``q`` when generating.
"""

from __future__ import annotations

from collections import deque
import torch
from torch import nn

from raytopo.errors import InputError
from raytopo.models.treevae.layers import BottomUp, Encoder, GaussianHead, LeafDecoder, Router, Transformation
from raytopo.models.treevae.losses import (
    EPS,
    decision_contrast,
    decision_kl,
    instance_contrast,
    leaf_reconstruction,
    node_kl,
    precision_weighted_posterior,
)
from raytopo.models.treevae.settings import TreeVAESettings
from raytopo.models.treevae.structure import bfs_order, default_structure, node_key, validate_structure


class TreeVAE(nn.Module):
    """TreeVAE with a mutable tree; ``TreeVAE(settings)`` is the root with two leaves.

    ``forward(x)`` returns the per-sample ELBO terms; :func:`raytopo.models.treevae.reference_loss` reduces them the
    reference's way. ``grow``, ``graft`` and ``prune`` change the tree in place (make a new optimiser afterwards,
    as each reference phase does).
    """

    def __init__(self, settings: TreeVAESettings | None = None, structure: dict | None = None) -> None:
        super().__init__()
        self.settings = settings = settings if settings is not None else TreeVAESettings()
        structure = validate_structure(structure if structure is not None else default_structure(), settings.max_depth)
        dims = settings.feature_dims
        self.encoder = Encoder(settings.channels, settings.encoder_channels, settings.negative_slope)
        self.bottom_up = nn.ModuleList(
            BottomUp(dims[k - 1], dims[k], settings.negative_slope) for k in range(1, settings.max_depth + 1))
        self.denses = nn.ModuleDict()
        self.transformations = nn.ModuleDict()
        self.routers = nn.ModuleDict()
        self.routers_q = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        if settings.contrastive:
            self.projections = nn.ModuleList(
                Transformation(settings.latent_dim, settings.hidden, settings.negative_slope, in_features=width)
                for width in dims)
        internal, leaves = set(structure["internal"]), set(structure["leaves"])
        for path in bfs_order([p for paths in structure.values() for p in paths]):
            self._add_node(path)
            if path in internal:
                self._add_routers(path)
            elif path in leaves:
                self._add_decoder(path)

    @classmethod
    def from_structure(cls, settings: TreeVAESettings, structure: dict) -> TreeVAE:
        """A model with the modules of ``structure`` (from :meth:`structure`), ready for
        ``load_state_dict(..., strict=True)``."""
        return cls(settings, structure)

    # ----------------------------------------------------------------------------------------------- tree shape

    def _add_node(self, path: str) -> None:
        s = self.settings
        self.denses[node_key(path)] = GaussianHead(s.feature_dim(len(path)), s.latent_dim)
        if path:
            self.transformations[node_key(path)] = Transformation(s.latent_dim, s.hidden, s.negative_slope)

    def _add_routers(self, path: str) -> None:
        s = self.settings
        self.routers[node_key(path)] = Router(s.latent_dim, s.hidden, s.negative_slope)
        self.routers_q[node_key(path)] = Router(s.feature_dim(len(path)), s.hidden, s.negative_slope)

    def _add_decoder(self, path: str) -> None:
        s = self.settings
        self.decoders[node_key(path)] = LeafDecoder(s.latent_dim, s.channels, s.encoder_channels, s.image_size,
                                                    s.negative_slope, sigmoid=s.recon == "bce")

    def node_paths(self) -> list[str]:
        """Every node's path, breadth-first."""
        return bfs_order(key[1:] for key in self.denses)

    def node_kind(self, path: str) -> str:
        """``"internal"``, ``"leaf"`` or ``"pass_through"``; InputError for a path not in the tree."""
        key = node_key(path)
        if key not in self.denses:
            raise InputError(f"tree: no node at path {path!r}")
        if key in self.routers:
            return "internal"
        return "leaf" if key in self.decoders else "pass_through"

    def child_paths(self, path: str) -> list[str]:
        """The children of a node (two, one for a pass-through node, none for a leaf)."""
        return [path + c for c in "01" if node_key(path + c) in self.denses]

    @property
    def leaf_paths(self) -> list[str]:
        """Leaf paths in breadth-first order: the column order of ``leaf_probabilities``."""
        return bfs_order(key[1:] for key in self.decoders)

    def structure(self) -> dict[str, list[str]]:
        """``{"leaves": [...], "internal": [...], "pass_through": [...]}`` (paths, breadth-first; JSON-able)."""
        out: dict[str, list[str]] = {"leaves": [], "internal": [], "pass_through": []}
        names = {"leaf": "leaves", "internal": "internal", "pass_through": "pass_through"}
        for path in self.node_paths():
            out[names[self.node_kind(path)]].append(path)
        return out

    def _to_model(self, *modules: nn.Module) -> None:
        """Put new modules on the model's device and dtype, in its train / eval mode."""
        reference = next(self.encoder.parameters())
        for module in modules:
            module.to(device=reference.device, dtype=reference.dtype)
            module.train(self.training)

    def _require_leaf(self, path: str, action: str) -> None:
        if not isinstance(path, str) or self.node_kind(path) != "leaf":
            raise InputError(f"{action}: {path!r} is not a leaf of the tree (leaves: {self.leaf_paths})")

    def grow(self, leaf_path: str, inherit_decoder: bool = False) -> list[str]:
        """Split a leaf into an internal node with two new leaves; returns the new leaf paths.

        The leaf gains fresh ``router`` / ``router_q`` and loses its decoder; each child gets a fresh
        transformation, dense head and decoder (a copy of the old decoder with ``inherit_decoder``). No other
        module changes, so every other leaf's probability and reconstruction are unchanged, and the two children's
        probabilities sum to the old leaf's (``P q + P (1 - q)``).
        """
        self._require_leaf(leaf_path, "grow")
        if len(leaf_path) >= self.settings.max_depth:
            raise InputError(f"grow: leaf {leaf_path!r} is at max_depth {self.settings.max_depth}")
        old_decoder = self.decoders.pop(node_key(leaf_path))
        self._add_routers(leaf_path)
        new = [leaf_path + "0", leaf_path + "1"]
        for path in new:
            self._add_node(path)
            self._add_decoder(path)
            if inherit_decoder:
                self.decoders[node_key(path)].load_state_dict(old_decoder.state_dict())
        self._to_model(self.routers[node_key(leaf_path)], self.routers_q[node_key(leaf_path)],
                       *(m[node_key(p)] for p in new for m in (self.denses, self.transformations, self.decoders)))
        return new

    def subtree_state(self, path: str) -> dict:
        """State of an internal node whose children are both leaves, in :meth:`graft`'s format (the
        SmallTreeVAE of phase 3: a router pair plus two transformations, dense heads and decoders)."""
        if self.node_kind(path) != "internal" or any(self.node_kind(c) != "leaf" for c in self.child_paths(path)):
            raise InputError(f"subtree_state: {path!r} is not an internal node with two leaf children")
        key = node_key(path)
        children = {c[-1]: {"transformation": self.transformations[node_key(c)].state_dict(),
                            "dense": self.denses[node_key(c)].state_dict(),
                            "decoder": self.decoders[node_key(c)].state_dict()} for c in self.child_paths(path)}
        return {"router": self.routers[key].state_dict(), "router_q": self.routers_q[key].state_dict(),
                "children": children}

    def graft(self, leaf_path: str, small_tree_state: dict) -> list[str]:
        """Attach a trained small tree (phase 3) to a leaf: :meth:`grow`, then load ``small_tree_state``
        (``{"router", "router_q", "children": {"0"|"1": {"transformation", "dense", "decoder"}}}`` of state
        dicts, as :meth:`subtree_state` returns) into the new modules with ``strict=True``."""
        try:
            routers = small_tree_state["router"], small_tree_state["router_q"]
            children = [small_tree_state["children"][c] for c in "01"]
        except (KeyError, TypeError) as error:
            raise InputError(f"graft: small_tree_state lacks {error}; expected router, router_q and "
                             "children '0'/'1'") from None
        self._require_leaf(leaf_path, "graft")
        old_decoder = self.decoders[node_key(leaf_path)]
        new = self.grow(leaf_path)
        key = node_key(leaf_path)
        try:
            self.routers[key].load_state_dict(routers[0])
            self.routers_q[key].load_state_dict(routers[1])
            for path, state in zip(new, children):
                self.transformations[node_key(path)].load_state_dict(state["transformation"])
                self.denses[node_key(path)].load_state_dict(state["dense"])
                self.decoders[node_key(path)].load_state_dict(state["decoder"])
        except (RuntimeError, KeyError, TypeError) as error:
            self._undo_grow(leaf_path, old_decoder)
            raise InputError(f"graft: small_tree_state does not fit leaf {leaf_path!r}: "
                             f"{str(error).splitlines()[0]}") from None
        return new

    def _undo_grow(self, leaf_path: str, old_decoder: nn.Module) -> None:
        """Turn a just-grown node back into the leaf it was."""
        for path in (leaf_path + "0", leaf_path + "1"):
            for modules in (self.denses, self.transformations, self.decoders):
                del modules[node_key(path)]
        del self.routers[node_key(leaf_path)]
        del self.routers_q[node_key(leaf_path)]
        self.decoders[node_key(leaf_path)] = old_decoder

    def prune(self, leaf_path: str) -> str:
        """Remove a leaf (all its modules); its parent becomes a pass-through node and loses **both** routers
        (the reference kept ``routers_q``; brief section 4, bug 3). Returns the parent's path."""
        self._require_leaf(leaf_path, "prune")
        if not leaf_path:
            raise InputError("prune: the root cannot be pruned")
        parent = leaf_path[:-1]
        if self.node_kind(parent) != "internal":
            raise InputError(f"prune: {leaf_path!r} is the only child of pass-through node {parent!r}")
        key = node_key(leaf_path)
        for modules in (self.denses, self.transformations, self.decoders):
            del modules[key]
        del self.routers[node_key(parent)]
        del self.routers_q[node_key(parent)]
        return parent

    # ----------------------------------------------------------------------------------------------- passes

    def bottom_up_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[d_0, d_1, ..., d_max_depth]``; a node at depth ``k`` reads ``features[-1 - k]``."""
        s = self.settings
        if x.dim() != 4 or tuple(x.shape[1:]) != (s.channels, s.image_size, s.image_size):
            raise InputError(f"TreeVAE input: expected [B, {s.channels}, {s.image_size}, {s.image_size}], "
                             f"got {list(x.shape)}")
        features = [self.encoder(x)]
        for layer in self.bottom_up:
            features.append(layer(features[-1]))
        return features

    def node_probability(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """q-routing ``P(path | x)`` ``[B]``: the product of the ``routers_q`` decisions from the root down to the
        node (a pass-through node forwards its probability). It needs only the bottom-up features, not the
        top-down samples, so it is deterministic in eval mode and cheap: the reference selects a grow stage's data
        by this probability of the leaf being split (``get_ind_small_tree``)."""
        self.node_kind(path)
        features = self.bottom_up_features(x)
        prob = x.new_ones(x.shape[0])
        for depth in range(len(path)):
            parent = path[:depth]
            if self.node_kind(parent) == "internal":
                q_left = self.routers_q[node_key(parent)](features[-1 - depth])
                prob = prob * (q_left if path[depth] == "0" else 1.0 - q_left)
        return prob

    @staticmethod
    def _sample(mu: torch.Tensor, var: torch.Tensor, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        """``mu + sqrt(var + EPS) * noise`` (``mu`` itself when ``sample`` is False)."""
        if not sample:
            return mu
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.sqrt(var + EPS) * noise

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
                return_nodes: bool = False, paired_views: bool = False) -> dict:
        """Reconstruct ``x`` (``[B, C, S, S]``, in [0, 1] for ``bce``) through the tree with q-routing.

        Returns per-sample ``[B]`` terms:

        - ``rec = sum_l P(l) * sum_pix BCE(x, x_hat_l)`` (squared error for ``mse``);
        - ``kl_root = clamp(KL(q(z_0) || N(0, I)), -1, 1000)``;
        - ``kl_nodes = sum_{n != root} clamp(P(n) KL(q(z_n) || p(z_n | z_pa)), -1, 1000)``, without the
          reference's batch-level ``clamp(mean, -10, 1e10)``, which :func:`reference_loss` applies;
        - ``kl_decisions = sum_{internal n} P(n) * decision_kl(q_n, p_n)``;

        and ``leaf_probabilities`` ``[B, L]``, ``reconstructions`` ``[B, L, C, S, S]``, ``leaf_paths``. With
        ``paired_views`` the batch is ``[view 1; view 2]`` of the same images and ``aug`` (a scalar) is the
        contrastive term: ``decision_contrast`` summed over the internal nodes, plus, with ``settings.contrastive``,
        ``instance_contrast`` of the projections of every bottom-up feature. Nodes draw
        their noise breadth-first from ``generator`` (the global RNG by default); ``sample=False`` uses
        ``z = mu_q`` everywhere. ``return_nodes`` adds ``nodes``: per path, ``mu_q, var_q, mu_p, var_p, z, prob``.
        """
        features = self.bottom_up_features(x)
        batch = x.shape[0]
        zeros = x.new_zeros(batch)
        kl_root, kl_nodes, kl_decisions = zeros, zeros, zeros
        aug = instance_contrast([p(d)[0] for p, d in zip(self.projections, features)]) \
            if paired_views and self.settings.contrastive else x.new_zeros(())
        probs, recons, paths, nodes = [], [], [], {}
        queue = deque([("", x.new_ones(batch), None)])
        while queue:
            path, prob, z_parent = queue.popleft()
            d = features[-1 - len(path)]
            mu_hat, var_hat = self.denses[node_key(path)](d)
            if path:
                mu_p, var_p = self.transformations[node_key(path)](z_parent)
                mu_q, var_q = precision_weighted_posterior(mu_hat, var_hat, mu_p, var_p)
            else:
                mu_p, var_p = torch.zeros_like(mu_hat), torch.ones_like(var_hat)
                mu_q, var_q = mu_hat, var_hat
            z = self._sample(mu_q, var_q, sample, generator)
            kl = node_kl(prob, mu_q, var_q, mu_p, var_p)
            if path:
                kl_nodes = kl_nodes + kl
            else:
                kl_root = kl
            if return_nodes:
                nodes[path] = {"mu_q": mu_q, "var_q": var_q, "mu_p": mu_p, "var_p": var_p, "z": z, "prob": prob}
            kind = self.node_kind(path)
            if kind == "internal":
                p_left = self.routers[node_key(path)](z)
                q_left = self.routers_q[node_key(path)](d)
                kl_decisions = kl_decisions + prob * decision_kl(q_left, p_left)
                if paired_views:
                    aug = aug + decision_contrast(q_left, prob)
                queue.append((path + "0", prob * q_left, z))
                queue.append((path + "1", prob * (1.0 - q_left), z))
            elif kind == "leaf":
                probs.append(prob)
                recons.append(self.decoders[node_key(path)](z))
                paths.append(path)
            else:
                queue.append((self.child_paths(path)[0], prob, z))
        leaf_probabilities = torch.stack(probs, dim=1)
        rec = sum(p * leaf_reconstruction(x, r, self.settings.recon) for p, r in zip(probs, recons))
        out = {"rec": rec, "kl_root": kl_root, "kl_nodes": kl_nodes, "kl_decisions": kl_decisions,
               "leaf_probabilities": leaf_probabilities, "reconstructions": torch.stack(recons, dim=1),
               "leaf_paths": paths}
        if return_nodes:
            out["nodes"] = nodes
        if paired_views:
            out["aug"] = aug
        return out

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``n`` root latents ``z_0 ~ N(0, (1 + EPS) I)`` and propagate them down with the priors and
        p-routing. Returns every leaf's image ``[n, L, C, S, S]`` and the leaf probabilities ``p`` ``[n, L]``
        (columns in ``leaf_paths`` order). Call ``eval()`` first for BatchNorm's running statistics."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"generate: n must be an integer >= 1, got {n!r}")
        reference = next(self.encoder.parameters())
        shape = (n, self.settings.latent_dim)
        zeros = torch.zeros(shape, device=reference.device, dtype=reference.dtype)
        probs, images = [], []
        queue = deque([("", torch.ones(n, device=zeros.device, dtype=zeros.dtype), None)])
        while queue:
            path, prob, z_parent = queue.popleft()
            if path:
                mu_p, var_p = self.transformations[node_key(path)](z_parent)
            else:
                mu_p, var_p = zeros, torch.ones_like(zeros)
            z = self._sample(mu_p, var_p, True, generator)
            kind = self.node_kind(path)
            if kind == "internal":
                p_left = self.routers[node_key(path)](z)
                queue.append((path + "0", prob * p_left, z))
                queue.append((path + "1", prob * (1.0 - p_left), z))
            elif kind == "leaf":
                probs.append(prob)
                images.append(self.decoders[node_key(path)](z))
            else:
                queue.append((self.child_paths(path)[0], prob, z))
        return torch.stack(images, dim=1), torch.stack(probs, dim=1)
