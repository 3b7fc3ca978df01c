"""TreeVAE as a plain-torch module with a mutable tree.

Truth used here, independent of the implementation: the closed-form Gaussian KL written out below and
torch.distributions' KLs; the product-of-Gaussians identity for the posterior; path probabilities that must sum to
one over the leaves; a second model rebuilt from ``structure()`` alone; hand-built probability arrays for the
growth and pruning rules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence as torch_kl

from raytopo.errors import ConfigError, InputError
from raytopo.models.treevae import (
    EPS,
    TreeVAE,
    TreeVAESettings,
    choose_leaf_to_grow,
    decision_kl,
    effective_leaves,
    gaussian_kl,
    leaves_to_prune,
    precision_weighted_posterior,
    reference_loss,
    validate_structure,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TreeVAESettings(image_size=16, channels=1, latent_dim=4, hidden=16, encoder_channels=(4, 8, 8), max_depth=3)


def tiny_model(seed: int = 0, settings: TreeVAESettings = TINY) -> TreeVAE:
    torch.manual_seed(seed)
    return TreeVAE(settings)


def images(n: int, seed: int = 1, settings: TreeVAESettings = TINY) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, settings.channels, settings.image_size, settings.image_size, generator=g)


def run(model: TreeVAE, x: torch.Tensor, seed: int | None = 3, **kwargs) -> dict:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return model(x, sample=seed is not None, generator=generator, **kwargs)


def hand_kl(mu_q, var_q, mu_p, var_p):
    """1/2 sum[var_q/var_p + (mu_p - mu_q)^2/var_p - 1 + log(var_p/var_q)] over the last dimension."""
    return 0.5 * (var_q / var_p + (mu_p - mu_q) ** 2 / var_p - 1 + torch.log(var_p / var_q)).sum(-1)


# ------------------------------------------------------------------------------------------------ shapes, settings


@pytest.mark.parametrize("size,channels,recon", [(16, 1, "bce"), (28, 1, "bce"), (21, 3, "mse"), (32, 3, "mse")])
def test_shapes_and_output_range(size, channels, recon):
    settings = TreeVAESettings(image_size=size, channels=channels, latent_dim=4, hidden=16,
                               encoder_channels=(4, 8, 8), max_depth=2, recon=recon)
    model = tiny_model(settings=settings)
    x = images(5, settings=settings)
    out = run(model, x)
    assert out["reconstructions"].shape == (5, 2, channels, size, size)
    assert out["leaf_probabilities"].shape == (5, 2) and out["leaf_paths"] == ["0", "1"]
    for name in ("rec", "kl_root", "kl_nodes", "kl_decisions"):
        assert out[name].shape == (5,) and torch.isfinite(out[name]).all()
    if recon == "bce":
        recons = out["reconstructions"].detach()
        assert 0.0 <= float(recons.min()) and float(recons.max()) <= 1.0
    model.eval()
    generated, p = model.generate(3, torch.Generator().manual_seed(0))
    assert generated.shape == (3, 2, channels, size, size) and p.shape == (3, 2)


def test_default_settings_are_the_reference_mnist_shapes():
    settings = TreeVAESettings()
    assert settings.feature_dims == [128, 128, 128, 128, 128, 128]       # d_0 = 32 x 2 x 2
    model = TreeVAE(settings).eval()
    out = model(torch.rand(1, 1, 28, 28))                                 # batch size 1 works (bug 4)
    assert out["leaf_probabilities"].shape == (1, 2)


def test_settings_validation():
    with pytest.raises(ConfigError):
        TreeVAESettings(recon="l1")
    with pytest.raises(ConfigError):
        TreeVAESettings(image_size=12)
    with pytest.raises(ConfigError):
        TreeVAESettings(encoder_channels=(8, 16))
    assert TreeVAESettings(**json.loads(json.dumps(TINY.to_dict()))) == TINY


# ------------------------------------------------------------------------------------------------ 1. sums to one


def test_leaf_probabilities_sum_to_one_through_grow_and_prune():
    model = tiny_model()
    x = images(6)
    expected_leaves = [["0", "1"], ["0", "10", "11"], ["0", "11", "100", "101"], ["0", "11", "101"]]
    steps = [lambda: None, lambda: model.grow("1"), lambda: model.grow("10"), lambda: model.prune("100")]
    for step, leaves in zip(steps, expected_leaves):
        step()
        assert model.leaf_paths == leaves
        for train in (True, False):
            model.train(train)
            out = run(model, x)
            assert out["leaf_paths"] == leaves
            assert torch.allclose(out["leaf_probabilities"].sum(1), torch.ones(6), atol=1e-6)
        _, p = model.generate(7, torch.Generator().manual_seed(0))
        assert p.shape == (7, len(leaves))
        assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-6)
    assert model.structure()["pass_through"] == ["10"]


def test_node_probability_is_the_leaf_mass_under_the_node():
    """P(node | x) from the routers alone equals the sum of the forward pass's leaf probabilities under it,
    through a pass-through node too."""
    model = tiny_model()
    model.grow("1")
    model.grow("10")
    model.prune("100")                                                    # "10" becomes pass-through
    model.eval()
    x = images(6)
    out = run(model, x, seed=None)
    columns = {path: out["leaf_probabilities"][:, i] for i, path in enumerate(out["leaf_paths"])}
    for node in model.node_paths():
        below = sum(p for path, p in columns.items() if path.startswith(node))
        assert torch.allclose(model.node_probability(x, node), below, atol=1e-6), node
    with pytest.raises(InputError):
        model.node_probability(x, "01")


# ------------------------------------------------------------------------------------------------ 2. KL identities


def test_gaussian_kl_matches_closed_form_and_torch():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    var_q, var_p = torch.rand(5, 7, generator=g) + 0.1, torch.rand(5, 7, generator=g) + 0.1
    ours = gaussian_kl(mu_q, var_q, mu_p, var_p)
    assert torch.allclose(ours, hand_kl(mu_q, var_q, mu_p, var_p), atol=1e-5)
    reference = torch_kl(Normal(mu_q, var_q.sqrt()), Normal(mu_p, var_p.sqrt())).sum(-1)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_model_node_kls_are_the_closed_form_with_eps():
    model = tiny_model().eval()
    out = run(model, images(6), return_nodes=True)
    nodes = out["nodes"]
    root = nodes[""]
    kl_root = hand_kl(root["mu_q"], root["var_q"] + EPS, torch.zeros_like(root["mu_q"]), torch.ones_like(root["var_q"]) + EPS)
    assert torch.allclose(out["kl_root"], kl_root.clamp(-1, 1000), atol=1e-5)
    kl_nodes = sum((nodes[c]["prob"] * hand_kl(nodes[c]["mu_q"], nodes[c]["var_q"] + EPS, nodes[c]["mu_p"],
                                               nodes[c]["var_p"] + EPS)).clamp(-1, 1000) for c in ("0", "1"))
    assert torch.allclose(out["kl_nodes"], kl_nodes, atol=1e-5)
    assert torch.allclose(nodes["0"]["prob"] + nodes["1"]["prob"], torch.ones(6), atol=1e-6)


def test_posterior_is_the_product_of_gaussians():
    g = torch.Generator().manual_seed(0)
    mu_hat, mu_p = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    var_hat, var_p = torch.rand(4, 3, generator=g) + 0.2, torch.rand(4, 3, generator=g) + 0.2
    mu_q, var_q = precision_weighted_posterior(mu_hat, var_hat, mu_p, var_p)

    def log_ratio(z):   # log N(z; mu_hat, var_hat) + log N(z; mu_p, var_p) - log N(z; mu_q, var_q), constant in z
        return (Normal(mu_hat, var_hat.sqrt()).log_prob(z) + Normal(mu_p, var_p.sqrt()).log_prob(z)
                - Normal(mu_q, var_q.sqrt()).log_prob(z))

    assert torch.allclose(log_ratio(torch.zeros(4, 3)), log_ratio(torch.randn(4, 3, generator=g) * 3), atol=1e-4)
    prior_mu, prior_var = precision_weighted_posterior(mu_hat, torch.full_like(var_hat, 1e12), mu_p, var_p)
    assert torch.allclose(prior_mu, mu_p, atol=1e-5) and torch.allclose(prior_var, var_p, rtol=1e-5)


def test_huge_var_hat_gives_posterior_equal_to_prior_in_the_model():
    model = tiny_model().eval()
    dense = model.denses["r0"]
    original = dense.forward
    dense.forward = lambda d: (original(d)[0], torch.full((d.shape[0], 4), 1e12))
    nodes = run(model, images(5), return_nodes=True)["nodes"]
    assert torch.allclose(nodes["0"]["mu_q"], nodes["0"]["mu_p"], atol=1e-5)
    assert torch.allclose(nodes["0"]["var_q"], nodes["0"]["var_p"], rtol=1e-5)
    assert not torch.allclose(nodes["1"]["mu_q"], nodes["1"]["mu_p"], atol=1e-3)


def test_decision_kl_is_bernoulli_kl_and_zero_when_q_equals_p():
    g = torch.Generator().manual_seed(0)
    q, p = torch.rand(50, generator=g) * 0.9 + 0.05, torch.rand(50, generator=g) * 0.9 + 0.05
    assert torch.allclose(decision_kl(q, p), torch_kl(Bernoulli(q), Bernoulli(p)), atol=1e-5)
    assert decision_kl(q, q).abs().max() < 1e-6

    model = tiny_model().eval()
    shared = torch.sigmoid(torch.randn(6, generator=g))
    model.routers["r"].forward = lambda z: shared
    model.routers_q["r"].forward = lambda d: shared
    out = run(model, images(6))
    assert out["kl_decisions"].abs().max() < 1e-6
    assert torch.allclose(out["leaf_probabilities"][:, 0], shared)
    model.routers["r"].forward = lambda z: 1.0 - shared                    # p != q: a positive decision KL
    assert float(run(model, images(6))["kl_decisions"].min()) > 1e-3


def test_reference_loss_applies_the_batch_clamp_of_kl_nodes():
    terms = {"rec": torch.tensor([2.0, 4.0]), "kl_root": torch.tensor([1.0, 1.0]),
             "kl_nodes": torch.tensor([-30.0, -20.0]), "kl_decisions": torch.tensor([0.5, 1.5])}
    assert float(reference_loss(terms)) == pytest.approx(3.0 + 1.0 - 10.0 + 1.0)
    assert float(reference_loss(terms, alpha=0.5)) == pytest.approx(3.0 + 0.5 * (1.0 - 10.0 + 1.0))


# ------------------------------------------------------------------------------------------------ 3. grow


@pytest.mark.parametrize("seed", [None, 3])
def test_grow_leaves_the_rest_of_the_tree_unchanged(seed):
    model = tiny_model().eval()
    x = images(8)
    before = run(model, x, seed)
    assert model.grow("1") == ["10", "11"]
    assert model.decoders["r10"].training is False                        # new modules follow eval mode
    after = run(model, x, seed)
    assert after["leaf_paths"] == ["0", "10", "11"]
    assert torch.equal(after["leaf_probabilities"][:, 0], before["leaf_probabilities"][:, 0])
    assert torch.equal(after["reconstructions"][:, 0], before["reconstructions"][:, 0])
    assert torch.equal(after["kl_root"], before["kl_root"])
    new_sum = after["leaf_probabilities"][:, 1] + after["leaf_probabilities"][:, 2]
    assert torch.allclose(new_sum, before["leaf_probabilities"][:, 1], atol=1e-6)
    assert "r1" not in model.decoders and "r1" in model.routers and "r1" in model.routers_q


def test_grow_inherit_decoder_and_graft():
    donor = tiny_model(seed=5).eval()
    donor.grow("0")
    state = donor.subtree_state("0")
    model = tiny_model().eval()
    model.grow("0", inherit_decoder=True)
    assert torch.equal(model.decoders["r00"].deconv[0].weight, model.decoders["r01"].deconv[0].weight)
    assert model.graft("1", state) == ["10", "11"]
    for ours, theirs in ((model.routers["r1"], donor.routers["r0"]), (model.routers_q["r1"], donor.routers_q["r0"])):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert torch.equal(model.decoders["r11"].dense[0].weight, donor.decoders["r01"].dense[0].weight)
    bad = dict(state, router={})
    with pytest.raises(InputError):
        model.graft("00", bad)
    assert model.structure()["leaves"] == ["00", "01", "10", "11"]       # a failed graft leaves the tree as it was


def test_grow_errors():
    model = tiny_model()
    with pytest.raises(InputError):
        model.grow("")                                                    # internal node
    with pytest.raises(InputError):
        model.grow("01")                                                  # not in the tree
    model.grow("0")
    model.grow("00")
    with pytest.raises(InputError):
        model.grow("000")                                                 # at max_depth 3


# ------------------------------------------------------------------------------------------------ 4. prune


def test_prune_makes_a_pass_through_node_without_routers():
    model = tiny_model().eval()
    x = images(8)
    original = run(model, x, seed=None)
    model.grow("1")
    assert model.prune("10") == "1"
    assert model.structure() == {"leaves": ["0", "11"], "internal": [""], "pass_through": ["1"]}
    out = run(model, x, seed=None)
    assert out["leaf_probabilities"].shape == (8, 2)
    assert torch.allclose(out["leaf_probabilities"].sum(1), torch.ones(8), atol=1e-6)
    # the pass-through node forwards its whole probability: P(11) is the old P(1)
    assert torch.allclose(out["leaf_probabilities"][:, 1], original["leaf_probabilities"][:, 1], atol=1e-6)
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.startswith(("routers.r1.", "routers_q.r1.", "decoders.r1.", "denses.r10."))]
    assert any(k.startswith("routers_q.r.") for k in keys) and any(k.startswith("denses.r1.") for k in keys)
    with pytest.raises(InputError):
        model.prune("11")                                                 # only child of a pass-through node
    with pytest.raises(InputError):
        model.prune("1")                                                  # not a leaf
    root_pruned = tiny_model()
    root_pruned.prune("1")
    assert root_pruned.structure() == {"leaves": ["0"], "internal": [], "pass_through": [""]}
    assert torch.allclose(run(root_pruned, x)["leaf_probabilities"], torch.ones(8, 1))
    with pytest.raises(InputError):
        root_pruned.prune("0")


# ------------------------------------------------------------------------------------------------ 5. round trip


def test_structure_round_trip_with_strict_load():
    model = tiny_model()
    model.grow("0")
    model.grow("01")
    model.prune("00")
    x = images(8)
    for _ in range(2):                                                    # move the BatchNorm running statistics
        run(model, x)
    model.eval()
    structure = json.loads(json.dumps(model.structure()))
    assert structure == {"leaves": ["1", "010", "011"], "internal": ["", "01"], "pass_through": ["0"]}
    torch.manual_seed(123)
    rebuilt = TreeVAE.from_structure(TINY, structure)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    for seed in (None, 7):
        a, b = run(model, x, seed), run(rebuilt, x, seed)
        for name in ("rec", "kl_root", "kl_nodes", "kl_decisions", "leaf_probabilities", "reconstructions"):
            assert torch.equal(a[name], b[name]), name
    with pytest.raises(RuntimeError):
        TreeVAE(TINY).load_state_dict(model.state_dict(), strict=True)     # the default tree does not fit


@pytest.mark.parametrize("structure", [
    {"leaves": ["0"], "internal": [""], "pass_through": []},               # internal node with one child
    {"leaves": ["0", "1", "00"], "internal": [""], "pass_through": []},    # leaf under a leaf
    {"leaves": ["0", "1"], "internal": [], "pass_through": []},            # no root
    {"leaves": ["0", "1", "2"], "internal": [""], "pass_through": []},     # bad path
    {"leaves": ["0000", "0001", "1"], "internal": ["", "0", "00", "000"], "pass_through": []},  # too deep
])
def test_bad_structures_are_rejected(structure):
    with pytest.raises(InputError):
        validate_structure(structure, max_depth=3)


# ------------------------------------------------------------------------------------------------ 6. growth rule


def confident(n: int, leaf: int, n_leaves: int, p: float = 0.9) -> np.ndarray:
    rows = np.full((n, n_leaves), (1 - p) / (n_leaves - 1))
    rows[:, leaf] = p
    return rows


def test_choose_leaf_to_grow_picks_the_leaf_with_most_confident_samples():
    paths = ["0", "10", "11"]
    probabilities = np.vstack([confident(30, 0, 3), confident(50, 1, 3), confident(20, 2, 3)])
    assert effective_leaves(probabilities, paths) == 3
    assert choose_leaf_to_grow(probabilities, paths, batch_size=10, max_depth=5) == "10"
    assert choose_leaf_to_grow(torch.as_tensor(probabilities), paths, batch_size=10, max_depth=5) == "10"
    # the confidence threshold is min(1/n_eff, 0.5) = 1/3: 40 rows with P("11") = 0.4 count for "11" (60 > 50)
    unsure = np.tile([0.3, 0.3, 0.4], (40, 1))
    assert choose_leaf_to_grow(np.vstack([probabilities, unsure]), paths, batch_size=10, max_depth=5) == "11"
    # with two effective leaves the threshold is 0.5: the same 0.4 rows do not count
    two = np.vstack([confident(50, 0, 2), confident(30, 1, 2), np.tile([0.6, 0.4], (40, 1))])
    assert choose_leaf_to_grow(two, ["0", "1"], batch_size=10, max_depth=5) == "0"
    assert choose_leaf_to_grow(np.vstack([confident(50, 0, 2), confident(30, 1, 2), np.tile([0.4, 0.6], (40, 1))]),
                               ["0", "1"], batch_size=10, max_depth=5) == "1"


def test_choose_leaf_to_grow_skips_leaves_below_batch_size():
    paths = ["0", "10", "11"]
    probabilities = np.vstack([confident(30, 0, 3), confident(50, 1, 3), confident(20, 2, 3)])
    assert choose_leaf_to_grow(probabilities, paths, batch_size=40, max_depth=5) == "10"
    assert choose_leaf_to_grow(probabilities, paths, batch_size=60, max_depth=5) is None
    # the ranking is by the same count, so a skipped leaf is never followed by a large enough one
    assert choose_leaf_to_grow(probabilities, paths, batch_size=50, max_depth=5) == "10"


def test_choose_leaf_to_grow_stops_at_max_leaves_and_max_depth():
    paths = ["0", "10", "11"]
    probabilities = np.vstack([confident(30, 0, 3), confident(50, 1, 3), confident(20, 2, 3)])
    assert choose_leaf_to_grow(probabilities, paths, batch_size=10, max_depth=5, max_leaves=3) is None
    assert choose_leaf_to_grow(probabilities, paths, batch_size=10, max_depth=5, max_leaves=4) == "10"
    # a leaf with < 1% of the mass is not effective: n_eff = 2 < max_leaves = 3
    tiny_mass = np.vstack([confident(60, 0, 3, 0.996), confident(40, 1, 3, 0.996)])
    assert effective_leaves(tiny_mass, paths) == 2
    assert choose_leaf_to_grow(tiny_mass, paths, batch_size=10, max_depth=5, max_leaves=3) == "0"
    # the top leaf is at max_depth: all growth stops, although "0" is shallower and large enough
    assert choose_leaf_to_grow(probabilities, paths, batch_size=10, max_depth=2) is None
    with pytest.raises(InputError):
        choose_leaf_to_grow(probabilities, ["0", "1"], batch_size=10, max_depth=5)


def test_leaves_to_prune():
    paths = ["0", "10", "11"]
    probabilities = np.vstack([confident(600, 0, 3), confident(395, 1, 3), confident(5, 2, 3)])
    assert leaves_to_prune(probabilities, paths) == ["11"]
    assert leaves_to_prune(probabilities, paths, threshold=0.004) == []
    balanced = np.vstack([confident(50, 0, 3), confident(40, 1, 3), confident(10, 2, 3)])
    assert leaves_to_prune(balanced, paths) == []
    empty = np.vstack([confident(50, 0, 3), confident(50, 1, 3)])         # leaf "11" never wins the argmax
    assert leaves_to_prune(empty, paths) == ["11"]


# ------------------------------------------------------------------------------------------------ 7. training


def test_a_few_adam_steps_lower_the_loss():
    model = tiny_model()
    model.grow("1")
    x = images(32)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)

    def loss_value() -> torch.Tensor:
        with torch.no_grad():
            return reference_loss(run(model, x, seed=11))

    first = float(loss_value())
    for step in range(25):
        optimiser.zero_grad()
        loss = reference_loss(run(model, x, seed=100 + step))
        assert torch.isfinite(loss)
        loss.backward()
        optimiser.step()
    assert float(loss_value()) < first - 1.0
