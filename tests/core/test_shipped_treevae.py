"""The shipped TreeVAE (``pretrained:treevae_garments28``): exactly what ``configs/treevae.yaml`` trains, small
float16 EMA weights that load strictly into the grown tree, and leaves that cluster held-out garments better
than k-means on the same pixels (the issue's target)."""

from __future__ import annotations

import pytest

from raytopo.families.sampling import SamplerSettings
from raytopo.pretrained import resolve
from raytopo.train.loading import load_model_for_sampling

from shipped_helpers import checked_shipped_model

SHIPPED = "pretrained:treevae_garments28"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shipped_treevae_is_what_configs_treevae_trains():
    shipped = checked_shipped_model(SHIPPED, "treevae.yaml", "treevae", max_bytes=2.5e6)
    assert len(shipped.structure["tree"]["leaves"]) == 10


def test_shipped_treevae_clusters_held_out_garments_better_than_kmeans():
    family, run, model = load_model_for_sampling(resolve(SHIPPED))   # strict load into the grown tree
    scores = family.evaluate_model(model, run, SamplerSettings(), 50, 256)
    assert scores["leaves"] == 10
    assert scores["nmi"] > scores["kmeans_nmi"] and scores["nmi"] >= 0.8
    assert scores["acc"] >= 0.75 and scores["dendrogram_purity"] >= 0.7
