"""Topo-GEN regularisers: each value against its reference formula re-derived here, gradients against
finite differences, and a small optimisation that must merge 5 clusters into the 3 of the target."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.spatial.distance import cdist

from raytopo.errors import ConfigError, InputError
from raytopo.topology.diagrams import Diagram
from raytopo.topology.regularisers import (
    LOSS_NAMES,
    TopologicalRegulariser,
    TopoRegulariserConfig,
    edge_lengths,
    live_diagram,
    loss_bottleneck0,
    loss_bottleneck1,
    loss_density,
    loss_dsigma0,
    loss_dsigma1,
    loss_persentropy0,
    loss_persentropy1,
    loss_push0,
)
from raytopo.topology.rips import rips_persistence

# ------------------------------------------------------------------------------------------------ clouds


def clusters(centres: list[tuple[float, float]], per: int, std: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(np.concatenate([np.asarray(c) + std * rng.normal(size=(per, 2)) for c in centres]))


def noisy_circle(n: int, radius: float, seed: int, centre: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * (np.arange(n) + 0.3 * rng.random(n)) / n
    radii = radius * (1 + 0.05 * rng.normal(size=n))
    return torch.tensor(np.asarray(centre) + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1))


def two_circles(seed: int, radius: float = 1.0) -> torch.Tensor:
    return torch.cat([noisy_circle(8, radius, seed), noisy_circle(9, radius * 1.2, seed + 1, (5.0, 0.0))])


def mst_deaths(points: torch.Tensor) -> list[float]:
    """Finite H0 deaths of a Rips filtration, independently: the minimum spanning tree's edge lengths."""
    cloud = points.detach().numpy().reshape(len(points), -1)
    return sorted(minimum_spanning_tree(cdist(cloud, cloud)).data.tolist())


def h1_points(points: torch.Tensor) -> list[tuple[float, float]]:
    return [tuple(p) for p in rips_persistence(points.detach().numpy(), maxdim=1)[1].points.tolist()]


# ------------------------------------------------------------------------ the reference formulas, by hand


def hand_signed_entropy(persistences: list[float], delta: float) -> float | None:
    kept = [p for p in persistences if p > delta]
    if not kept:
        return None
    total = sum(kept)
    return sum((p / total) * math.log(p / total) for p in kept)


def hand_kernel(first: list[tuple[float, float]], second: list[tuple[float, float]], sigma: float) -> float:
    """Reininghaus et al. 2015: 1/(8 pi sigma) sum_{p, q} exp(-|p-q|^2/(8 sigma)) - exp(-|p-qbar|^2/(8 sigma))."""
    total = 0.0
    for b1, d1 in first:
        for b2, d2 in second:
            total += math.exp(-((b1 - b2) ** 2 + (d1 - d2) ** 2) / (8 * sigma))
            total -= math.exp(-((b1 - d2) ** 2 + (d1 - b2) ** 2) / (8 * sigma))
    return total / (8 * math.pi * sigma)


def hand_density(deaths: list[float], x: float, sigma: float, scale: float) -> float:
    return scale * sum(d**4 * math.exp(-(((d - x) / sigma) ** 2)) for d in deaths)


