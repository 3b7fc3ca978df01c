"""The TDN topology loss: hand-computed values, gradients, selection modes, and descent to the target topology."""

import numpy as np
import pytest
import torch

from raytopo.errors import ConfigError, InputError
from raytopo.topology.betti import betti_numbers
from raytopo.topology.cubical import cubical_persistence
from raytopo.topology.distances import wasserstein_matching
from raytopo.topology.losses import (
    TDNLossConfig,
    _match_to_binary_mask,
    _normalised_points,
    critical_targets,
    tdn_loss,
)


def blobs(size: int, centres, heights, radius: float = 3.0, background: float = -1.0) -> np.ndarray:
    """Gaussian-ish plateaus: background everywhere, a bump of the given height around each centre."""
    rows, cols = np.mgrid[:size, :size]
    image = np.full((size, size), background)
    for (r, c), h in zip(centres, heights):
        bump = background + (h - background) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2))
        image = np.maximum(image, bump)
    return image


def two_plateaus() -> np.ndarray:
    """Background -1 with a 0.9 pixel and a 0.5 pixel far apart: every value is exactly known."""
    image = np.full((9, 9), -1.0)
    image[2, 2] = 0.9
    image[6, 6] = 0.5
    return image


def test_count_mode_matches_hand_computed_value():
    image = torch.tensor(two_plateaus())[None, None]
    # c = 1: keep the 0.9 component (essential; birth pixel -> +1, no death pixel). The 0.5 component is born at
    # 0.5 and dies at -1 (merging at background level): denoise pulls 0.5 -> -1 and the death pixel -1 -> 0.5.
    keep_only = tdn_loss(image, torch.tensor([1.0]), TDNLossConfig(selection="count", noisy=False))
    with_noisy = tdn_loss(image, torch.tensor([1.0]), TDNLossConfig(selection="count", noisy=True))
    assert keep_only.item() == pytest.approx((0.9 - 1.0) ** 2)
    assert with_noisy.item() == pytest.approx((0.9 - 1.0) ** 2 + 2 * (0.5 - (-1.0)) ** 2)
    # c = 2: both preserved; the second one's death pixel (a -1 background pixel) is already at its target.
    both = tdn_loss(image, torch.tensor([2.0]), TDNLossConfig(selection="count", noisy=True))
    assert both.item() == pytest.approx((0.9 - 1.0) ** 2 + (0.5 - 1.0) ** 2)


def test_birth_and_death_switches_select_terms():
    image = torch.tensor(two_plateaus())[None, None]
    births = tdn_loss(image, torch.tensor([1.0]), TDNLossConfig(selection="count", noisy=True, death=False))
    deaths = tdn_loss(image, torch.tensor([1.0]), TDNLossConfig(selection="count", noisy=True, birth=False))
    assert births.item() == pytest.approx((0.9 - 1.0) ** 2 + (0.5 + 1.0) ** 2)
    assert deaths.item() == pytest.approx((-1.0 - 0.5) ** 2)


def test_match_mode_preserves_the_features_matched_to_ground_truth():
    # Four bumps of different heights against a ground truth with two components: the two matched features
    # are the two most persistent ones (reference behaviour, docs/references.md, TDN 2.4), so match == count mode here.
    pred = blobs(32, [(6, 6), (6, 25), (25, 6), (25, 25)], [0.9, 0.7, 0.2, -0.3])
    gt = -np.ones((32, 32))
    gt[3:9, 3:9] = 1.0
    gt[20:28, 20:28] = 1.0
    config = dict(noisy=True)
    matched = critical_targets(pred, gt, config=TDNLossConfig(selection="match", **config))
    counted = critical_targets(pred, np.array([2.0]), config=TDNLossConfig(selection="count", **config))
    assert matched.num_preserved == counted.num_preserved == 2
    order = np.lexsort((matched.targets, matched.indices))
    order_c = np.lexsort((counted.targets, counted.indices))
    np.testing.assert_array_equal(matched.indices[order], counted.indices[order_c])
    np.testing.assert_allclose(matched.targets[order], counted.targets[order_c])


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_binary_matching_equals_optimal_transport(seed):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(16, 16)).cumsum(0).cumsum(1)  # smooth-ish field with many features
    gt = np.zeros((16, 16))
    for r, c in rng.integers(1, 14, size=(rng.integers(1, 5), 2)):
        gt[r, c] = 1.0
    diagram = cubical_persistence(pred, maxdim=0, filtration="superlevel")[0]
    diagram = diagram.select(diagram.persistence > 0)
    points = _normalised_points(diagram, pred)
    gt_diagram = cubical_persistence(gt, maxdim=0, filtration="superlevel")[0]
    gt_points = _normalised_points(gt_diagram, gt)
    keep, _ = _match_to_binary_mask(points, gt, dim=0)
    optimal = wasserstein_matching(points, gt_points, order=1.0, internal_p=np.inf)
    # cost of the closed-form choice, evaluated independently
    corner = np.maximum(1.0 - points[:, 0], points[:, 1])
    diagonal = (points[:, 0] - points[:, 1]) / 2
    unmatched = np.setdiff1d(np.arange(len(points)), keep)
    cost = corner[keep].sum() + diagonal[unmatched].sum() + 0.5 * (len(gt_diagram) - len(keep))
    assert cost == pytest.approx(optimal.cost, abs=1e-9)


