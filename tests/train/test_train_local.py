"""Local-mode training (``ray.num_workers: 0``): what a run leaves on disk and reports, and staged fine-tuning.

Truth used here comes from outside the code under test: the optimiser's own step counter, a model built
independently from ``config.json``, TensorBoard event files read with TensorBoard's reader, the loss
formula ``L = L_simple + L_vlb + lambda L_topo`` of the TDN paper, and the source checkpoint's tensors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
import torch

import raytopo.train.loop as loop
from raytopo.registry import get_family
from raytopo.checkpoint import load_checkpoint
from raytopo.train.config import parse_run_config
from raytopo.train.loop import initialise_from  # the real one (tests below spy on loop.initialise_from)
from raytopo.train.trainer import requested_cpus, run_training

from train_helpers import tiny_config

CHECKPOINT_FILES = {"model.pt", "ema.pt", "optimizer.pt", "state.json", "config.json"}


@pytest.fixture
def pool_calls(monkeypatch):
    """Records every PersistencePool the loop creates (the loop runs in this process in local mode)."""
    calls = []
    real = loop._make_pool

    def spy(run):
        calls.append(run)
        return real(run)

    monkeypatch.setattr(loop, "_make_pool", spy)
    return calls


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] over every event file in ``folder``, read with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.tensor.float_val:
                    number = float(value.tensor.float_val[0])
                else:
                    continue  # an image, figure or text summary
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point()))


def test_tdn_run_writes_checkpoints_tensorboard_and_finite_metrics(ray_local, tmp_path, pool_calls):
    plain = tiny_config(tmp_path, name="tdn6", train={"steps": 6, "checkpoint_every": 2, "log_every": 2},
                        ray={"num_to_keep": 2, "persistence_actors": 1})
    run = parse_run_config(plain)
    outcome = run_training(run)

    # Checkpoints at steps 2, 4, 6; only the newest num_to_keep = 2 remain, and no staging leftovers.
    folder = run.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_0000004", "checkpoint_0000006"]
    assert outcome.checkpoint == folder / "checkpoint_0000006"
    assert outcome.run_dir == run.run_dir == tmp_path / "tdn6"
    for step, directory in ((4, folder / "checkpoint_0000004"), (6, folder / "checkpoint_0000006")):
        assert {p.name for p in directory.iterdir()} == CHECKPOINT_FILES
        state = json.loads((directory / "state.json").read_text())
        # the data stream's position: 64 images, batches of 8 from one worker -> 8 a step, 8 steps an epoch
        assert state == {"step": step, "family": "tdn", "data": {"epoch": 0, "consumed": 8 * step, "world": 1}}
        # config.json is the run config itself: enough to rebuild the run without repeating flags.
        assert parse_run_config(json.loads((directory / "config.json").read_text())) == run
        # The optimiser's own step counter agrees with state.json.
        optimizer = torch.load(directory / "optimizer.pt", weights_only=True)
        assert {int(s["step"]) for s in optimizer["state"].values()} == {step}
        assert optimizer["param_groups"][0]["lr"] == pytest.approx(1e-3)

    # model.pt / ema.pt load strictly into a model built from config.json; EMA (rate 0.99) lags the model.
    data = load_checkpoint(outcome.checkpoint)
    family = get_family("tdn")
    fresh = family.build(parse_run_config(data.config))
    fresh.load_state_dict(data.model)  # strict: same keys and shapes
    fresh.load_state_dict(data.ema)
    torch.manual_seed(run.train.seed)  # the loop seeds the same way before building the model
    initial = {k: v.detach().clone() for k, v in family.build(run).state_dict().items()}
    moved_model, moved_ema = _distance(data.model, initial), _distance(data.ema, initial)
    assert moved_model > 0 and moved_ema > 0
    assert moved_ema < 0.1 * moved_model  # 6 steps at rate 0.99 move the average a few percent of the way

    # Reported metrics: the TDN loss terms, finite, combined as L_simple + L_vlb + lambda * L_topo.
    metrics = outcome.metrics
    assert metrics["step"] == 6
    for name in ("mse", "vb", "topo", "loss", "grad_norm", "lr"):
        assert math.isfinite(metrics[name]), name
    assert metrics["mse"] > 0 and metrics["vb"] >= 0 and metrics["topo"] > 0
    assert metrics["loss"] == pytest.approx(metrics["mse"] + metrics["vb"] + 0.01 * metrics["topo"], rel=1e-5)

    # TensorBoard: one scalar per log_every steps, equal to what was reported.
    scalars = tensorboard_scalars(run.run_dir / "tensorboard")
    for tag in ("train/mse", "train/vb", "train/topo", "train/loss", "train/lr"):
        assert [step for step, _ in scalars[tag]] == [2, 4, 6], tag
    assert scalars["train/loss"][-1][1] == pytest.approx(metrics["loss"], rel=1e-6)
    assert scalars["train/topo"][-1][1] == pytest.approx(metrics["topo"], rel=1e-6)

    # The persistence pool was made once, with the configured actors; the CPU estimate counts them.
    assert len(pool_calls) == 1 and pool_calls[0].ray.persistence_actors == 1
    assert requested_cpus(run) == pytest.approx(1.0)  # local mode: no worker CPUs, one actor at 1 CPU


def test_adm_t_run_has_no_topology_term_and_no_pool(ray_local, tmp_path, pool_calls):
    run = parse_run_config(tiny_config(tmp_path, name="admt", family="adm_t",
                                       train={"steps": 2, "checkpoint_every": 2}))
    outcome = run_training(run)
    metrics = outcome.metrics
    assert "topo" not in metrics
    assert {"mse", "vb", "loss"} <= set(metrics) and all(math.isfinite(metrics[k]) for k in ("mse", "vb", "loss"))
    assert metrics["loss"] == pytest.approx(metrics["mse"] + metrics["vb"], rel=1e-5)
    assert json.loads((outcome.checkpoint / "state.json").read_text()) == {
        "step": 2, "family": "adm_t", "data": {"epoch": 0, "consumed": 16, "world": 1}}
    assert "train/topo" not in tensorboard_scalars(run.run_dir / "tensorboard")
    assert pool_calls == []
    assert requested_cpus(run) == 0.0


def tensorboard_images(folder: Path) -> dict[str, list[tuple[int, "Image.Image"]]]:
    """tag -> [(step, PIL image), ...] of the image summaries in ``folder`` (TensorBoard's own loader)."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    images: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":   # tensor: [width, height, PNG bytes]
                    picture = Image.open(io.BytesIO(value.tensor.string_val[2]))
                    images.setdefault(value.tag, []).append((event.step, picture))
    return images


def test_evaluations_and_labelled_sample_grids_reach_tensorboard(ray_local, tmp_path):
    train = {"steps": 4, "checkpoint_every": 4, "sample_every": 2, "eval_every": 4, "eval_per_count": 2,
             "sample_steps": 2}
    run = parse_run_config(tiny_config(tmp_path, name="tb", family="adm_t", train=train))
    run_training(run)
    folder = run.run_dir / "tensorboard"
    scalars = tensorboard_scalars(folder)
    for name in get_family("adm_t").metric_names(run):
        assert [step for step, _ in scalars[f"eval/{name}"]] == [4], name
    assert 0.0 <= scalars["eval/dim0_conn4_accuracy"][0][1] <= 1.0
    grids = tensorboard_images(folder)["samples/counts"]
    assert [step for step, _ in grids] == [2, 4]
    picture = grids[-1][1]
    counts = run.data.max_count - run.data.min_count + 1          # one row per requested count, 2 samples each
    assert picture.height >= counts * 96 and picture.width >= 2 * 96   # 16 px masks upscaled to >= 96 px


def test_tdn_with_topo_weight_zero_skips_the_topology_term_and_the_pool(ray_local, tmp_path, pool_calls):
    run = parse_run_config(tiny_config(tmp_path, name="w0", model={"topo": {"weight": 0.0}},
                                       train={"steps": 2, "checkpoint_every": 2}))
    outcome = run_training(run)
    assert "topo" not in outcome.metrics
    assert outcome.metrics["loss"] == pytest.approx(outcome.metrics["mse"] + outcome.metrics["vb"], rel=1e-5)
    assert pool_calls == []
    assert requested_cpus(run) == 0.0


# --- staged fine-tuning: adm -> adm_t -> tdn ------------------------------------------------------------


@pytest.fixture
def init_spy(monkeypatch):
    """Snapshots of the model right after every real (non-meta) ``initialise_from`` in the worker loop."""
    snapshots = []
    real = loop.initialise_from

    def spy(model, path):
        real(model, path)
        if next(model.parameters()).device.type != "meta":
            snapshots.append((path, {k: v.detach().clone() for k, v in model.state_dict().items()}))

    monkeypatch.setattr(loop, "initialise_from", spy)
    return snapshots


def _assert_loaded(state: dict[str, torch.Tensor], source: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]):
    """Shared keys equal the source EMA weights; the others equal a fresh initialisation. Returns the new keys."""
    new = sorted(set(state) - set(source))
    for key in source:
        torch.testing.assert_close(state[key], source[key], rtol=0, atol=0, msg=key)
    for key in new:
        torch.testing.assert_close(state[key], fresh[key], rtol=0, atol=0, msg=key)
    return new


