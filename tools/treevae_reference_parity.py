"""Check 8.2 of ``shared/reference/treevae.md``: raytopo's TreeVAE and the reference implementation
(lauramanduchi/treevae @9e6a30c) compute the same four ELBO terms on the same weights.

Usage::

    git -C <mirror> archive HEAD | tar -x -C /tmp/treevae_ref
    python tools/treevae_reference_parity.py --reference /tmp/treevae_ref \\
        [--write tests/models/data/treevae_reference_terms.json]

For every tree of ``TREES`` and every case of ``CASES`` (both in ``tests/models/treevae_reference_helpers.py``) it
builds raytopo's model with the deterministic numpy weight fill, builds the reference's TreeVAE **with the
reference's own growth code** (``attach_smalltree`` of a ``SmallTreeVAE(depth=leaf_depth + 1)``, as
train/train_tree.py:136,161; pruning with ``Node.prune_child`` and ``return_list_tree``, as train/train_tree.py:
207-223), copies raytopo's state_dict onto it through :func:`reference_key`, runs both forwards on the same input and
prints the four terms, their differences and the leaf probabilities' difference. It exits with status 1 if any
term differs by more than ``1e-5 * max(1, |reference|)`` or a leaf probability by more than 1e-5. ``--write``
records the reference's numbers (terms, leaf probabilities, leaf paths) with the seeds and shapes that rebuild the
inputs: the fixture of ``tests/models/test_treevae_reference.py``.

The reference is imported from ``--reference`` only (never copied). Its reporting dependencies (wandb,
torchmetrics, sklearn, scipy, torchvision, PIL, tqdm, yaml) are replaced by stub modules in ``sys.modules`` while
it is imported and restored afterwards; nothing of them runs in ``forward``.

**Randomness.** Two latent modes, both compared: ``mean`` (``z = mu_q`` at every node: ``sample=False`` in
raytopo; ``torch.distributions.Normal.rsample`` patched to return ``loc`` in the reference) and ``sampled``
(identical seeded noise: raytopo draws ``torch.randn([B, 8], generator=Generator().manual_seed(2))`` per node
in breadth-first order; the reference's ``rsample`` draws ``empty([B, 8]).normal_()`` from the global RNG after
``torch.manual_seed(2)``, also one per node in breadth-first order, leaves and pass-through nodes included; both
streams are the same numbers). Each in BatchNorm ``eval`` (running statistics) and ``train`` (batch statistics)
mode, with weight scale 0.15; plus ``eval/sampled/saturated`` at scale 0.2, where the per-node KL clamp at 1000 and
BCE's log clamp are reached. Every case builds fresh models, because ``train`` updates the running statistics.

**Scope and limits.** Only the MNIST ``cnn1`` / BCE configuration with ``augment: False`` and q-routing
``forward``; not the contrastive term, ``mse`` / ``cnn2``, ``generate_images`` or ``compute_reconstruction``. The
tolerance ``1e-5 * max(1, |reference|)`` is loose for ``rec`` (~550, so 5.5e-3 absolute) next to the measured
agreement (~1e-7 relative): on uniform inputs the BCE sum barely moves with one decoder weight (its gradient
``sum(x_hat - x)`` nearly cancels when both average 0.5), so a single perturbed decoder weight may stay within
tolerance in the unsaturated cases; whole-module mistakes (a swapped or misnamed decoder) do not.

**Name mapping** (:func:`reference_key`). raytopo keys nodes by path (``"r" + path`` in the ModuleDicts); the
reference keeps per-node ModuleLists indexed by the node's breadth-first position, pass-through nodes included
(``return_list_tree``, utils/model_utils.py:80), which is the position of the path in raytopo's
``node_paths()``. With ``i`` that index and ``k`` a bottom-up step:

====================================================  ===========================================================
raytopo                                               reference
====================================================  ===========================================================
``encoder.net.{0,1,3,4,6,7}.*``                       ``bottom_up.0.{cnn0,bn0,cnn1,bn1,cnn2,bn2}.*``
``bottom_up.{k}.net.{0,1}.*``                         ``bottom_up.{k+1}.{dense1,bn1}.*``
``denses.r<path>.{mu,var}.*``                         ``denses.{i}.{mu,sigma}.*``
``transformations.r<path>.body.{0,1}.*``              ``transformations.{i}.{dense1,bn1}.*``
``transformations.r<path>.head.{mu,var}.*``           ``transformations.{i}.{mu,sigma}.*``
``routers.r<path>.net.{0,1,3,4,6}.*``                 ``decisions.{i}.{dense1,bn1,dense2,bn2,dense3}.*``
``routers_q.r<path>.net.{0,1,3,4,6}.*``               ``decisions_q.{i}.{dense1,bn1,dense2,bn2,dense3}.*``
``decoders.r<path>.dense.{0,1}.*``                    ``decoders.{i}.{dense,bn}.*``
``decoders.r<path>.deconv.{0,1,3,4,6}.*``             ``decoders.{i}.{cnn1,bn1,cnn2,bn2,cnn3}.*``
====================================================  ===========================================================

The only reference entries left unmapped are dead in ``forward`` (checked by :func:`load_into_reference`): the
``mu`` / ``sigma`` heads of the bottom-up MLPs ``bottom_up.{1..5}`` (models/networks.py:307-321: ``MLP`` always
has them, ``forward`` uses only its hidden output, models/model.py:222) and the ``decisions_q.{i}`` of a
pass-through node (``prune_child`` clears ``router`` but not ``routers_q``, utils/model_utils.py:68-78; brief bug
3). raytopo has no unmapped entries.

**Differences found between the reference and raytopo** (none changes the four terms beyond float32 rounding;
the measured maxima are printed by this script):

1. Reduction: the reference returns batch means (models/model.py:330-338); raytopo's ``forward`` returns per-sample
   ``[B]`` terms and ``reference_loss`` / this script reduce them. The batch clamp
   ``clamp(mean(kl_nodes), -10, 1e10)`` (models/model.py:330) is applied outside ``forward`` in raytopo
   (raytopo/models/treevae/losses.py ``reference_loss``), so raytopo's per-sample ``kl_nodes`` carry only the
   per-node ``[-1, 1000]`` clamp (models/model.py:278; losses.py ``node_kl``), like the reference's ``kl_nodes_tot``.
2. Router output: the reference's ``.squeeze()`` (models/model.py:288-289) turns ``[1, 1]`` into a 0-d tensor at
   batch size 1 (brief bug 4); raytopo's ``Router`` returns ``[:, 0]`` (layers.py). Identical for batch 16, and in
   ``forward`` the 0-d tensor still broadcasts: :func:`run_batch_one` compares batch 1 (eval mode; BatchNorm
   cannot train on one sample in either implementation) and finds the same terms.
3. Node KL formula: the reference uses ``td.kl_divergence`` of ``Normal(mu, sqrt(var + 1e-7))`` pairs, i.e.
   ``0.5 * (r + ((mu_q - mu_p) / s_p)^2 - 1 - log r)`` with ``r = (s_q / s_p)^2``; raytopo writes
   ``0.5 * sum(v_q/v_p + (mu_p - mu_q)^2/v_p - 1 + log v_p - log v_q)`` on ``v = var + 1e-7`` (losses.py
   ``gaussian_kl``). Same value, different float32 rounding (square roots squared back).
4. Reconstruction sum: the reference stacks ``P(l) * BCE_l`` and sums over leaves (models/losses.py:8-14); raytopo
   adds them one by one (tree.py ``forward``). Same order, rounding only.
5. Dead parameters (above): the reference's bottom-up MLP heads and a pruned node's ``routers_q``; raytopo drops
   both (so its state_dicts load with ``strict=True``).
6. Root prior: both ``N(0, (1 + 1e-7) I)`` (``sqrt(1 + eps)`` scale, models/model.py:258-259; raytopo passes
   ``var_p + EPS`` with ``var_p = 1``). Same.
7. Decoder: raytopo crops the transposed-convolution output to ``image_size``; for 28 px it is exactly 28 (3 -> 7
   -> 14 -> 28), as the reference's ``view(-1, 32, 3, 3)`` decoder (models/networks.py:97-123). Same.
8. Growth: the reference's ``SmallTreeVAE(depth)`` reads ``latent_dim[-(depth+1):-(depth-1)]``
   (models/model_smalltree.py:80-83); with equal per-depth sizes (8 / 128) its modules have raytopo's shapes
   at every depth used here. The off-by-one of ``construct_tree_fromnpy`` (brief bug 1) is not exercised.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import torch
import torch.distributions as td

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "models"))

from treevae_reference_helpers import (  # noqa: E402  (needs the path above)
    CASES,
    INPUT_SEED,
    INPUT_SHAPE,
    NOISE_SEED,
    SATURATED_SCALE,
    SETTINGS,
    TERMS,
    TOLERANCE,
    TREES,
    WEIGHT_SCALE,
    WEIGHT_SEED,
    build_model,
    make_input,
    raytopo_terms,
    within_tolerance,
)

REFERENCE_REPO = "lauramanduchi/treevae"
REFERENCE_COMMIT = "9e6a30c4861e83f9b07c912c91f7a9f0c0806c20"

#: The reference's training config (configs/mnist.yml ``training``) restricted to what the model reads.
REFERENCE_CONFIG = {
    "inp_shape": 784, "latent_dim": [8] * 6, "mlp_layers": [128] * 6, "initial_depth": 1,
    "activation": "sigmoid", "encoder": "cnn1", "augment": False, "augmentation_method": "simple",
    "aug_decisions_weight": 1, "kl_start": 0.0,
}

#: raytopo settings recorded in the fixture (those that shape the model; later fields default to the reference's).
SETTINGS_FIELDS = ("image_size", "channels", "latent_dim", "hidden", "encoder_channels", "max_depth", "recon",
                   "negative_slope")

STUBBED_MODULES = (
    "wandb", "torchmetrics", "sklearn", "sklearn.metrics", "sklearn.metrics.cluster", "scipy", "scipy.optimize",
    "scipy.special", "torchvision", "torchvision.transforms", "PIL", "PIL.Image", "tqdm", "yaml",
)

# raytopo Sequential index -> reference attribute, per module kind
ENCODER_LAYERS = {"0": "cnn0", "1": "bn0", "3": "cnn1", "4": "bn1", "6": "cnn2", "7": "bn2"}
HIDDEN_LAYERS = {"0": "dense1", "1": "bn1"}
ROUTER_LAYERS = {"0": "dense1", "1": "bn1", "3": "dense2", "4": "bn2", "6": "dense3"}
DECODER_DENSE = {"0": "dense", "1": "bn"}
DECODER_DECONV = {"0": "cnn1", "1": "bn1", "3": "cnn2", "4": "bn2", "6": "cnn3"}
HEADS = {"mu": "mu", "var": "sigma"}


# ------------------------------------------------------------------------------------------------ importing


class _StubModule(types.ModuleType):
    """A module whose every attribute is a fresh empty class (subclassable, callable, never used in forward)."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


