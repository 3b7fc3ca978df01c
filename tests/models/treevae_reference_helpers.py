"""Rebuild raytopo's side of the TreeVAE reference-parity check (brief ``treevae.md`` check 8.2).

Shared by ``tests/models/test_treevae_reference.py`` (raytopo only, against the JSON fixture) and
``tools/treevae_reference_parity.py`` (which also runs lauramanduchi/treevae and writes the fixture). Nothing here
imports the reference.

Everything is deterministic without torch's RNG: the weights come from ``numpy.random.RandomState`` in sorted
state_dict-name order (:func:`fill_parameters`), the input from another ``RandomState`` (:func:`make_input`), and
the latent noise from a seeded ``torch.Generator`` (:func:`raytopo_terms`), so the numbers do not depend on the
order in which torch initialised the modules or on how the tree was grown.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from raytopo.models.treevae import TreeVAE, TreeVAESettings
from raytopo.models.treevae.losses import BATCH_KL_NODES_CLAMP

#: The reference's MNIST / FashionMNIST ``cnn1`` configuration (configs/mnist.yml: inp_shape 784, latent_dim [8]*6,
#: mlp_layers [128]*6, activation sigmoid, encoder cnn1, initial_depth 1, augment False).
SETTINGS = TreeVAESettings(image_size=28, channels=1, latent_dim=8, hidden=128, encoder_channels=(8, 16, 32),
                           max_depth=5, recon="bce")

WEIGHT_SEED = 0
#: 0.15 rather than 0.1: with 0.1 the eval-mode reconstructions stay within 0.45..0.52 and the routers near 0.5, so
#: ``rec`` and ``kl_decisions`` barely depend on the weights; with 0.15 they spread (x_hat 0.29..0.63, leaf P
#: 0.001..0.82) without reaching any clamp.
WEIGHT_SCALE = 0.15
#: Eval-mode activations grow layer by layer at this scale: the per-node KL clamp at 1000 and BCE's log clamp at
#: -100 are reached, so the ``saturated`` case checks that both implementations clamp in the same places.
SATURATED_SCALE = 0.2
INPUT_SEED = 1
INPUT_SHAPE = (16, 1, 28, 28)
NOISE_SEED = 2

#: Trees compared, as the operations that grow them from the initial root + 2 leaves: ``("grow", leaf)`` splits a
#: leaf (the reference attaches a SmallTreeVAE to it), ``("prune", leaf)`` removes a leaf so its parent becomes a
#: pass-through node (the reference's ``prune_child``).
TREES: dict[str, list[tuple[str, str]]] = {
    "root_two_leaves": [],
    "grown": [("grow", "1")],
    "deep": [("grow", "1"), ("grow", "10"), ("grow", "0")],
    "pruned": [("grow", "1"), ("prune", "10")],
}

#: ``name: (batch-norm mode, latent, weight scale)``. BatchNorm ``eval`` uses the running statistics, ``train`` the
#: batch's. ``mean`` uses ``z = mu_q`` at every node, ``sampled`` draws one standard-normal ``[B, latent]`` tensor
#: per node in breadth-first order from a generator seeded with ``NOISE_SEED``.
CASES: dict[str, tuple[str, str, float]] = {
    "eval/mean": ("eval", "mean", WEIGHT_SCALE),
    "eval/sampled": ("eval", "sampled", WEIGHT_SCALE),
    "train/mean": ("train", "mean", WEIGHT_SCALE),
    "train/sampled": ("train", "sampled", WEIGHT_SCALE),
    "eval/sampled/saturated": ("eval", "sampled", SATURATED_SCALE),
}

TERMS = ("rec", "kl_root", "kl_nodes", "kl_decisions")
TOLERANCE = 1e-5


def within_tolerance(value: float, expected: float, tolerance: float = TOLERANCE) -> bool:
    """``|value - expected| <= tolerance * max(1, |expected|)``: absolute below 1, relative above (a ``rec`` of
    ~500 in float32 carries ~3e-5 of rounding noise)."""
    return abs(value - expected) <= tolerance * max(1.0, abs(expected))


def batch_norm_names(model: nn.Module) -> set[str]:
    """Prefixes (``"encoder.net.1"``, ...) of every BatchNorm module of ``model``."""
    return {name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}


def fill_parameters(model: nn.Module, seed: int = WEIGHT_SEED, scale: float = WEIGHT_SCALE) -> nn.Module:
    """Overwrite every floating-point entry of ``model.state_dict()`` from ``numpy.random.RandomState(seed)``,
    visiting the names in sorted order; one ``standard_normal`` draw of the entry's shape per name (also for
    ``running_var``, so the stream does not depend on the entry kind):

    - ``running_var``: ``0.5 + |draw|`` (positive);
    - a BatchNorm ``weight``: ``1 + scale * draw`` (near one, so activations keep their size);
    - anything else (weights, biases, BatchNorm ``bias`` and ``running_mean``): ``scale * draw``.

    Integer buffers (``num_batches_tracked``) are left alone. Returns ``model``.
    """
    rs = np.random.RandomState(seed)
    norms = batch_norm_names(model)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if not tensor.is_floating_point():
                continue
            draw = rs.standard_normal(tuple(tensor.shape))
            prefix, _, leaf = name.rpartition(".")
            if leaf == "running_var":
                value = 0.5 + np.abs(draw)
            elif leaf == "weight" and prefix in norms:
                value = 1.0 + scale * draw
            else:
                value = scale * draw
            tensor.copy_(torch.as_tensor(value, dtype=tensor.dtype))
    return model


def make_input(seed: int = INPUT_SEED, shape: tuple[int, ...] = INPUT_SHAPE) -> torch.Tensor:
    """``numpy.random.RandomState(seed).uniform(0, 1, shape)`` as a float32 tensor (images in [0, 1))."""
    return torch.from_numpy(np.random.RandomState(seed).uniform(0.0, 1.0, size=shape).astype(np.float32))


def build_model(operations: list, settings: TreeVAESettings = SETTINGS, seed: int = WEIGHT_SEED,
                scale: float = WEIGHT_SCALE) -> TreeVAE:
    """raytopo's TreeVAE grown from root + 2 leaves by ``operations`` (``[("grow" | "prune", leaf), ...]``) with
    its own ``grow`` / ``prune``, then filled by :func:`fill_parameters`."""
    model = TreeVAE(settings)
    for action, path in operations:
        if action == "grow":
            model.grow(path)
        elif action == "prune":
            model.prune(path)
        else:
            raise ValueError(f"unknown tree operation {action!r}")
    return fill_parameters(model, seed, scale)


def raytopo_terms(model: TreeVAE, x: torch.Tensor, mode: str, latent: str, noise_seed: int = NOISE_SEED) -> dict:
    """The reference's four batch-reduced ELBO terms from raytopo's per-sample ones, plus the leaf probabilities.

    ``rec``, ``kl_root`` and ``kl_decisions`` are batch means; ``kl_nodes`` is ``clamp(mean, -10, 1e10)``, as in
    ``reference_loss`` and the reference's ``models/model.py:330``. ``mode`` is ``"eval"`` or ``"train"`` (BatchNorm
    running vs batch statistics; note that ``train`` updates the running statistics), ``latent`` is ``"mean"`` or
    ``"sampled"``.
    """
    model.train(mode == "train")
    generator = torch.Generator().manual_seed(noise_seed) if latent == "sampled" else None
    with torch.no_grad():
        out = model(x, sample=latent == "sampled", generator=generator)
    return {
        "rec": float(out["rec"].mean()),
        "kl_root": float(out["kl_root"].mean()),
        "kl_nodes": float(out["kl_nodes"].mean().clamp(*BATCH_KL_NODES_CLAMP)),
        "kl_decisions": float(out["kl_decisions"].mean()),
        "leaf_probabilities": out["leaf_probabilities"].tolist(),
        "leaf_paths": list(out["leaf_paths"]),
        "per_sample": {name: out[name] for name in TERMS},
    }