def test_gradient_matches_finite_differences():
    # Distinct random values: the diagram's pairing is locally constant, so L_topo is smooth there. With
    # noisy=False every target is a constant (+1/-1) and the analytic gradient is the true gradient.
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(-1, 1, size=(2, 1, 7, 6)), requires_grad=True)
    counts = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    config = TDNLossConfig(dims=(0, 1), selection="count", noisy=False)
    assert torch.autograd.gradcheck(lambda t: tdn_loss(t, counts, config), (x,), eps=1e-7, atol=1e-5)


def test_denoise_gradient_treats_targets_as_constants():
    # With noisy=True the targets are other pixels' *current* values, held constant (stop-gradient, as the
    # reference): d/dx[p] = 2 w (x[p] - r). Check against that formula on the hand-built image.
    x = torch.tensor(two_plateaus())[None, None].requires_grad_(True)
    tdn_loss(x, torch.tensor([1.0]), TDNLossConfig(selection="count", noisy=True)).sum().backward()
    expected = np.zeros((9, 9))
    expected[2, 2] = 2 * (0.9 - 1.0)
    expected[6, 6] = 2 * (0.5 - (-1.0))
    grad = x.grad[0, 0].numpy()
    np.testing.assert_allclose(grad[[2, 6], [2, 6]], expected[[2, 6], [2, 6]])
    death_pixel = np.flatnonzero(np.abs(grad.reshape(-1)) > 0)
    assert len(death_pixel) == 3  # the two birth pixels and the small component's death pixel
    assert grad.reshape(-1)[death_pixel].sum() == pytest.approx(2 * (0.9 - 1.0) + 2 * 1.5 + 2 * (-1.0 - 0.5))


def test_channels_are_averaged_and_samples_kept_apart():
    one = torch.tensor(two_plateaus())[None, None]
    three = one.repeat(1, 3, 1, 1)
    batch = torch.cat([three, -torch.ones_like(three)])
    config = TDNLossConfig(selection="count", noisy=True)
    single = tdn_loss(one, torch.tensor([1.0]), config)
    per_sample = tdn_loss(batch, torch.tensor([1.0, 1.0]), config)
    assert per_sample[0].item() == pytest.approx(single.item())  # mean over 3 identical channels
    assert per_sample[1].item() == pytest.approx(4.0)  # constant -1 image: one essential component, birth -> +1


def test_empty_target_mask_penalises_every_component():
    # The reference returns zero loss for an empty ground truth (docs/references.md, TDN 2.9 item 4); here every
    # predicted feature is denoised and the essential one pushed to background.
    pred = torch.tensor(two_plateaus())[None, None]
    empty = -torch.ones_like(pred)
    loss = tdn_loss(pred, empty, TDNLossConfig(selection="match", noisy=True))
    assert loss.item() == pytest.approx((0.9 + 1.0) ** 2 + 2 * 1.5**2)


@pytest.mark.parametrize("selection", ["count", "match"])
def test_descent_turns_three_blobs_into_two_components(selection):
    start = blobs(24, [(5, 5), (5, 18), (18, 11)], [1.0, 0.8, 0.6])
    gt = np.full((24, 24), -1.0)
    gt[2:8, 2:8] = 1.0
    gt[14:22, 8:14] = 1.0
    target = torch.tensor([2.0]) if selection == "count" else torch.tensor(gt)[None, None]
    assert betti_numbers(start > 0).components == 3
    x = torch.tensor(start)[None, None].requires_grad_(True)
    optimiser = torch.optim.SGD([x], lr=0.2)
    config = TDNLossConfig(selection=selection, noisy=True)
    for _ in range(60):
        optimiser.zero_grad()
        tdn_loss(x, target, config).sum().backward()
        optimiser.step()
    assert betti_numbers(x.detach()[0, 0].numpy() > 0).components == 2


def test_descent_closes_a_spurious_hole():
    image = np.full((20, 20), -1.0)
    image[3:17, 3:17] = 1.0
    image[6:9, 6:9] = -0.5  # two holes in one square
    image[12:15, 11:14] = -0.2
    assert betti_numbers(image > 0).holes == 2
    x = torch.tensor(image)[None, None].requires_grad_(True)
    optimiser = torch.optim.SGD([x], lr=0.2)
    config = TDNLossConfig(dims=(0, 1), selection="count", noisy=True)
    for _ in range(60):
        optimiser.zero_grad()
        tdn_loss(x, torch.tensor([[1.0, 1.0]]), config).sum().backward()
        optimiser.step()
    final = betti_numbers(x.detach()[0, 0].numpy() > 0)
    assert (final.components, final.holes) == (1, 1)


def test_bad_inputs_raise_one_line_errors():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(InputError, match="x0_hat"):
        tdn_loss(torch.zeros(8, 8), torch.tensor([1.0]))
    with pytest.raises(InputError, match="counts"):
        tdn_loss(x, torch.tensor([-1.0]), TDNLossConfig(selection="count"))
    with pytest.raises(InputError, match="ground truth"):
        tdn_loss(x, torch.zeros(1, 1, 4, 4), TDNLossConfig(selection="match"))
    with pytest.raises(InputError, match="finite"):
        tdn_loss(x * float("nan"), torch.tensor([1.0]), TDNLossConfig(selection="count"))
    with pytest.raises(ConfigError, match="dims"):
        TDNLossConfig(dims=(2,))
    with pytest.raises(ConfigError, match="selection"):
        TDNLossConfig(selection="topc")
