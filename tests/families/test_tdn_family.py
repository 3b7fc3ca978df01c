"""The tdn family's own settings and evaluation, without training: the L_topo schedule switches (warm-up,
timestep range, Min-SNR), the target counts it samples for, and which homology dimension each count is
measured in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytopo.errors import ConfigError
from raytopo.families.base import StepContext, resolve_terms
from raytopo.families.tdn import TopoSettings
from raytopo.parallel.pool import PersistencePool, PoolConfig
from raytopo.registry import get_family
from raytopo.train.config import parse_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(family: str = "tdn", data: dict | None = None, topo: dict | None = None):
    model = {"unet": {"model_channels": 32, "num_res_blocks": 1, "attention_resolutions": []},
             "diffusion": {"steps": 100}}
    if family == "tdn":
        model["topo"] = {"weight": 1.0, "noisy": True, **(topo or {})}
    return parse_run_config({"family": family, "model": model,
                             "data": {"source": "shapes", "image_size": 16, "num_images": 8, "max_count": 2,
                                      **(data or {})},
                             "ray": {"num_workers": 0}})


@pytest.fixture
def topo_terms(monkeypatch):
    """Per-sample L_topo of a fixed random model at forced timesteps: ``topo_terms(run, t, step=0)``."""

    def terms(run, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: t.clone())
        return _topo_terms(run, t, step)

    return terms


def _topo_terms(run, t: torch.Tensor, step: int) -> torch.Tensor:
    from raytopo.data.sources import in_memory_arrays

    family = get_family("tdn")
    torch.manual_seed(0)
    model = family.build(run)
    batch = {k: torch.from_numpy(v[: len(t)]) for k, v in in_memory_arrays(run.data).items()}
    ctx = StepContext(step=step, device=torch.device("cpu"), pool=PersistencePool(PoolConfig(num_actors=0)),
                      generator=torch.Generator().manual_seed(0), extras=family.setup(run))
    return resolve_terms(family.losses(model, batch, ctx))["topo"].detach()


def test_topo_term_applies_only_inside_the_timestep_range(topo_terms):
    t = torch.tensor([5, 40, 60, 95])
    everywhere = topo_terms(_run(), t)
    assert (everywhere > 0).all()
    ranged = topo_terms(_run(topo={"min_t": 30, "max_t": 90}), t)
    torch.testing.assert_close(ranged, everywhere * torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_topo_weight_warms_up_linearly_over_the_first_steps(topo_terms):
    t = torch.tensor([50, 70])
    full = topo_terms(_run(), t)
    torch.testing.assert_close(topo_terms(_run(topo={"warmup_steps": 4}), t, step=0), full * 0.25)
    torch.testing.assert_close(topo_terms(_run(topo={"warmup_steps": 4}), t, step=9), full)


def test_min_snr_weight_is_min_snr_k_over_snr(topo_terms):
    run = _run(topo={"min_snr": 1.0})
    t = torch.tensor([2, 97])
    abar = torch.as_tensor(get_family("tdn").diffusion(run).alphas_cumprod)[t]
    snr = abar / (1 - abar)
    expected = topo_terms(_run(), t) * (torch.clamp(snr, max=1.0) / snr).float()
    torch.testing.assert_close(topo_terms(run, t), expected)


@pytest.mark.parametrize("changes, message", [
    ({"warmup_steps": -1}, "model.topo.warmup_steps: expected >= 0"),
    ({"min_t": 50, "max_t": 50}, "model.topo.min_t/max_t: expected 0 <= min_t < max_t"),
    ({"min_t": -1}, "model.topo.min_t/max_t"),
])
def test_bad_topo_schedules_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        TopoSettings(**changes)


def test_two_count_targets_are_every_pair_the_shapes_generator_draws():
    run = _run("adm_t", data={"shapes_dim": "both", "convention": "two_counts", "min_count": 1, "max_count": 3})
    counts = get_family("adm_t").target_counts(run, per_count=2)["counts"]
    pairs = sorted({tuple(int(c) for c in row) for row in counts.tolist()})
    assert pairs == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3)] and len(counts) == 12


def _ring(size: int = 16) -> torch.Tensor:
    """One image in [-1, 1]: a hollow square (1 component, 1 hole) and a filled one (1 component, 0 holes)."""
    image = -np.ones((size, size), dtype=np.float32)
    image[2:8, 2:8] = 1.0
    image[4:6, 4:6] = -1.0
    image[10:13, 10:13] = 1.0
    return torch.from_numpy(image)[None, None]


@pytest.mark.parametrize("data, dims, expected", [
    ({"shapes_dim": "0"}, (0,), {"dim0_conn4_accuracy": 1.0}),        # 2 components asked, 2 there
    ({"shapes_dim": "1"}, (1,), {"dim1_accuracy": 0.0, "dim1_mae": 1.0}),  # 2 holes asked, 1 there
])
def test_one_count_is_measured_in_the_dimension_the_data_counts(data, dims, expected):
    family = get_family("tdn")
    run = _run(data=data, topo={"dims": list(dims)})
    assert family.count_dims(run) == dims
    metrics = family.evaluate(_ring(), {"counts": torch.tensor([[2.0]])}, family.count_dims(run))
    for key, value in expected.items():
        assert metrics[key] == value, (key, metrics)
    assert metrics["saturated"] == 1.0
    assert set(metrics) == family.metric_names(run)


def test_within_one_and_saturation_follow_their_definitions():
    family = get_family("adm_t")
    images = torch.cat([_ring(), _ring() * 0.5])            # the second: every pixel at +-0.5, unsaturated
    metrics = family.evaluate(images, {"counts": torch.tensor([[4.0], [3.0]])}, (0,))
    assert metrics["dim0_conn4_accuracy"] == 0.0 and metrics["dim0_conn4_within1"] == 0.5
    assert metrics["saturated"] == 0.5
