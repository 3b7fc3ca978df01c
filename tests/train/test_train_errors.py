"""User errors surface before any Ray worker starts, as one line naming the field and the value expected.

Through the CLI (`raytopo.cli.main`): exit status 2, exactly one stderr line ``raytopo <command>: error: ...``,
no traceback. None of the failing commands here reaches a worker: the CLI cases that would train use a
config whose errors are caught by validation, and the ``init_from`` cases are checked on the driver.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from raytopo import cli
from raytopo.errors import ConfigError, InputError
from raytopo.registry import get_family
from raytopo.checkpoint import save_checkpoint
from raytopo.train.config import load_run_config, parse_run_config
from raytopo.models.ema import make_ema
from raytopo.train.loop import check_init_from
from raytopo.train.trainer import check_capacity

from train_helpers import tiny_config


def _with(config: dict, dotted: str, value) -> dict:
    result = copy.deepcopy(config)
    node = result
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return result


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"raytopo {command}: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def _checkpoint(directory: Path, family: str, model_channels: int = 32) -> Path:
    """A real (untrained) checkpoint directory written by the production code, without Ray."""
    run = parse_run_config(tiny_config(directory.parent, family=family,
                                       model={"unet": {"model_channels": model_channels}}))
    model = get_family(family).build(run)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(directory, model, make_ema(model), optimizer, 3, run.to_plain())


# --- config values: CLI `raytopo train` ---------------------------------------------------------------------

BAD_VALUES = [
    ("family", "diffusion_gan", ["family", "'diffusion_gan'", "adm, adm_t, controlnet, diffuse_treevae, equivariant, ldm, tdn, topovae, treevae"]),
    ("train.steps", 0, ["train.steps", ">= 1", "0"]),
    ("data.channels", 2, ["data.channels", "1 or 3", "2"]),
    ("model.topo.dims", [2], ["model.topo", "dims", "(0, 1)", "(2,)"]),
    ("model.topo.selection", "topc", ["model.topo.selection", "'match'", "'count'", "'topc'"]),
    ("data.image_size", 20, ["image_size", "20", "16, 28, 32"]),
    ("train.microbatches", 3, ["train.microbatches", "divisor", "3"]),
    ("ray.num_workers", -1, ["ray.num_workers", ">= 0", "-1"]),
    ("model.topo.weight", -1.0, ["model.topo.weight", ">= 0"]),
    ("data.max_count", "many", ["data.max_count", "whole number", "'many'"]),
]


@pytest.mark.parametrize("field, value, expected", BAD_VALUES, ids=[case[0] for case in BAD_VALUES])
def test_train_cli_rejects_out_of_range_values(tmp_path, capsys, field, value, expected):
    path = _write(tmp_path / "run.yaml", _with(tiny_config(tmp_path), field, value))
    assert cli.main(["train", str(path)]) == 2
    message = _one_line_error(capsys, "train")
    for text in expected:
        assert text in message, (text, message)
    assert not (tmp_path / "tiny").exists()  # nothing was started: no run directory


def test_train_cli_set_override_is_validated_too(tmp_path, capsys):
    path = _write(tmp_path / "run.yaml", tiny_config(tmp_path))
    assert cli.main(["train", str(path), "--set", "train.steps=0"]) == 2
    assert "train.steps: expected >= 1, got 0" in _one_line_error(capsys, "train")


UNKNOWN_KEYS = ["bogus", "data.bogus", "train.bogus", "ray.bogus", "model.bogus", "model.unet.bogus",
                "model.diffusion.bogus", "model.topo.bogus"]


@pytest.mark.parametrize("dotted", UNKNOWN_KEYS)
def test_an_unknown_key_in_any_section_is_named(tmp_path, capsys, dotted):
    path = _write(tmp_path / "run.yaml", _with(tiny_config(tmp_path), dotted, 1))
    assert cli.main(["train", str(path)]) == 2
    message = _one_line_error(capsys, "train")
    assert f"{dotted}: unknown setting" in message
    assert "allowed:" in message


def test_a_valid_config_passes_the_same_validation(tmp_path):
    """Control for the cases above: the unmodified tiny config loads."""
    run = load_run_config(_write(tmp_path / "run.yaml", tiny_config(tmp_path)))
    assert run.family == "tdn" and run.train.steps == 6 and run.data.image_size == 16


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "absent.yaml")]) == 2
    message = _one_line_error(capsys, "train")
    assert "absent.yaml" in message and "no such config file" in message


# --- init_from: checked on the driver before any worker starts ----------------------------------------------


def test_init_from_a_checkpoint_of_another_shape_names_the_mismatched_key(tmp_path, capsys, monkeypatch):
    """'Wrong' = a tensor whose shape differs (here: a UNet with model_channels 64 into one with 32)."""
    import raytopo.train.trainer as trainer

    def no_ray(*args, **kwargs):  # the check must come first; reaching Ray would be the bug
        raise AssertionError("Ray was started before init_from was checked")

    monkeypatch.setattr(trainer, "ensure_ray", no_ray)
    source = _checkpoint(tmp_path / "wide", "adm", model_channels=64)
    config = tiny_config(tmp_path, family="adm_t", init_from=str(source), ray={"num_workers": 2})
    path = _write(tmp_path / "run.yaml", config)
    assert cli.main(["train", str(path)]) == 2
    message = _one_line_error(capsys, "train")
    assert f"init_from {source}" in message
    assert "'time_embed.0.weight'" in message and "[256, 64]" in message and "[128, 32]" in message


def test_init_from_a_missing_or_unrelated_checkpoint_fails_early(tmp_path):
    config = tiny_config(tmp_path, family="adm_t")
    with pytest.raises(InputError, match="absent.*not found"):
        check_init_from(parse_run_config({**config, "init_from": str(tmp_path / "absent")}))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(InputError, match="no parameter name matches"):
        check_init_from(parse_run_config({**config, "init_from": str(unrelated)}))
    # Control: a compatible adm checkpoint passes the same check.
    check_init_from(parse_run_config({**config, "init_from": str(_checkpoint(tmp_path / "adm", "adm"))}))


# --- cluster capacity -----------------------------------------------------------------------------------------


def test_check_capacity_refuses_a_run_larger_than_the_cluster(ray_local, tmp_path):
    too_big = parse_run_config(tiny_config(tmp_path, ray={"num_workers": 2, "cpus_per_worker": 1.0,
                                                          "persistence_actors": 2, "cpus_per_actor": 0.5}))
    # 2 workers x 1 CPU + 2 workers x 2 actors x 0.5 CPU = 4 CPUs on a 2-CPU cluster.
    with pytest.raises(ConfigError, match=r"needs 4 CPUs .* the cluster has 2"):
        check_capacity(too_big, strict=True)
    with pytest.warns(UserWarning, match="needs 4 CPUs"):
        check_capacity(too_big, strict=False)  # an autoscaling cluster may still grow
    fits = parse_run_config(tiny_config(tmp_path, ray={"num_workers": 2, "cpus_per_worker": 0.5,
                                                       "persistence_actors": 1, "cpus_per_actor": 0.5}))
    check_capacity(fits, strict=True)  # exactly 2 CPUs


# --- sampling -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def count_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("sample") / "ckpt", "tdn")


@pytest.mark.parametrize("arguments, expected", [
    (["--counts", "-1"], ["--counts", "non-negative", "'-1'"]),
    (["--counts=1,-2"], ["--counts", "non-negative", "'-2'"]),
    (["--counts", "1.5"], ["--counts", "whole numbers", "'1.5'"]),
    (["--counts", "2:1"], ["--counts", "'2:1'"]),  # two counts for a one-count model
    (["--counts", ","], ["--counts", "at least one"]),
    (["--counts", "1", "--per-count", "0"], ["--per-count", ">= 1", "0"]),
    (["--counts", "1", "--steps", "0"], ["steps", ">= 1", "0"]),
])
def test_sample_cli_rejects_bad_counts(count_checkpoint, tmp_path, capsys, arguments, expected):
    out = tmp_path / "samples"
    assert cli.main(["sample", str(count_checkpoint), *arguments, "--out", str(out)]) == 2
    message = _one_line_error(capsys, "sample")
    for text in expected:
        assert text in message, (text, message)
    assert not out.exists()


def test_sample_cli_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "nothing"), "--counts", "1", "--out", str(tmp_path / "o")]) == 2
    message = _one_line_error(capsys, "sample")
    assert "nothing" in message and "no such checkpoint directory" in message


def test_sample_asks_the_family_for_its_conditions(tmp_path, capsys):
    """An unconditional adm trained on Shapes (whose data carry counts) samples without --counts, and refuses
    them; the data config used to decide, demanding counts the model ignores."""
    checkpoint = _checkpoint(tmp_path / "adm", "adm")
    out = tmp_path / "samples"
    argv = ["sample", str(checkpoint), "--per-count", "2", "--steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]
    assert cli.main([*argv[:-1], str(tmp_path / "other"), "--counts", "1"]) == 2
    assert "not conditioned on counts" in _one_line_error(capsys, "sample")
