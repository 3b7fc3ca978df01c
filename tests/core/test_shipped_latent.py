"""The shipped latent diffusion model (``pretrained:ldm_objects32``): exactly what ``configs/ldm.yaml`` trains,
small float16 EMA weights that load strictly, and samples a classifier recognises as their classes."""

from __future__ import annotations

import pytest
import torch

from raytopo.pretrained import resolve
from raytopo.train.loading import load_model_for_sampling

from shipped_helpers import checked_shipped_model

SHIPPED = "pretrained:ldm_objects32"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shipped_ldm_is_what_configs_ldm_trains():
    checked_shipped_model(SHIPPED, "ldm.yaml", "ldm", max_bytes=8e6)


def test_shipped_ldm_samples_are_recognised_as_their_classes(monkeypatch):
    import raytopo.families.latent as latent
    from raytopo.eval.judges import class_agreement
    from raytopo.families.sampling import SamplerSettings

    monkeypatch.setattr(latent, "JUDGE_IMAGES", 256)
    family, run, model = load_model_for_sampling(resolve(SHIPPED))   # strict load
    assert 0.2 < float(model.latent_scale) < 5 and float(model.latent_scale) != 1.0
    labels = torch.arange(4).repeat_interleave(3)
    images = family.sample(model, run, len(labels), {"label": labels}, SamplerSettings(steps=25))
    classifier, accuracy = latent.trained_classifier(run.data, 4)
    assert accuracy >= 0.9
    assert class_agreement(classifier, images, labels) >= 0.75
