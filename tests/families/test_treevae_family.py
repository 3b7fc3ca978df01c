"""The ``treevae`` family's grow stage trains the new subtree on the rows that reach the split leaf (the reference's
SmallTreeVAE data, ``get_ind_small_tree``). Truth: the router-only probability ``node_probability`` checked against
the forward pass in tests/models/test_treevae.py, and the same loss on a batch stripped of the other rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raytopo.data.sources import in_memory_arrays
from raytopo.families.base import StepContext
from raytopo.families.treevae import split_leaf_rows, to_unit
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config
from raytopo.train.loop import make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _grown_model(**model):
    run = parse_run_config({
        "family": "treevae",
        "model": {"tree": {"latent_dim": 4, "hidden": 16, "encoder_channels": [4, 8, 8], "max_depth": 3},
                  "schedule": {"root": 1, "grow": 1, "grows": 1, "finetune": 1}, "decision_batches": 2, **model},
        "data": {"source": "garments", "image_size": 16, "num_images": 64},
        "train": {"steps": 3, "batch_size": 8}})
    family = get_family("treevae")
    torch.manual_seed(0)
    model = family.build(run)
    images = torch.from_numpy(in_memory_arrays(run.data)["image"])
    batches = iter([{"image": images[i:i + 8]} for i in range(0, 64, 8)])
    grow = family.stages(run)[1]
    model = family.enter_stage(model, run, grow, batches)
    make_optimizer(family, model, run, grow)                  # freezes everything but the new subtree
    ctx = StepContext(step=1, device=torch.device("cpu"), extras=family.setup(run))
    return family, model, ctx, images


def _losses(family, model, ctx, images):
    ctx.generator = torch.Generator().manual_seed(5)
    return family.losses(model, {"image": images}, ctx)


def test_a_grow_stage_trains_on_the_rows_that_reach_the_split_leaf_only():
    family, model, ctx, images = _grown_model()
    grown = model.grown["grow1"]
    assert grown["min_probability"] == 0.5
    with torch.no_grad():  # the path to the leaf is frozen, so eval mode is the mode the grow stage runs it in
        reach = model.eval().node_probability(to_unit(images), grown["leaf"])
        grown["min_probability"] = threshold = float(reach.median())   # an untrained router: split the batch
        rows = torch.nonzero(reach >= threshold)[:, 0]
        assert torch.equal(split_leaf_rows(model, to_unit(images), grown["leaf"], threshold), rows)
    model.train()
    assert 2 <= len(rows) < len(images)
    whole, stripped = _losses(family, model, ctx, images), _losses(family, model, ctx, images[rows])
    assert whole["rec"].shape == (len(rows),)
    for name in ("rec", "kl"):
        assert torch.allclose(whole[name], stripped[name], atol=1e-5), name


def test_a_batch_that_misses_the_leaf_still_trains_on_its_two_most_probable_rows():
    _, model, _, images = _grown_model()
    model.eval()
    leaf = model.grown["grow1"]["leaf"]
    with torch.no_grad():
        reach = model.node_probability(to_unit(images), leaf)
        chosen = split_leaf_rows(model, to_unit(images), leaf, min_probability=1.1)
    assert sorted(chosen.tolist()) == sorted(reach.topk(2).indices.tolist())


def test_with_an_augmentation_weight_each_image_gives_two_views_and_an_aug_term():
    family, model, ctx, images = _grown_model(augmentation_weight=10.0)
    assert hasattr(model, "projections")
    model.grown.clear()                                      # the whole tree trains: every row, both views
    terms = _losses(family, model, ctx, images[:8])
    assert terms["rec"].shape == (16,) and terms["aug"].dim() == 0
    unweighted = _grown_model(augmentation_weight=1.0)
    unweighted[1].load_state_dict(model.state_dict())
    unweighted[1].grown.clear()
    assert torch.allclose(terms["aug"], 10 * _losses(*unweighted[:3], images[:8])["aug"], rtol=1e-5)


def _two_class_images(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 16, 16]: even rows a bright square, odd rows a bright bar; labels 0 / 1."""
    images = np.zeros((n, 16, 16), dtype=np.uint8)
    images[0::2, 4:12, 4:12] = 255
    images[1::2, 7:9, 1:15] = 255
    return images, np.arange(n) % 2


@pytest.mark.parametrize("source", ["npy", "class_folder"])
def test_real_data_sources_train_and_score_with_their_labels(source, tmp_path):
    images, labels = _two_class_images(80)      # 24 evaluated, 24 for the judge, 32 trained on
    if source == "npy":
        np.save(tmp_path / "images.npy", images)
        np.save(tmp_path / "labels.npy", labels)
        data = {"source": "npy", "path": str(tmp_path / "images.npy"), "labels_path": str(tmp_path / "labels.npy")}
    else:
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / ("square", "bar")[label]
            folder.mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:03d}.png")
        data = {"source": "class_folder", "path": str(tmp_path)}
    run = parse_run_config({
        "family": "treevae",
        "model": {"tree": {"latent_dim": 4, "hidden": 16, "encoder_channels": [4, 8, 8], "max_depth": 3},
                  "schedule": {"root": 1, "grow": 1, "grows": 1, "finetune": 1}, "decision_batches": 1},
        "data": {**data, "image_size": 16, "eval_fraction": 0.3, "judge_fraction": 0.3},
        "train": {"steps": 3, "batch_size": 8}})
    family = get_family("treevae")
    torch.manual_seed(0)
    model = family.build(run)
    batch = {"image": torch.from_numpy(in_memory_arrays(run.data)["image"][:8])}
    ctx = StepContext(step=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                      extras=family.setup(run))
    assert torch.isfinite(family.losses(model, batch, ctx)["rec"]).all()
    scores = family.evaluate_model(model, run, None, 2, 8)                     # 20 held-out images
    assert set(scores) == family.metric_names(run)
    assert 0.5 <= scores["acc"] <= 1 and scores["judge_accuracy"] >= 0.5


def test_a_checkpoint_whose_tree_does_not_match_its_weights_fails_in_one_line(tmp_path, capsys):
    import json
    import shutil

    from raytopo.cli import main
    from raytopo.pretrained import resolve

    edited = tmp_path / "edited"
    shutil.copytree(resolve("pretrained:treevae_garments28"), edited)
    state = json.loads((edited / "state.json").read_text())
    tree = state["structure"]["tree"]
    tree["internal"].remove("111")                           # "111" listed as a leaf: no decoder weights for it
    tree["leaves"] = [p for p in tree["leaves"] if not p.startswith("111")] + ["111"]
    (edited / "state.json").write_text(json.dumps(state))
    status = main(["sample", str(edited), "--per-count", "2", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "Traceback" not in error[0]
    assert str(edited) in error[0] and "do not fit the model" in error[0]
    assert not (tmp_path / "out").exists()


def test_the_preview_captions_reconstructions_with_their_leaf_and_probability():
    from raytopo.pretrained import resolve
    from raytopo.train.loading import load_model_for_sampling

    family, run, model = load_model_for_sampling(resolve("pretrained:treevae_garments28"))
    grids = family.preview(model, run)
    images, captions = grids["reconstructions"]
    assert images.shape == (16, 1, 28, 28) and captions[:8] == [""] * 8
    for caption in captions[8:]:
        path, probability = caption.split()
        assert path in model.leaf_paths and 0.0 <= float(probability) <= 1.0
    assert grids["leaves"][0].shape == (4 * len(model.leaf_paths), 1, 28, 28)
    assert grids["tree"][0].shape[:2] == (1, 3)
