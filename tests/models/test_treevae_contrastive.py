"""TreeVAE's contrastive term: InfoNCE against a brute-force loop over the pairs, the decision term's
probability weighting, the two random views (identity at zero strength, reproducible from a seed), and the
term's gradient reaching the routers and projections."""

from __future__ import annotations

import math

import pytest
import torch

from raytopo.models.treevae import TreeVAE, TreeVAESettings
from raytopo.models.treevae.losses import decision_contrast, info_nce, instance_contrast
from raytopo.models.treevae.views import ViewSettings, paired_views, random_view

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TreeVAESettings(image_size=16, channels=1, latent_dim=4, hidden=16, encoder_channels=(4, 8, 8), max_depth=3,
                       contrastive=True)


def brute_force_info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> list[float]:
    """NT-Xent written out pair by pair (Chen et al. 2020, eq. 1)."""
    rows = [r / r.norm() for r in torch.cat([first, second])]
    n = len(first)
    losses = []
    for i, u in enumerate(rows):
        partner = rows[(i + n) % (2 * n)]
        numerator = math.exp(float(u @ partner) / temperature)
        denominator = sum(math.exp(float(u @ v) / temperature) for j, v in enumerate(rows) if j != i)
        losses.append(-math.log(numerator / denominator))
    return losses


def test_info_nce_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    first, second = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for temperature in (1.0, 0.5):
        expected = torch.tensor(brute_force_info_nce(first, second, temperature))
        assert torch.allclose(info_nce(first, second, temperature), expected, atol=1e-5)


def test_decision_contrast_is_the_probability_weighted_mean_and_rewards_agreeing_views():
    q = torch.tensor([0.9, 0.1, 0.8, 0.2])
    agreeing = torch.cat([q, q])
    disagreeing = torch.cat([q, 1 - q])
    ones = torch.ones(8)
    assert decision_contrast(agreeing, ones) < decision_contrast(disagreeing, ones)
    stacked = torch.stack([agreeing, 1 - agreeing], 1)
    per_sample = info_nce(stacked[:4], stacked[4:], 1.0)
    weight = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])
    assert torch.allclose(decision_contrast(agreeing, weight), per_sample[[0, 4]].mean())
    embeddings = [torch.randn(6, 2), torch.randn(6, 2)]
    assert torch.allclose(instance_contrast(embeddings),
                          torch.stack([info_nce(e[:3], e[3:], 0.5).mean() for e in embeddings]).mean())


def test_views_are_identity_at_zero_strength_and_reproducible():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 1, 16, 16, generator=g)
    plain = ViewSettings(crop_scale=(1.0, 1.0), flip=0.0, jitter=0.0)
    assert torch.allclose(random_view(images, torch.Generator().manual_seed(0), plain), images, atol=1e-5)
    flipped = random_view(images, torch.Generator().manual_seed(0), ViewSettings((1.0, 1.0), 1.0, 0.0))
    assert torch.allclose(flipped, images.flip(-1), atol=1e-5)
    a = paired_views(images, torch.Generator().manual_seed(3))
    b = paired_views(images, torch.Generator().manual_seed(3))
    assert a.shape == (8, 1, 16, 16) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a[:4], a[4:])


def test_the_term_trains_the_routers_and_projections():
    torch.manual_seed(0)
    model = TreeVAE(TINY)
    model.grow("1")
    views = paired_views(torch.rand(6, 1, 16, 16), torch.Generator().manual_seed(0))
    out = model(views, paired_views=True)
    assert out["aug"].dim() == 0 and torch.isfinite(out["aug"])
    out["aug"].backward()
    for name in ("routers_q.r.", "routers_q.r1.", "projections.0.", "projections.3.", "encoder."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert "aug" not in model(views)
