"""Inside a Ray job, relative output paths go under RAYTOPO_JOB_ROOT or are refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raytopo.cli import main
from raytopo.errors import ConfigError
from raytopo.job_paths import JOB_MARKER_ENV, JOB_ROOT_ENV, outside_job_copy


@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process looks like the driver of a submitted job (the variable Ray sets for it), no job root."""
    monkeypatch.setenv(JOB_MARKER_ENV, '{"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}')
    monkeypatch.delenv(JOB_ROOT_ENV, raising=False)
    return monkeypatch


def test_outside_a_job_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOB_MARKER_ENV, raising=False)
    monkeypatch.delenv(JOB_ROOT_ENV, raising=False)
    assert outside_job_copy("runs", "ray.storage_path") == "runs"
    assert outside_job_copy(Path("samples/a"), "--out") == Path("samples/a")


def test_in_a_job_absolute_paths_and_uris_are_kept(in_job: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for path in (str(tmp_path / "runs"), "s3://bucket/runs", "pretrained:adm_t_shapes32"):
        assert outside_job_copy(path, "x") == path
    assert outside_job_copy(tmp_path, "x") == tmp_path


def test_in_a_job_a_relative_path_goes_under_the_job_root(in_job: pytest.MonkeyPatch, tmp_path: Path) -> None:
    in_job.setenv(JOB_ROOT_ENV, str(tmp_path))
    assert outside_job_copy("runs", "ray.storage_path") == str(tmp_path / "runs")
    assert outside_job_copy(Path("samples/a"), "--out") == tmp_path / "samples" / "a"


def test_in_a_job_without_a_root_a_relative_path_is_refused(in_job: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^ray\.storage_path: 'runs' is relative, and inside a Ray job"):
        outside_job_copy("runs", "ray.storage_path")
    in_job.setenv(JOB_ROOT_ENV, "shared")
    with pytest.raises(ConfigError, match="RAYTOPO_JOB_ROOT: expected an absolute path, got 'shared'"):
        outside_job_copy("runs", "ray.storage_path")


def test_train_in_a_job_refuses_relative_storage_before_ray_starts(
        in_job: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "family": "adm", "data": {"source": "shapes", "image_size": 16, "num_images": 8, "max_count": 2},
        "train": {"steps": 1, "batch_size": 4}, "ray": {"storage_path": "runs", "name": "x"}}))
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("raytopo train: error: ray.storage_path: 'runs' is relative") and "\n" not in error
    assert not ray.is_initialized()


@pytest.mark.parametrize("argv, flag", [
    (["sample", "runs/x/checkpoint_000001", "--counts", "1", "--out", "/tmp/out"], "checkpoint"),
    (["evaluate", "samples/x"], "folder"),
    (["score", "/abs/checkpoint", "--out", "metrics.json"], "--out"),
])
def test_commands_in_a_job_refuse_relative_outputs(in_job: pytest.MonkeyPatch, argv: list[str], flag: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert f"error: {flag}: " in capsys.readouterr().err


def test_sample_in_a_job_reads_the_checkpoint_from_the_job_root(in_job: pytest.MonkeyPatch, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The relative checkpoint is looked up under the root (the error names the rooted path, not the copy's)."""
    in_job.setenv(JOB_ROOT_ENV, str(tmp_path))
    assert main(["sample", "runs/x/checkpoint_000001", "--counts", "1", "--out", "samples/x"]) == 2
    assert str(tmp_path / "runs" / "x" / "checkpoint_000001") in capsys.readouterr().err