def assert_gradient_matches_finite_differences(function, points: torch.Tensor) -> None:  # noqa: ANN001
    """gradcheck in float64, and the gradient is not trivially zero."""
    x = points.clone().double().requires_grad_(True)
    assert torch.autograd.gradcheck(function, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    (gradient,) = torch.autograd.grad(function(x), x)
    assert gradient.abs().sum() > 0


# --------------------------------------------------------------------------------------------- live diagram


def test_live_diagram_rebuilds_every_point_from_its_edges() -> None:
    points = two_circles(0)
    for diagram in rips_persistence(points.numpy(), maxdim=1):
        live = live_diagram(points, diagram).numpy()
        np.testing.assert_allclose(live, diagram.points, rtol=1e-12)


def test_live_diagram_of_a_batch_of_images_flattens_samples() -> None:
    images = torch.rand(10, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h0 = rips_persistence(images.numpy(), maxdim=0)[0]
    assert sorted(live_diagram(images, h0.finite())[:, 1].tolist()) == pytest.approx(mst_deaths(images))


def test_edge_lengths_of_coincident_points_have_zero_gradient() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    lengths = edge_lengths(points, np.array([[0, 1], [0, 2], [2, 2]]))
    assert lengths.tolist() == [0.0, 5.0, 0.0]
    lengths.sum().backward()
    assert torch.isfinite(points.grad).all()
    np.testing.assert_allclose(points.grad[2].numpy(), [0.6, 0.8])


def test_live_diagram_rejects_foreign_cells() -> None:
    cubical = Diagram(0, np.zeros(1), np.ones(1), np.array([3]), np.array([5]))
    with pytest.raises(InputError, match="edge cells"):
        live_diagram(torch.zeros(6, 2), cubical)
    too_far = Diagram(0, np.zeros(1), np.ones(1), np.array([[0, 0]]), np.array([[0, 9]]))
    with pytest.raises(InputError, match="beyond"):
        live_diagram(torch.zeros(6, 2), too_far)


# ----------------------------------------------------------------------------------------------- bottleneck

FIVE = [(0.0, 0.0), (3.0, 0.0), (6.0, 1.0), (1.0, 4.0), (5.0, 5.0)]
THREE = [(0.0, 0.0), (2.5, 0.0), (1.0, 2.2)]


def test_bottleneck0_value_is_the_bottleneck_distance_and_acts_on_one_edge() -> None:
    points = clusters(FIVE, 6, 0.05, seed=1).requires_grad_(True)
    truth = clusters(THREE, 6, 0.05, seed=2)
    value, gotloss = loss_bottleneck0(points, truth)
    ours = rips_persistence(points.detach().numpy(), 0)[0].finite().points
    target = rips_persistence(truth.numpy(), 0)[0].finite().points
    assert gotloss
    assert value.item() == pytest.approx(gudhi.bottleneck_distance(ours, target), rel=1e-9)
    value.backward()
    assert int((points.grad.abs().sum(dim=1) > 0).sum()) == 2  # only the two ends of one edge move


def test_bottleneck0_without_gradient_when_a_target_point_is_unmatched() -> None:
    """D has 2 clusters, G has 4 far apart: the worst pair is a G point on the diagonal -> 0, False."""
    points = clusters([(0.0, 0.0), (1.0, 0.0)], 5, 0.02, seed=3)
    truth = clusters([(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)], 5, 0.02, seed=4)
    value, gotloss = loss_bottleneck0(points, truth)
    assert (value.item(), gotloss) == (0.0, False)


def test_bottleneck_losses_without_learnable_points() -> None:
    only_essential = [Diagram(0, [0.0], [np.inf], [[0, 0]], [[-1, -1]]), Diagram.empty(1, (2,))]
    points, truth = torch.zeros(2, 2), clusters(THREE, 3, 0.05, seed=5)
    assert loss_bottleneck0(points, truth, only_essential)[1] is False
    assert loss_bottleneck1(points, truth, only_essential)[1] is False


def test_bottleneck1_value_is_the_h1_bottleneck_distance() -> None:
    points, truth = noisy_circle(12, 1.0, seed=6), noisy_circle(12, 1.3, seed=7)
    value, gotloss = loss_bottleneck1(points, truth)
    assert gotloss
    assert value.item() == pytest.approx(gudhi.bottleneck_distance(h1_points(points), h1_points(truth)), rel=1e-9)
    # a much larger target cycle is cheaper on the diagonal than matched: the worst pair is then a
    # ground-truth point on the diagonal, which the learnable points cannot change
    assert loss_bottleneck1(points, noisy_circle(12, 1.6, seed=7)) == (0.0, False)


def test_bottleneck1_against_a_target_without_cycles_is_half_the_largest_persistence() -> None:
    points, truth = noisy_circle(12, 1.0, seed=8), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert h1_points(truth) == []
    value, gotloss = loss_bottleneck1(points, truth)
    assert gotloss
    assert value.item() == pytest.approx(max(d - b for b, d in h1_points(points)) / 2)
    assert loss_bottleneck1(truth, points)[1] is False  # no cycle to move


# ----------------------------------------------------------------------------------------- persistent entropy


def test_persentropy0_is_the_squared_entropy_difference() -> None:
    points, truth = clusters(FIVE, 4, 0.1, seed=9), clusters(THREE, 5, 0.2, seed=10)
    value, gotloss = loss_persentropy0(points, truth, delta=0.001)
    expected = (hand_signed_entropy(mst_deaths(points), 0.001) - hand_signed_entropy(mst_deaths(truth), 0.001)) ** 2
    assert gotloss and expected > 0
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_persentropy0_delta_and_trivial_diagrams() -> None:
    points = clusters(FIVE, 4, 0.1, seed=11)
    tiny = torch.tensor([[0.0, 0.0], [0.0005, 0.0]], dtype=torch.float64)  # persistence below delta
    value, gotloss = loss_persentropy0(points, tiny, delta=0.001)
    assert gotloss and value.item() == pytest.approx(hand_signed_entropy(mst_deaths(points), 0.001) ** 2)
    # a larger delta drops the short intra-cluster edges, and changes the value accordingly
    delta = 0.5
    kept = hand_signed_entropy(mst_deaths(points), delta) ** 2
    assert loss_persentropy0(points, tiny, delta=delta)[0].item() == pytest.approx(kept)
    assert loss_persentropy0(tiny, points, delta=0.001) == (0.0, False)


def test_persentropy1_is_the_squared_entropy_difference() -> None:
    points, truth = two_circles(12), noisy_circle(10, 1.0, seed=13)
    value, gotloss = loss_persentropy1(points, truth, delta=0.001)
    own = hand_signed_entropy([d - b for b, d in h1_points(points)], 0.001)
    target = hand_signed_entropy([d - b for b, d in h1_points(truth)], 0.001)
    assert gotloss
    assert value.item() == pytest.approx((own - target) ** 2, rel=1e-9)
    no_cycles = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert loss_persentropy1(points, no_cycles)[0].item() == pytest.approx(own**2, rel=1e-9)
    assert loss_persentropy1(no_cycles, points)[1] is False


# ----------------------------------------------------------------------------------------------------- dsigma


def test_dsigma0_is_the_kernel_pseudo_distance_without_the_constant() -> None:
    points, truth = clusters(FIVE, 3, 0.2, seed=14), clusters(THREE, 4, 0.2, seed=15)
    sigma = 0.05
    ours = [(0.0, d) for d in mst_deaths(points)]
    target = [(0.0, d) for d in mst_deaths(truth)]
    value, gotloss = loss_dsigma0(points, truth, sigma=sigma)
    assert gotloss
    expected = hand_kernel(ours, ours, sigma) - 2 * hand_kernel(ours, target, sigma)
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_dsigma0_can_be_negative() -> None:
    """With D == G the value is k(D,D) - 2 k(D,D) = -k(D,D) < 0 (the constant k(G,G) is dropped)."""
    points = clusters(FIVE, 3, 0.2, seed=16)
    ours = [(0.0, d) for d in mst_deaths(points)]
    value, _ = loss_dsigma0(points, points.clone(), sigma=0.5)
    assert value.item() < 0
    assert value.item() == pytest.approx(-hand_kernel(ours, ours, 0.5), rel=1e-9)


def test_dsigma1_sums_over_all_pairs_of_cycles() -> None:
    points, truth = two_circles(17), two_circles(18, radius=1.3)
    ours, target = h1_points(points), h1_points(truth)
    assert len(ours) >= 2 and len(target) >= 2, "needs several cycles to tell all pairs from the first one"
    sigma = 0.05
    value, gotloss = loss_dsigma1(points, truth, sigma=sigma)
    assert gotloss
    expected = hand_kernel(ours, ours, sigma) - 2 * hand_kernel(ours, target, sigma)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    no_cycles = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert loss_dsigma1(points, no_cycles, sigma=sigma)[0].item() == pytest.approx(hand_kernel(ours, ours, sigma))
    assert loss_dsigma1(no_cycles, points)[1] is False


def test_dsigma_ground_truth_comes_from_true_points_and_generators() -> None:
    """The GT values are recomputed from the true cloud through the GT generator edges."""
    points, truth = clusters(FIVE, 3, 0.2, seed=19), clusters(THREE, 4, 0.2, seed=20)
    true_diagrams = rips_persistence(truth.numpy(), 0)
    moved = truth * 2.0  # same generators (scaling keeps the combinatorics), distances doubled
    value = loss_dsigma0(points, moved, None, true_diagrams, sigma=0.05)[0]
    ours, target = [(0.0, d) for d in mst_deaths(points)], [(0.0, 2 * d) for d in mst_deaths(truth)]
    assert value.item() == pytest.approx(hand_kernel(ours, ours, 0.05) - 2 * hand_kernel(ours, target, 0.05))


# ---------------------------------------------------------------------------------------------------- density


@pytest.mark.parametrize(
    ("sigma", "scale", "maxrange", "npoints"), [(0.2, 0.002, 35.0, 30), (0.5, 0.1, 3.0, 13)]
)
def test_density_is_the_mean_squared_difference_on_a_linspace(
    sigma: float, scale: float, maxrange: float, npoints: int
) -> None:
    points, truth = clusters(FIVE, 3, 0.3, seed=21), clusters(THREE, 4, 0.3, seed=22)
    ours, target = mst_deaths(points), mst_deaths(truth)
    grid = np.linspace(0.0, maxrange, npoints)
    expected = sum(
        (hand_density(ours, x, sigma, scale) - hand_density(target, x, sigma, scale)) ** 2 for x in grid
    ) / npoints
    value, gotloss = loss_density(points, truth, sigma=sigma, scale=scale, maxrange=maxrange, npoints=npoints)
    assert gotloss and expected > 0
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_push0_is_minus_half_the_total_h0_persistence() -> None:
    points = clusters(FIVE, 3, 0.2, seed=23)
    assert loss_push0(points).item() == pytest.approx(-sum(mst_deaths(points)) / 2)


# ------------------------------------------------------------------------------------------------- gradients

H0_LOSSES = {
    "bottleneck0": lambda x, t: loss_bottleneck0(x, t),
    "persentropy0": lambda x, t: loss_persentropy0(x, t),
    "dsigma0": lambda x, t: loss_dsigma0(x, t, sigma=0.5),
    "density": lambda x, t: loss_density(x, t, sigma=0.5, scale=0.1, maxrange=3.0, npoints=13),
    "push0": lambda x, t: (loss_push0(x), True),
}
H1_LOSSES = {
    "bottleneck1": lambda x, t: loss_bottleneck1(x, t),
    "persentropy1": lambda x, t: loss_persentropy1(x, t),
    "dsigma1": lambda x, t: loss_dsigma1(x, t, sigma=0.5),
}


@pytest.mark.parametrize("name", sorted(H0_LOSSES))
def test_h0_loss_gradients_match_finite_differences(name: str) -> None:
    points, truth = clusters(FIVE, 2, 0.3, seed=24), clusters(THREE, 3, 0.3, seed=25)
    loss = H0_LOSSES[name]
    assert loss(points, truth)[1]

    assert_gradient_matches_finite_differences(lambda x: loss(x, truth)[0], points)


@pytest.mark.parametrize("name", sorted(H1_LOSSES))
def test_h1_loss_gradients_match_finite_differences(name: str) -> None:
    points, truth = two_circles(26), noisy_circle(9, 1.5, seed=27)
    loss = H1_LOSSES[name]
    assert loss(points, truth)[1]
    assert_gradient_matches_finite_differences(lambda x: loss(x, truth)[0], points)


# ---------------------------------------------------------------------------------------------- combination


def test_regulariser_is_the_weighted_sum_of_active_losses() -> None:
    points, truth = two_circles(28), noisy_circle(11, 1.4, seed=29)
    config = TopoRegulariserConfig(weights=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0), density_maxrange=5.0)
    regulariser = TopologicalRegulariser(config)
    value, gotloss = regulariser(points, truth)
    individual = [
        loss_bottleneck0(points, truth), loss_bottleneck1(points, truth),
        loss_persentropy0(points, truth), loss_persentropy1(points, truth),
        loss_dsigma0(points, truth), loss_dsigma1(points, truth),
        loss_density(points, truth, maxrange=5.0),
    ]
    expected = sum(w * v.item() for w, (v, got) in zip(config.weights, individual) if got)
    assert gotloss and value.item() == pytest.approx(expected, rel=1e-9)
    precomputed = regulariser(points, truth, regulariser.diagrams(points), rips_persistence(truth.numpy(), 1))
    assert precomputed[0].item() == pytest.approx(value.item(), rel=1e-12)
    assert set(regulariser.terms(points, truth)) == set(LOSS_NAMES)


def test_regulariser_default_weights_and_no_loss_case() -> None:
    points, truth = two_circles(30), noisy_circle(10, 1.2, seed=31)
    value, gotloss = TopologicalRegulariser(TopoRegulariserConfig())(points, truth)
    expected = 15 * loss_bottleneck0(points, truth)[0].item() + 15 * loss_bottleneck1(points, truth)[0].item()
    assert gotloss and value.item() == pytest.approx(expected, rel=1e-9)
    few = clusters([(0.0, 0.0), (1.0, 0.0)], 4, 0.02, seed=32)
    many = clusters([(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)], 4, 0.02, seed=33)
    only_b0 = TopologicalRegulariser(TopoRegulariserConfig(weights=(1, 0, 0, 0, 0, 0, 0), maxdim=0))
    assert only_b0(few, many) == (0.0, False)


def test_regulariser_needs_ground_truth() -> None:
    with pytest.raises(InputError, match="true_points"):
        loss_bottleneck0(torch.zeros(3, 2), None)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("weights", {"weights": (1, 1, 1)}),
        ("weights", {"weights": (1, -1, 0, 0, 0, 0, 0)}),
        ("dsigma0_sigma", {"dsigma0_sigma": 0.0}),
        ("dsigma1_sigma", {"dsigma1_sigma": -1.0}),
        ("density_sigma", {"density_sigma": 0}),
        ("density_npoints", {"density_npoints": 0}),
        ("pers0_delta", {"pers0_delta": -0.1}),
        ("maxdim", {"maxdim": 0}),  # default weights use bottleneck1, which needs H1
        ("backend", {"backend": "ripser"}),
    ],
)
def test_bad_config_names_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=field):
        TopoRegulariserConfig(**kwargs)


