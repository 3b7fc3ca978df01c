"""Bad input fails in seconds with one line naming the thing, exit status 2, before Ray starts; nothing written is
lost. Every case here fails on the driver: none of these tests starts Ray (checked), so they are fast."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from raytopo.cli import main


@pytest.fixture(autouse=True)
def no_ray_start():
    """Each case must fail before Ray: a started cluster would mean the check came too late."""
    import ray

    assert not ray.is_initialized()
    yield
    started = ray.is_initialized()
    if started:
        ray.shutdown()
    assert not started, "Ray was started: the error was found too late"


def _fails(argv: list[str], capsys, *fragments: str) -> str:
    """Run the CLI, expect exit status 2 and one stderr line holding every fragment."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    assert status == 2
    error = capsys.readouterr().err.strip()
    last = error.splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, error
    assert "Traceback" not in error
    return last


def _mask(path, value: int = 255, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[4:10, 4:10] = value
    Image.fromarray(pixels, mode).save(path)


def _train_config(tmp_path, data: dict, family: str = "adm_t") -> str:
    config = {"family": family, "data": {"image_size": 16, **data},
              "model": {"unet": {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2],
                                 "attention_resolutions": []}},
              "train": {"steps": 2, "batch_size": 2},
              "ray": {"num_workers": 1, "storage_path": str(tmp_path / "runs"), "name": "bad"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# --- data sources -------------------------------------------------------------------------------------------


def test_a_truncated_png_in_a_folder_is_named(tmp_path, capsys) -> None:
    folder = tmp_path / "masks"
    _mask(folder / "1_0000.png")
    _mask(folder / "2_0001.png")
    data = (folder / "2_0001.png").read_bytes()
    (folder / "2_0001.png").write_bytes(data[: len(data) // 2])
    _fails(["train", _train_config(tmp_path, {"source": "folder", "path": str(folder)})], capsys,
           "2_0001.png", "readable image")


@pytest.mark.parametrize("name, expected", [("oops.png", "<count>_<id>"), ("1e20_0000.png", "count_limit")])
def test_bad_file_names_and_absurd_counts_are_named(tmp_path, capsys, name, expected) -> None:
    folder = tmp_path / "masks"
    _mask(folder / "1_0000.png")
    _mask(folder / name)
    _fails(["train", _train_config(tmp_path, {"source": "folder", "path": str(folder)})], capsys, name, expected)


def test_empty_and_missing_folders(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    _fails(["train", _train_config(tmp_path, {"source": "folder", "path": str(tmp_path / "empty")})], capsys,
           "empty", "found none")
    _fails(["train", _train_config(tmp_path, {"source": "folder", "path": str(tmp_path / "absent")})], capsys,
           "absent", "no such directory")


@pytest.mark.parametrize("array, expected", [
    (np.zeros((3, 4)), "expected images shaped"),
    (np.array([[[0.5, np.nan]] * 2] * 3), "image 0 has NaN"),
    (np.array([["a", "b"], ["c", "d"]] * 3).reshape(3, 2, 2), "dtype <U1"),
])
def test_bad_arrays_fail_before_ray(tmp_path, capsys, array, expected) -> None:
    np.save(tmp_path / "images.npy", array)
    _fails(["train", _train_config(tmp_path, {"source": "npy", "path": str(tmp_path / "images.npy")},
                                   family="adm")], capsys, "images.npy", expected)


def test_a_data_set_smaller_than_a_batch_fails_before_ray(tmp_path, capsys, monkeypatch) -> None:
    import raytopo.train.trainer as trainer

    monkeypatch.setattr(trainer, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    np.save(tmp_path / "images.npy", np.zeros((3, 16, 16), dtype=np.uint8))
    config = _train_config(tmp_path, {"source": "npy", "path": str(tmp_path / "images.npy")}, family="adm")
    _fails(["train", config, "--set", "train.batch_size=4"], capsys, "images.npy: 3 images", "train.batch_size 4")
    treevae = str(Path(__file__).resolve().parents[2] / "configs" / "treevae.yaml")
    _fails(["train", treevae, "--set", "data.num_images=64", "--set", f"ray.storage_path={tmp_path}"], capsys,
           "data.num_images 64", "fewer than train.batch_size 128")


def test_a_config_whose_image_cannot_hold_the_counts(tmp_path, capsys) -> None:
    _fails(["train", _train_config(tmp_path, {"source": "shapes", "max_count": 40})], capsys,
           "data", "cannot place 40 shapes")


def test_a_parquet_pack_of_the_wrong_convention(tmp_path, capsys) -> None:
    from raytopo.data.parquet import pack_folder

    _mask(tmp_path / "masks" / "1_1_0000.png")
    pack_folder(tmp_path / "masks", tmp_path / "pack", "two_counts")
    _fails(["train", _train_config(tmp_path, {"source": "parquet", "path": str(tmp_path / "pack")})], capsys,
           "pack", "'count' labels", "'two_counts'")


def test_sixteen_bit_pngs_are_scaled_the_same_in_training_and_evaluation(tmp_path) -> None:
    from raytopo.commands.evaluate import read_mask
    from raytopo.data.folder import ImageFolderDataset

    pixels = np.zeros((16, 16), dtype=np.uint16)
    pixels[:8] = 65535
    pixels[8:12] = 32896  # 128 * 257
    Image.fromarray(pixels).save(tmp_path / "1_0000.png")
    assert Image.open(tmp_path / "1_0000.png").mode == "I;16"
    grey = read_mask(tmp_path / "1_0000.png")
    assert grey[0, 0] == 255 and grey[10, 0] == 128 and grey[15, 0] == 0
    image = ImageFolderDataset(tmp_path, "count", 16)[0]["image"][0].numpy()
    np.testing.assert_allclose(image, grey / 127.5 - 1, atol=1e-6)  # not clipped to 255 -> +1 everywhere


# --- configs and arguments ----------------------------------------------------------------------------------


def test_a_config_without_family_fails_with_one_line(tmp_path, capsys) -> None:
    (tmp_path / "empty.yaml").write_text("")
    _fails(["train", str(tmp_path / "empty.yaml")], capsys, "family: required")
    (tmp_path / "nofamily.yaml").write_text("train: {steps: 3}\n")
    _fails(["train", str(tmp_path / "nofamily.yaml")], capsys, "family: required", "tdn")


@pytest.mark.parametrize("argv, flag", [
    (["data", "shapes", "--n", "0", "--out", "x"], "--n"),
    (["topology", "x.png", "--top", "-1"], "--top"),
    (["sample", "ckpt", "--batch-size", "0", "--out", "x"], "--batch-size"),
    (["sample", "ckpt", "--per-count", "-2", "--out", "x"], "--per-count"),
    (["evaluate", "x", "--dim", "2"], "--dim"),
])
def test_out_of_range_arguments_fail_at_parsing(argv, flag, capsys) -> None:
    _fails(argv, capsys, flag)


# --- nothing lost, nothing silently reused ------------------------------------------------------------------


def _fake_checkpoint(run_dir, config: dict) -> None:
    checkpoint = run_dir / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"step": 2, "family": config["family"]}))
    (checkpoint / "config.json").write_text(json.dumps(config))


def test_a_reused_run_name_is_not_trained_into_without_resume(tmp_path, capsys) -> None:
    config = _train_config(tmp_path, {"source": "shapes", "max_count": 2})
    (tmp_path / "runs" / "bad").mkdir(parents=True)
    (tmp_path / "runs" / "bad" / "something").write_text("earlier output")
    _fails(["train", config], capsys, "runs/bad", "already there", "--resume")
    assert (tmp_path / "runs" / "bad" / "something").read_text() == "earlier output"


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys) -> None:
    config = _train_config(tmp_path, {"source": "shapes", "max_count": 2})
    _fails(["train", config, "--resume"], capsys, "--resume", "no checkpoint", "'bad'")


def test_a_resume_with_a_different_model_names_the_fields(tmp_path, capsys) -> None:
    from raytopo.train.config import load_run_config

    path = _train_config(tmp_path, {"source": "shapes", "max_count": 2})
    saved = load_run_config(path).to_plain()
    saved["model"]["unet"]["model_channels"] = 64
    saved["data"]["max_count"] = 3
    saved["train"]["steps"] = 1          # train settings may change on resume: not reported
    _fake_checkpoint(tmp_path / "runs" / "bad", saved)
    line = _fails(["train", path, "--resume"], capsys, "model.unet.model_channels", "data.max_count")
    assert "train.steps" not in line


def test_sample_refuses_a_folder_holding_earlier_samples(tmp_path, capsys) -> None:
    out = tmp_path / "samples"
    _mask(out / "1_00000.png")
    _fails(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", str(out)], capsys,
           "not empty", "--overwrite")
    assert (out / "1_00000.png").is_file()


def test_overwrite_removes_only_earlier_samples(tmp_path) -> None:
    from raytopo.commands.sample import remove_earlier_samples

    _mask(tmp_path / "1_00000.png")
    _mask(tmp_path / "2_1_00001.png")
    _mask(tmp_path / "grid" / "grid.png")
    (tmp_path / "notes.txt").write_text("mine")
    remove_earlier_samples(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["notes.txt"]


def test_counts_outside_the_training_range_warn(capsys) -> None:
    from raytopo.commands.sample import warn_outside_training_range

    warn_outside_training_range([(2.0,), (9.0,), (0.0,)], 1, 5)
    error = capsys.readouterr().err
    assert "0, 9" in error and "1..5" in error
    warn_outside_training_range([(1.0,), (5.0,)], 1, 5)
    assert capsys.readouterr().err == ""


def test_topology_plot_goes_to_out_not_into_the_dataset(tmp_path, monkeypatch) -> None:
    _mask(tmp_path / "data" / "1_0000.png")
    monkeypatch.chdir(tmp_path)
    assert main(["topology", str(tmp_path / "data" / "1_0000.png"), "--plot"]) == 0
    assert (tmp_path / "1_0000_diagram.png").is_file()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["1_0000.png"]
    assert main(["topology", str(tmp_path / "data" / "1_0000.png"), "--plot", "--out", "plots"]) == 0
    assert (tmp_path / "plots" / "1_0000_diagram.png").is_file()


def test_pack_names_the_overwrite_flag(tmp_path, capsys) -> None:
    _mask(tmp_path / "masks" / "1_0000.png")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "part-00000.parquet").write_text("earlier")
    _fails(["data", "pack", str(tmp_path / "masks"), "--out", str(tmp_path / "pack")], capsys, "--overwrite")
