"""`raytopo demo`: its shipped base model, its equal fine-tuning budgets, its argument checks, and one tiny run.

The shipped base (``pretrained:adm_t_shapes32``) must be exactly what ``raytopo demo --from-scratch
--export-base DIR`` trains, load strictly into the model its config builds, and already make clean masks with
roughly the requested counts (a few samples here; the demo and bench/reproduction.py measure it properly).
"""

from __future__ import annotations

import json

import pytest
import torch

from raytopo import cli
from raytopo.commands.demo import BASE_NAME, DemoArgs, base_config, finetune_config, run_demo
from raytopo.errors import InputError
from raytopo.pretrained import available, resolve
from raytopo.registry import get_family
from raytopo.checkpoint import export_weights, load_checkpoint
from raytopo.train.config import parse_run_config

SHIPPED = f"pretrained:{BASE_NAME}"


def _without_storage(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    config["ray"].pop("storage_path")
    return config


def test_shipped_base_is_what_the_from_scratch_command_trains():
    shipped = load_checkpoint(SHIPPED, with_optimizer=False)
    expected = parse_run_config(base_config("anywhere")).to_plain()
    # re-parsed, so that settings added after the model was trained read as their defaults on both sides
    assert _without_storage(parse_run_config(shipped.config).to_plain()) == _without_storage(expected)
    assert shipped.step == expected["train"]["steps"] and shipped.family == "adm_t"


def test_shipped_base_is_small_float16_ema_weights_that_load_strictly():
    folder = resolve(SHIPPED)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "ema.pt", "state.json"]
    assert (folder / "ema.pt").stat().st_size < 4 * 2**20
    data = load_checkpoint(SHIPPED, with_optimizer=False)
    assert {v.dtype for v in data.ema.values() if v.is_floating_point()} == {torch.float16}
    model = get_family("adm_t").build(parse_run_config(data.config))
    model.load_state_dict(data.ema, strict=True)
    assert next(model.parameters()).dtype == torch.float32


def test_shipped_base_makes_clean_masks_with_about_the_requested_counts(one_torch_thread):
    from raytopo.train.loading import load_model_for_sampling
    from raytopo.families.sampling import SamplerSettings

    family, run, model = load_model_for_sampling(SHIPPED)
    cond = family.target_counts(run, per_count=4)
    with torch.no_grad():
        images = family.sample(model, run, len(cond["counts"]), cond, SamplerSettings(name="ddim", steps=20))
    metrics = family.evaluate(images, cond)
    assert metrics["saturated"] > 0.9, metrics
    assert metrics["dim0_conn4_within1"] >= 0.7, metrics


def test_unknown_shipped_model_lists_the_known_ones():
    assert BASE_NAME in available()
    with pytest.raises(InputError, match=f"pretrained:nothing: no such shipped model; expected one of .*{BASE_NAME}"):
        resolve("pretrained:nothing")


def test_export_writes_float16_weights_and_never_overwrites(tmp_path):
    exported = export_weights(SHIPPED, tmp_path / "copy", dtype=torch.float32)
    data = load_checkpoint(exported, with_optimizer=False)
    assert {v.dtype for v in data.ema.values() if v.is_floating_point()} == {torch.float32}
    assert data.config == load_checkpoint(SHIPPED, with_optimizer=False).config
    with pytest.raises(InputError, match="already exists"):
        export_weights(SHIPPED, tmp_path / "copy")


def test_adm_t_and_tdn_get_identical_fine_tuning_budgets(tmp_path):
    adm_t, tdn = (finetune_config(tmp_path, family, 600, SHIPPED, seed=3) for family in ("adm_t", "tdn"))
    assert tdn["family"] == "tdn" and adm_t["family"] == "adm_t"
    assert tdn["model"]["topo"]["weight"] > 0 and "topo" not in adm_t["model"]
    for section in ("data", "train", "init_from"):
        assert tdn[section] == adm_t[section], section
    assert {k: v for k, v in tdn["model"].items() if k != "topo"} == adm_t["model"]
    assert tdn["train"]["steps"] == 600 and tdn["train"]["seed"] == 3
    for config in (adm_t, tdn):
        parse_run_config(config)


@pytest.mark.parametrize("argv, message", [
    (["--export-base", "x"], "--export-base: only with --from-scratch"),
    (["--finetune-steps", "0"], "--finetune-steps: expected >= 1"),
    (["--per-count", "0"], "--per-count: expected >= 1"),
    (["--actors", "-1"], "--actors: expected >= 0"),
])
def test_bad_demo_arguments_fail_before_ray_starts(argv, message, tmp_path, capsys):
    import ray

    assert cli.main(["demo", "--out", str(tmp_path / "demo"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_tiny_demo_runs_end_to_end_and_prints_its_table(ray_local, tmp_path, capsys):
    """Two fine-tuning steps per model and one sample per count: the whole pipeline, not its result."""
    out = tmp_path / "demo"
    assert run_demo(DemoArgs(out=out, finetune_steps=2, per_count=1, sample_steps=2, num_actors=1)) == 0
    printed = capsys.readouterr().out
    assert "| ADM-T |" in printed and "| TDN |" in printed and "TDN - ADM-T accuracy" in printed
    assert "time per stage:" in printed
    for label in ("adm_t", "tdn"):
        assert len(list((out / "samples" / label).glob("*.png"))) == 5
    assert (out / "samples" / "adm_t_vs_tdn.png").is_file()
    with pytest.raises(InputError, match="not made by raytopo demo"):
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "keep.txt").write_text("mine")
        run_demo(DemoArgs(out=foreign))
    assert (foreign / "keep.txt").read_text() == "mine"
