"""One test per class of bad input (issue 27): each fails with exit status 2 and one line naming the thing,
changes nothing on disk (every folder involved is hashed before and after), starts no Ray, and refuses before
any weight is loaded where the refusal needs only arguments and configs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from raytopo.cli import main

pytestmark = pytest.mark.usefixtures("no_ray_start", "no_weights_loaded")


@pytest.fixture()
def no_ray_start():
    import ray

    assert not ray.is_initialized()
    yield
    started = ray.is_initialized()
    if started:
        ray.shutdown()
    assert not started, "Ray was started: the error was found too late"


@pytest.fixture()
def no_weights_loaded(monkeypatch):
    """Refusals come before a model is built from a checkpoint (cheap checks first)."""
    import raytopo.train.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint's weights were loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load_model_for_sampling", refuse)


def digest(*paths: Path) -> str:
    """A hash of every file (name and bytes) under ``paths``: equal before and after means nothing changed."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else [Path(root)]
        for path in files:
            if path.exists():
                h.update(str(path).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def refused(argv: list[str], capsys, *fragments: str, unchanged: tuple[Path, ...] = ()) -> str:
    """Run the CLI: exit 2, one stderr line holding every fragment, no traceback, ``unchanged`` untouched."""
    before = digest(*unchanged)
    status = main(argv)
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert "Traceback" not in error and error.count("\n") == 0, error
    for fragment in fragments:
        assert fragment in error, error
    assert digest(*unchanged) == before, "something on disk changed"
    return error


def _mask(path: Path, value: int = 255, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(size[::-1], dtype=np.uint8)
    pixels[4:10, 4:10] = value
    Image.fromarray(pixels).save(path)
    return path


def _config(tmp_path: Path, **sections) -> str:
    plain = {"family": "adm_t", "data": {"image_size": 16, "max_count": 2},
             "model": {"unet": {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2],
                                "attention_resolutions": []}},
             "train": {"steps": 2, "batch_size": 2},
             "ray": {"num_workers": 1, "storage_path": str(tmp_path / "runs"), "name": "bad"}}
    for section, values in sections.items():
        plain[section] = {**plain.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(plain))
    return str(path)


def _checkpoint_copy(tmp_path: Path, name: str = "adm_t_shapes32") -> Path:
    from raytopo.pretrained import resolve

    target = tmp_path / "ckpt"
    shutil.copytree(resolve(f"pretrained:{name}"), target)
    return target


# --- help ----------------------------------------------------------------------------------------------------------


def test_help_works_for_every_command_and_no_command_shows_it(capsys):
    assert main(["--help"]) == 0 and "pipeline" in capsys.readouterr().out
    for command in ("topology", "evaluate", "train", "sample", "score", "pipeline", "export", "study", "tune",
                    "demo", "pointcloud", "data"):
        assert main([command, "--help"]) == 0, command
    capsys.readouterr()
    assert main([]) == 2
    assert "{topology,evaluate,train" in capsys.readouterr().err


# --- nothing lost ----------------------------------------------------------------------------------------------------


def test_an_existing_file_is_never_overwritten_by_an_output(tmp_path, capsys):
    masks = tmp_path / "masks"
    _mask(masks / "1_0000.png")
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    refused(["evaluate", str(masks), "--out", str(mine)], capsys, "--out", "already exists", unchanged=(tmp_path,))
    refused(["evaluate", str(masks), "--out", str(mine), "--overwrite"], capsys, "raytopo did not write it",
            unchanged=(tmp_path,))
    refused(["evaluate", str(masks), "--out", str(masks / "1_0000.png")], capsys, "inside the input",
            unchanged=(tmp_path,))
    checkpoint = _checkpoint_copy(tmp_path)
    refused(["score", str(checkpoint), "--out", str(checkpoint / "config.json")], capsys, "inside the input",
            unchanged=(tmp_path,))
    refused(["score", str(checkpoint), "--out", str(mine)], capsys, "already exists", unchanged=(tmp_path,))
    picture = tmp_path / "1_0000_diagram.png"
    _mask(picture)
    refused(["topology", str(masks / "1_0000.png"), "--plot", str(picture)], capsys, "--plot", "already exists",
            unchanged=(tmp_path,))


def test_overwrite_replaces_only_what_raytopo_wrote(tmp_path, capsys):
    masks = tmp_path / "masks"
    _mask(masks / "1_0000.png")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(masks), "--out", str(out)]) == 0
    assert main(["evaluate", str(masks), "--out", str(out), "--overwrite"]) == 0       # its own file
    plot = tmp_path / "plot.png"
    assert main(["topology", str(masks / "1_0000.png"), "--plot", str(plot)]) == 0
    assert main(["topology", str(masks / "1_0000.png"), "--plot", str(plot), "--overwrite"]) == 0
    capsys.readouterr()