# ------------------------------------------------------------------------------------- the loss goes down


def components(points: torch.Tensor, scale: float) -> int:
    cloud = points.detach().numpy()
    return int(connected_components(cdist(cloud, cloud) <= scale)[0])


def test_bottleneck0_merges_five_clusters_into_the_three_of_the_target() -> None:
    """Topo-GEN's synthetic demo, shortened: learnable 2-D points in 5 clusters, target 3 clusters,
    Adam on bottleneck0 with loss_push0 whenever gotloss is False. At scale 0.3 (between the cluster
    spread, 0.03, and the target gaps, about 1.3) the cloud must end with exactly 3 components."""
    angles5, angles3 = np.linspace(0, 2 * np.pi, 6)[:-1], np.linspace(0, 2 * np.pi, 4)[:-1]
    start = clusters([(np.cos(a), np.sin(a)) for a in angles5], 6, 0.03, seed=34)
    truth = clusters([(0.8 * np.cos(a), 0.8 * np.sin(a)) for a in angles3], 6, 0.03, seed=35)
    true_diagrams = rips_persistence(truth.numpy(), maxdim=0)
    points = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([points], lr=0.01)
    initial = loss_bottleneck0(points, truth, None, true_diagrams)[0].item()
    assert components(points, 0.3) == 5
    for _ in range(400):
        optimiser.zero_grad()
        loss, gotloss = loss_bottleneck0(points, truth, None, true_diagrams)
        if not gotloss:
            loss = loss_push0(points)
        loss.backward()
        optimiser.step()
    final = loss_bottleneck0(points, truth, None, true_diagrams)[0].item()
    assert final < initial / 4
    assert components(points, 0.3) == 3