def test_staged_fine_tuning_adm_to_adm_t_to_tdn(ray_local, tmp_path, init_spy):
    steps = {"steps": 2, "checkpoint_every": 2}
    adm = parse_run_config(tiny_config(tmp_path, name="adm", family="adm", train=steps))
    first = run_training(adm)
    assert first.metrics["step"] == 2 and "topo" not in first.metrics
    source = load_checkpoint(first.checkpoint)

    # adm -> adm_t: the count-conditioning layers are new and stay at init; everything else is adm's EMA.
    adm_t = parse_run_config(tiny_config(tmp_path, name="adm_t", family="adm_t", train=steps,
                                         init_from=str(first.checkpoint)))
    family = get_family("adm_t")
    model = family.build(adm_t)
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initialise_from(model, str(first.checkpoint))
    new = _assert_loaded(model.state_dict(), source.ema, fresh)
    assert new and all(key.startswith("label_emb.") for key in new)
    assert source.ema.keys() <= model.state_dict().keys()
    # ...and at least one loaded tensor really changed (the adm EMA is not the adm_t initialisation).
    assert any(not torch.equal(fresh[k], source.ema[k]) for k in source.ema)

    second = run_training(adm_t)
    assert second.metrics["step"] == 2 and math.isfinite(second.metrics["loss"])
    # The worker loop itself started from the adm EMA weights.
    (path, started), = init_spy
    assert path == str(first.checkpoint)
    for key in source.ema:
        torch.testing.assert_close(started[key], source.ema[key], rtol=0, atol=0, msg=key)

    # adm_t -> tdn: the same network, so every tensor comes from adm_t's EMA; the chain trains with L_topo.
    middle = load_checkpoint(second.checkpoint)
    tdn = parse_run_config(tiny_config(tmp_path, name="tdn", family="tdn", train=steps,
                                       ray={"persistence_actors": 1}, init_from=str(second.checkpoint)))
    model = get_family("tdn").build(tdn)
    initialise_from(model, str(second.checkpoint))
    assert _assert_loaded(model.state_dict(), middle.ema, {}) == []

    third = run_training(tdn)
    assert third.metrics["step"] == 2
    assert all(math.isfinite(third.metrics[k]) for k in ("mse", "vb", "topo", "loss"))
    assert len(init_spy) == 2 and init_spy[1][0] == str(second.checkpoint)
    assert json.loads((third.checkpoint / "config.json").read_text())["init_from"] == str(second.checkpoint)