def test_the_demo_removes_only_the_files_it_wrote(tmp_path):
    from raytopo.commands.demo import _MARKER, _fresh_demo_folder, _list_outputs
    from raytopo.errors import InputError

    out = _fresh_demo_folder(tmp_path / "demo")
    (out / "notes.txt").write_text("mine, added before the run")
    kept = {"notes.txt"}
    _mask(out / "samples" / "tdn" / "1_00000.png")
    (out / "tdn").mkdir()
    (out / "tdn" / "events.log").write_text("a run")
    _list_outputs(out, kept)
    assert "notes.txt" not in (out / _MARKER).read_text()
    _fresh_demo_folder(out)                                     # the next demo
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [_MARKER, "notes.txt"]
    (out / "samples").mkdir()
    (out / "samples" / "keep.txt").write_text("mine, where the demo writes")
    _list_outputs(out, {"notes.txt", "samples/keep.txt"})
    with pytest.raises(InputError, match="keep.txt was not written by raytopo demo"):
        _fresh_demo_folder(out)
    assert (out / "samples" / "keep.txt").is_file() and (out / "notes.txt").is_file()


# --- non-finite and out-of-range numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("section, values, fragment", [
    ("train", {"steps": float("nan")}, "train.steps: expected a whole number, got nan"),
    ("train", {"batch_size": float("inf")}, "train.batch_size: expected a whole number, got inf"),
    ("train", {"lr": float("inf")}, "train.lr: expected a finite number > 0, got inf"),
    ("train", {"grad_clip": -1.0}, "train.grad_clip: expected > 0, got -1.0"),
    ("train", {"weight_decay": -0.5}, "train.weight_decay: expected >= 0, got -0.5"),
    ("model", {"diffusion": {"steps": 100}, "topo": {"weight": float("nan")}}, "model.topo.weight"),
    ("data", {"eval_fraction": float("nan")}, "data.eval_fraction: expected a finite number in [0, 1)"),
])
def test_non_finite_and_out_of_range_config_numbers_are_refused(tmp_path, capsys, section, values, fragment):
    family = {"family": "tdn"} if section == "model" else {}
    config = _config(tmp_path, **{section: values})
    if family:
        plain = yaml.safe_load(Path(config).read_text())
        plain["family"] = "tdn"
        Path(config).write_text(yaml.safe_dump(plain))
    refused(["train", config], capsys, fragment, unchanged=(tmp_path,))


@pytest.mark.parametrize("flag, value", [("--guidance", "nan"), ("--conditioning-scale", "inf"), ("--rho", "inf"),
                                         ("--eta", "nan")])
def test_non_finite_flags_are_refused_at_parsing(tmp_path, capsys, flag, value):
    argv = ["sample", "pretrained:ldm_objects32", "--out", str(tmp_path / "s"), flag, value]
    assert main(argv) == 2
    assert f"argument {flag}: expected a finite number" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_tune_space_with_a_non_finite_number_is_refused(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": _config(tmp_path), "params": {"train.lr": {"choice": [1e-4, 2e-4]}},
                                     "metric": "loss", "mode": "min", "eval": {"per_count": float("inf")},
                                     "storage_path": str(tmp_path / "sweeps")}))
    refused(["tune", str(space)], capsys, "eval.per_count", unchanged=(tmp_path,))