@contextlib.contextmanager
def stubbed_modules(names: tuple[str, ...] = STUBBED_MODULES):
    """Install stub modules (each with a ``__spec__`` and an empty ``__path__``) under ``names`` in
    ``sys.modules`` and restore the previous entries on exit."""
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        stub = _StubModule(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        stub.__path__ = []
        sys.modules[name] = stub
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_reference(path: Path) -> types.SimpleNamespace:
    """Import the reference's ``TreeVAE``, ``SmallTreeVAE`` and ``return_list_tree`` from the checkout ``path``.

    Its top-level packages are called ``models``, ``utils`` and ``train``; a clash with modules already imported
    under those names is an error."""
    path = Path(path).resolve()
    if not (path / "models" / "model.py").is_file():
        raise SystemExit(f"--reference {path}: no models/model.py (extract lauramanduchi/treevae there)")
    clashes = [name for name in ("models", "utils", "train") if name in sys.modules]
    if clashes:
        raise SystemExit(f"modules {clashes} are already imported; cannot import the reference's packages")
    sys.path.insert(0, str(path))
    try:
        with stubbed_modules():
            from models.model import TreeVAE
            from models.model_smalltree import SmallTreeVAE
            from utils.model_utils import return_list_tree
    finally:
        sys.path.remove(str(path))
    return types.SimpleNamespace(TreeVAE=TreeVAE, SmallTreeVAE=SmallTreeVAE, return_list_tree=return_list_tree)


# ------------------------------------------------------------------------------------------------ reference tree


def reference_nodes(ref_model: torch.nn.Module) -> list[tuple[str, object]]:
    """``(path, Node)`` of every node of the reference tree, breadth-first, walked as its ``forward`` does:
    ``router`` set means internal, else ``decoder`` set means leaf, else pass-through (one child)."""
    out, queue = [], [("", ref_model.tree)]
    while queue:
        path, node = queue.pop(0)
        out.append((path, node))
        if node.router is not None:
            queue += [(path + "0", node.left), (path + "1", node.right)]
        elif node.decoder is None:
            queue.append((path + "0", node.left) if node.left is not None else (path + "1", node.right))
    return out


def reference_structure(ref_model: torch.nn.Module) -> dict[str, list[str]]:
    """The reference tree in raytopo's ``structure()`` format."""
    out: dict[str, list[str]] = {"leaves": [], "internal": [], "pass_through": []}
    for path, node in reference_nodes(ref_model):
        kind = "internal" if node.router is not None else "leaves" if node.decoder is not None else "pass_through"
        out[kind].append(path)
    return out


def _node_at(ref_model: torch.nn.Module, path: str):
    """The reference Node at ``path``."""
    for node_path, node in reference_nodes(ref_model):
        if node_path == path:
            return node
    raise KeyError(f"reference tree has no node {path!r}")


def _refresh_lists(ref, ref_model: torch.nn.Module) -> None:
    """Re-register the tree's modules in the model's ModuleLists, as train/train_tree.py:217-223 does."""
    transformations, routers, denses, decoders, routers_q = ref.return_list_tree(ref_model.tree)
    ref_model.decisions_q, ref_model.transformations, ref_model.decisions = routers_q, transformations, routers
    ref_model.denses, ref_model.decoders = denses, decoders
    ref_model.depth = ref_model.compute_depth()


def build_reference(ref, operations: list) -> torch.nn.Module:
    """The reference TreeVAE (root + 2 leaves) grown by ``operations`` with the reference's own code: ``grow``
    attaches ``SmallTreeVAE(depth=leaf_depth + 1)`` (train/train_tree.py:136,161); ``prune`` removes the leaf
    with ``prune_child`` (train/train_tree.py:207-212) and re-lists the modules."""
    torch.manual_seed(0)  # only the dead, unmapped entries keep these initial values
    model = ref.TreeVAE(**REFERENCE_CONFIG)
    for action, path in operations:
        node = _node_at(model, path)
        if action == "grow":
            model.attach_smalltree(node, ref.SmallTreeVAE(depth=len(path) + 1, **REFERENCE_CONFIG))
        elif action == "prune":
            node.parent.prune_child(node)
            _refresh_lists(ref, model)
        else:
            raise ValueError(f"unknown tree operation {action!r}")
    return model


# ------------------------------------------------------------------------------------------------ name mapping


def reference_key(key: str, node_index: dict[str, int]) -> str:
    """The reference state_dict name of raytopo's ``key`` (module docstring table); ``node_index`` maps a node
    path to its breadth-first position."""
    parts = key.split(".")
    kind = parts[0]
    if kind == "encoder":  # encoder.net.<j>.<param>
        return f"bottom_up.0.{ENCODER_LAYERS[parts[2]]}.{parts[3]}"
    if kind == "bottom_up":  # bottom_up.<k>.net.<j>.<param>
        return f"bottom_up.{int(parts[1]) + 1}.{HIDDEN_LAYERS[parts[3]]}.{parts[4]}"
    index, rest, param = node_index[parts[1][1:]], parts[2:-1], parts[-1]
    if kind == "denses":  # denses.r<path>.<mu|var>.<param>
        return f"denses.{index}.{HEADS[rest[0]]}.{param}"
    if kind == "transformations":  # transformations.r<path>.<body.j | head.mu|var>.<param>
        layer = HIDDEN_LAYERS[rest[1]] if rest[0] == "body" else HEADS[rest[1]]
        return f"transformations.{index}.{layer}.{param}"
    if kind in ("routers", "routers_q"):  # routers.r<path>.net.<j>.<param>
        return f"{'decisions' if kind == 'routers' else 'decisions_q'}.{index}.{ROUTER_LAYERS[rest[1]]}.{param}"
    if kind == "decoders":  # decoders.r<path>.<dense|deconv>.<j>.<param>
        layer = DECODER_DENSE[rest[1]] if rest[0] == "dense" else DECODER_DECONV[rest[1]]
        return f"decoders.{index}.{layer}.{param}"
    raise KeyError(f"no reference name for {key!r}")


def expected_dead_keys(ref_model: torch.nn.Module) -> set[str]:
    """Reference entries that ``forward`` never reads: the bottom-up MLPs' ``mu``/``sigma`` heads and the stale
    ``decisions_q`` of pass-through nodes. ``num_batches_tracked`` is left out: BatchNorm's loader fills a missing one
    itself, so it is never reported missing."""
    index = {path: i for i, (path, _) in enumerate(reference_nodes(ref_model))}
    pass_through = {index[p] for p in reference_structure(ref_model)["pass_through"]}
    dead = set()
    for name in ref_model.state_dict():
        parts = name.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "bottom_up" and parts[1] != "0" and parts[2] in ("mu", "sigma"):
            dead.add(name)
        elif parts[0] == "decisions_q" and int(parts[1]) in pass_through:
            dead.add(name)
    return dead


def load_into_reference(model: torch.nn.Module, ref_model: torch.nn.Module) -> None:
    """Copy raytopo's state_dict onto the reference model through :func:`reference_key`; every reference entry
    must be mapped except the dead ones of :func:`expected_dead_keys`, and every raytopo entry must land."""
    if model.structure() != reference_structure(ref_model):
        raise AssertionError(f"trees differ: raytopo {model.structure()} vs reference {reference_structure(ref_model)}")
    node_index = {path: i for i, path in enumerate(model.node_paths())}
    mapped = {reference_key(key, node_index): value for key, value in model.state_dict().items()}
    result = ref_model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != expected_dead_keys(ref_model):
        raise AssertionError(f"name mapping incomplete: unexpected {result.unexpected_keys}, missing "
                             f"{sorted(set(result.missing_keys) ^ expected_dead_keys(ref_model))}")


# ------------------------------------------------------------------------------------------------ forwards


@contextlib.contextmanager
def posterior_means():
    """Make ``torch.distributions.Normal.rsample`` return its mean (the reference's ``z = mu_q``)."""
    original = td.Normal.rsample
    td.Normal.rsample = lambda self, sample_shape=torch.Size(): self.loc.expand(self._extended_shape(sample_shape))
    try:
        yield
    finally:
        td.Normal.rsample = original


def reference_terms(ref_model: torch.nn.Module, x: torch.Tensor, mode: str, latent: str,
                    noise_seed: int = NOISE_SEED) -> dict:
    """The reference ``forward``'s ``rec_loss``, ``kl_root``, ``kl_nodes``, ``kl_decisions`` and ``p_c_z``."""
    ref_model.train(mode == "train")
    context = posterior_means() if latent == "mean" else contextlib.nullcontext()
    torch.manual_seed(noise_seed)
    with context, torch.no_grad():
        out = ref_model(x)
    terms = {"rec": out["rec_loss"], "kl_root": out["kl_root"], "kl_nodes": out["kl_nodes"],
             "kl_decisions": out["kl_decisions"]}
    result = {name: float(value) for name, value in terms.items()}
    result["leaf_probabilities"] = out["p_c_z"].tolist()
    return result


def compare_case(ref, operations: list, x: torch.Tensor, mode: str, latent: str,
                 scale: float) -> tuple[dict, dict]:
    """Fresh raytopo and reference models for one tree and case; returns ``(reference, raytopo)`` results."""
    model = build_model(operations, scale=scale)
    ref_model = build_reference(ref, operations)
    load_into_reference(model, ref_model)
    reference = reference_terms(ref_model, x, mode, latent)
    reference["leaf_paths"] = reference_structure(ref_model)["leaves"]
    return reference, raytopo_terms(model, x, mode, latent)


def differences(reference: dict, ours: dict) -> dict[str, float]:
    """Absolute difference per term and the largest absolute leaf-probability difference."""
    out = {name: abs(ours[name] - reference[name]) for name in TERMS}
    ref_p = torch.tensor(reference["leaf_probabilities"])
    out["leaf_probabilities"] = float((torch.tensor(ours["leaf_probabilities"]) - ref_p).abs().max())
    return out


def case_passes(reference: dict, ours: dict) -> bool:
    """Every term within ``1e-5 * max(1, |reference|)``, leaf probabilities within 1e-5, same leaf paths."""
    terms_ok = all(within_tolerance(ours[name], reference[name]) for name in TERMS)
    probs_ok = differences(reference, ours)["leaf_probabilities"] <= TOLERANCE
    return terms_ok and probs_ok and ours["leaf_paths"] == reference["leaf_paths"]


# ------------------------------------------------------------------------------------------------ main


def float32_digits(value):
    """``value`` (a float or nested lists of floats) rounded to 9 significant digits, which round-trip float32."""
    if isinstance(value, list):
        return [float32_digits(v) for v in value]
    return float(f"{value:.9g}") if isinstance(value, float) else value


def compact_json(data: dict) -> str:
    """``json.dumps(indent=1)`` with every innermost list (of numbers or strings) on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"


def fixture(results: dict) -> dict:
    """The JSON fixture: raytopo-independent reference numbers plus what rebuilds the inputs."""
    return {
        "description": "Reference TreeVAE ELBO terms (batch-reduced as in its forward) on deterministic weights; "
                       "written by tools/treevae_reference_parity.py.",
        "reference": {"repo": REFERENCE_REPO, "commit": REFERENCE_COMMIT, "config": REFERENCE_CONFIG},
        "settings": {name: getattr(SETTINGS, name) if name != "encoder_channels" else list(SETTINGS.encoder_channels)
                     for name in SETTINGS_FIELDS},
        "weights": {"seed": WEIGHT_SEED, "scale": WEIGHT_SCALE, "saturated_scale": SATURATED_SCALE,
                    "rule": "numpy RandomState(seed).standard_normal per raytopo state_dict name in sorted order; "
                            "running_var 0.5+|d|, BatchNorm weight 1+scale*d, else scale*d"},
        "cases": {name: {"batch_norm": mode, "latent": latent, "scale": scale}
                  for name, (mode, latent, scale) in CASES.items()},
        "input": {"seed": INPUT_SEED, "shape": list(INPUT_SHAPE), "rule": "RandomState(seed).uniform(0, 1) float32"},
        "noise_seed": NOISE_SEED,
        "tolerance": TOLERANCE,
        "trees": {name: {"operations": [list(op) for op in TREES[name]],
                         "cases": {case: {k: float32_digits(v) for k, v in numbers.items()}
                                   for case, numbers in cases.items()}}
                  for name, cases in results.items()},
    }


def print_case(tree: str, case: str, reference: dict, ours: dict, ok: bool) -> None:
    """One case: both implementations' terms, ``|diff|`` and ``|diff| / max(1, |reference|)`` (the quantity held
    to the tolerance), and the leaf probabilities' largest ``|diff|``."""
    diff = differences(reference, ours)
    print(f"{tree:16s} {case:23s} leaves {reference['leaf_paths']} {'ok' if ok else 'FAIL'}")
    for name in TERMS:
        scaled = diff[name] / max(1.0, abs(reference[name]))
        print(f"    {name:13s} reference {reference[name]:<14.9g} raytopo {ours[name]:<14.9g} "
              f"|diff| {diff[name]:<9.3g} scaled {scaled:.3g}")
    print(f"    {'leaf P':13s} max |diff| {diff['leaf_probabilities']:.3g}")