# --- damaged checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, file", [
    (lambda c: (c / "state.json").write_text('{"step": 3'), "state.json"),
    (lambda c: (c / "state.json").write_text(""), "state.json"),
    (lambda c: (c / "state.json").write_text('{"family": "adm_t"}'), "state.json"),
    (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json"),
    (lambda c: (c / "config.json").write_text(""), "config.json"),
])
def test_a_damaged_checkpoint_is_named_by_every_command_that_reads_it(tmp_path, capsys, damage, file):
    checkpoint = _checkpoint_copy(tmp_path)
    damage(checkpoint)
    named = f"{checkpoint / file}: damaged checkpoint file"
    if file == "config.json":
        refused(["sample", str(checkpoint), "--counts", "1", "--out", str(tmp_path / "s")], capsys, named,
                unchanged=(tmp_path,))
        refused(["export", str(checkpoint), "--diffusers", str(tmp_path / "d")], capsys, named, unchanged=(tmp_path,))
    refused(["train", _config(tmp_path, init_from=str(checkpoint))], capsys, named, unchanged=(tmp_path,))


def test_resume_names_the_damaged_newest_checkpoint_and_the_newest_intact_one(tmp_path, capsys):
    config = _config(tmp_path)
    from raytopo.train.config import load_run_config

    plain = load_run_config(config).to_plain()
    for step in (2, 4):
        folder = tmp_path / "runs" / "bad" / f"checkpoint_{step:07d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step, "family": "adm_t"}))
        (folder / "config.json").write_text(json.dumps(plain))
    (tmp_path / "runs" / "bad" / "checkpoint_0000004" / "state.json").write_text('{"st')
    refused(["train", config, "--resume"], capsys, "checkpoint_0000004/state.json: damaged checkpoint file",
            "the newest intact one is", "checkpoint_0000002", unchanged=(tmp_path,))


# --- outputs inside inputs, names that escape ------------------------------------------------------------------------


def test_an_output_inside_an_input_is_refused(tmp_path, capsys):
    checkpoint = _checkpoint_copy(tmp_path)
    refused(["sample", str(checkpoint), "--counts", "1", "--out", str(checkpoint / "samples")], capsys,
            "inside the input", unchanged=(tmp_path,))
    refused(["export", str(checkpoint), "--diffusers", str(checkpoint / "exported")], capsys, "inside the input",
            unchanged=(tmp_path,))
    _mask(tmp_path / "masks" / "1_0000.png")
    refused(["data", "pack", str(tmp_path / "masks"), "--out", str(tmp_path / "masks" / "pack")], capsys,
            "inside the input", unchanged=(tmp_path,))


def test_a_name_that_becomes_a_folder_cannot_escape_its_storage(tmp_path, capsys):
    refused(["train", _config(tmp_path), "--set", "ray.name=../x"], capsys, "ray.name", "'../x'",
            unchanged=(tmp_path,))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "../escaped", "base": _config(tmp_path), "metric": "loss",
                                     "mode": "min", "params": {"train.lr": {"choice": [1e-4, 2e-4]}}}))
    refused(["tune", str(space)], capsys, "name: expected a plain folder name", unchanged=(tmp_path,))
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "a/../../b", "base": _config(tmp_path), "seeds": [0, 1],
                                     "variants": {"plain": {}}, "metrics": ["loss"]}))
    refused(["study", str(study)], capsys, "name: expected a plain folder name", unchanged=(tmp_path,))


# --- arguments a command would ignore --------------------------------------------------------------------------------


def test_flags_a_sampler_or_family_would_ignore_are_refused(tmp_path, capsys):
    out = str(tmp_path / "s")
    refused(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", out, "--sampler", "heun", "--eta",
             "0.5"], capsys, "--eta: sampler 'heun' takes no eta", unchanged=(tmp_path,))
    refused(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", out, "--rho", "5"], capsys,
            "--rho: only the karras schedule takes rho", unchanged=(tmp_path,))
    refused(["score", "pretrained:treevae_garments28", "--steps", "10"], capsys,
            "--steps: family 'treevae' does not sample with it", unchanged=(tmp_path,))
    refused(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", out, "--guidance", "2"], capsys,
            "--guidance: family 'adm_t' does not sample with it", unchanged=(tmp_path,))


def test_study_steps_after_the_last_training_step_are_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": _config(tmp_path), "seeds": [0, 1], "variants": {"plain": {}},
                                     "metrics": ["loss"], "at_steps": [1, 50]}))
    refused(["study", str(study)], capsys, "at_steps: step 50 comes after the last step of variant 'plain'",
            unchanged=(tmp_path,))


# --- resources no node has -------------------------------------------------------------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_resources_no_node_has_are_refused_before_ray_starts(tmp_path, capsys):
    refused(["train", _config(tmp_path, ray={"use_gpu": True, "storage_path": str(tmp_path / "runs"),
                                             "name": "bad"})], capsys, "ray.use_gpu: the run needs 1 GPUs",
            unchanged=(tmp_path,))
    refused(["train", _config(tmp_path, ray={"worker_resources": {"tpu_pod": 1}, "storage_path": str(tmp_path),
                                             "name": "bad"})], capsys, "custom resource 'tpu_pod'",
            unchanged=(tmp_path,))


# --- cheap checks first: unknown classes and bad counts before any weight loads ---------------------------------


def test_unknown_classes_and_counts_are_refused_from_the_config_alone(tmp_path, capsys):
    out = str(tmp_path / "s")
    refused(["sample", "pretrained:ldm_objects32", "--classes", "unicorns", "--out", out], capsys,
            "--classes: unknown class 'unicorns'", unchanged=(tmp_path,))
    refused(["sample", "pretrained:ldm_objects32", "--classes", ",", "--out", out], capsys,
            "--classes: expected at least one class name", unchanged=(tmp_path,))
    refused(["pipeline", "--masks-from", "pretrained:adm_t_shapes32", "--controlnet", "pretrained:adm_t_shapes32",
             "--counts", "1", "--out", out], capsys, "--controlnet", "expected a controlnet checkpoint",
            unchanged=(tmp_path,))


# --- ordinary mistakes that used to be tracebacks ------------------------------------------------------------------


def test_ordinary_mistakes_are_one_line(tmp_path, capsys):
    picture = _mask(tmp_path / "config.png")
    refused(["train", str(picture)], capsys, "config.png: expected a YAML text file", unchanged=(tmp_path,))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", str(a_file)], capsys,
            "--out", "expected a folder, found a file", unchanged=(tmp_path,))
    refused(["export", "pretrained:ldm_objects32", "--diffusers", str(a_file)], capsys, "--diffusers",
            "expected a folder, found a file", unchanged=(tmp_path,))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": _config(tmp_path), "metric": "loss", "mode": "min",
                                     "params": {"train.lr": {"choice": [1e-4, 2e-4]}}}))
    refused(["tune", str(space), "--storage", str(a_file)], capsys, "is a file, not a folder",
            unchanged=(tmp_path,))
    _mask(tmp_path / "pairs" / "images" / "a.png")
    _mask(tmp_path / "pairs" / "masks" / "a.png", size=(16, 20))
    refused(["data", "pack", str(tmp_path / "pairs"), "--layout", "image_mask", "--out", str(tmp_path / "pack")],
            capsys, "masks/a.png: the mask is 16x20 but its image a.png is 16x16", unchanged=(tmp_path,))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(["sample", "pretrained:adm_t_shapes32", "--counts", "1", "--out", str(locked / "s")], capsys,
                "permission denied", unchanged=(tmp_path,))
    finally:
        locked.chmod(0o755)