def print_summary(worst: dict[str, dict[str, float]]) -> None:
    """Per tree, the largest ``|diff|`` (and scaled difference) of each term over its cases."""
    print("\nmax over cases: |diff| (scaled)")
    for tree, values in worst.items():
        cells = [f"{name} {values[name]:.3g} ({values[name + '_scaled']:.3g})" for name in TERMS]
        print(f"  {tree:16s} " + ", ".join(cells) + f", leaf P {values['leaf_probabilities']:.3g}")


def run_all(ref, x: torch.Tensor) -> tuple[dict, dict, list[str]]:
    """Every tree and case: ``(reference results per tree and case, worst differences per tree, failures)``."""
    results: dict[str, dict] = {}
    worst: dict[str, dict[str, float]] = {}
    failed: list[str] = []
    for tree, operations in TREES.items():
        results[tree], worst[tree] = {}, {}
        for case, (mode, latent, scale) in CASES.items():
            reference, ours = compare_case(ref, operations, x, mode, latent, scale)
            ok = case_passes(reference, ours)
            failed += [] if ok else [f"{tree} {case}"]
            print_case(tree, case, reference, ours, ok)
            diff = differences(reference, ours)
            diff.update({f"{n}_scaled": diff[n] / max(1.0, abs(reference[n])) for n in TERMS})
            worst[tree] = {k: max(worst[tree].get(k, 0.0), v) for k, v in diff.items()}
            results[tree][case] = {key: reference[key] for key in (*TERMS, "leaf_probabilities", "leaf_paths")}
    return results, worst, failed


def run_batch_one(ref, x: torch.Tensor) -> list[str]:
    """Every tree on the first image alone, eval mode with sampled latents; returns the failures."""
    failed = []
    for tree, operations in TREES.items():
        reference, ours = compare_case(ref, operations, x[:1], "eval", "sampled", WEIGHT_SCALE)
        ok = case_passes(reference, ours)
        failed += [] if ok else [f"{tree} batch-1"]
        print_case(tree, "eval/sampled batch 1", reference, ours, ok)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="extracted lauramanduchi/treevae checkout")
    parser.add_argument("--write", type=Path, help="write the reference's numbers as a JSON fixture")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref = import_reference(args.reference)
    x = make_input()
    results, worst, failed = run_all(ref, x)
    print_summary(worst)
    print()
    failed += run_batch_one(ref, x)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(compact_json(fixture(results)))
        print(f"wrote {args.write}")
    if failed:
        print(f"FAILED (tolerance {TOLERANCE} scaled, 1e-5 on leaf P): {failed}")
        return 1
    print(f"all {sum(len(r) for r in results.values())} cases and {len(TREES)} batch-1 cases within tolerance "
          f"{TOLERANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
