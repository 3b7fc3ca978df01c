"""`raytopo pointcloud`: custom JSON/.npy clouds, outputs (frames, GIF, points, summary), exit codes 0/1/2."""

import json

import numpy as np
import pytest
from PIL import Image

from raytopo.cli import main

THREE_CLUSTERS = [[0, 0], [0.2, 0.1], [5, 0], [5.1, 0.2], [10, 0], [10.2, -0.1]]
TWO_POINTS = [[0, 0], [4, 0]]  # 2 clusters at the default scale 2 (half the only distance)


def _write(path, cloud):
    if path.suffix == ".npy":
        np.save(path, np.asarray(cloud, dtype=np.float64))
    else:
        path.write_text(json.dumps(cloud))
    return path


@pytest.mark.parametrize("suffix", [".json", ".npy"])
def test_custom_clouds_reach_the_target_and_exit_0(tmp_path, capsys, suffix):
    points = _write(tmp_path / f"points{suffix}", THREE_CLUSTERS)
    target = _write(tmp_path / f"target{suffix}", TWO_POINTS)
    out = tmp_path / "out"
    code = main(["pointcloud", "custom", "--points", str(points), "--target-points", str(target),
                 "--out", str(out), "--steps", "60", "--frame-every", "20"])
    line = capsys.readouterr().out.strip()
    assert code == 0, line
    assert "\n" not in line and "target reached" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["check"]["target"] == {"clusters": 2, "loops": 0}
    assert summary["check"]["final"] == {"clusters": 2, "loops": 0} and summary["check"]["scale"] == 2.0
    final = np.load(out / "points.npy")
    assert final.shape == (6, 2)
    gaps = np.sort(np.linalg.norm(final[:, None] - final[None], axis=2)[np.triu_indices(6, 1)])
    assert (gaps > 2.0).any() and (gaps <= 2.0).sum() >= 5  # independent: two groups at scale 2


def test_frames_gif_and_not_reached_exit_1(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "frame_00099.png").write_bytes(b"stale")
    code = main(["pointcloud", "clusters5to3", "--out", str(out), "--steps", "20", "--frame-every", "5"])
    line = capsys.readouterr().out.strip()
    assert code == 1 and "NOT reached" in line  # 20 steps cannot merge 5 clusters into 3
    frames = sorted(out.glob("frame_*.png"))
    assert [f.name for f in frames] == [f"frame_{i:05d}.png" for i in range(5)]  # steps 0, 5, 10, 15 and 20
    with Image.open(out / "deformation.gif") as gif:
        assert gif.n_frames == 5
    assert (out / "notes.txt").read_text() == "keep me"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["frames"] == [0, 5, 10, 15, 20]
    assert summary["check"]["reached"] is False and np.load(out / "points.npy").shape == (64, 2)


def test_push0_steps_are_reported(tmp_path, capsys):
    points = _write(tmp_path / "p.json", [[0, 0], [0.1, 0]])
    target = _write(tmp_path / "t.json", [[0, 0], [10, 0]])  # bottleneck0 alone gets no loss: push0 every step
    code = main(["pointcloud", "custom", "--points", str(points), "--target-points", str(target), "--out",
                 str(tmp_path / "o"), "--steps", "4", "--weights", "1,0,0,0,0,0,0"])
    assert code == 1  # 4 push0 steps move the points 0.8 apart, still one cluster at the target's scale 5
    assert "push0 on 4 step(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["push0_steps"] == 4


@pytest.mark.parametrize("case", ["missing", "wide", "nan", "weights", "preset", "out_is_a_file"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    target = _write(tmp_path / "t.json", TWO_POINTS)
    points = tmp_path / "p.json"
    extra = []
    if case == "wide":
        _write(points, [[1, 2, 3], [4, 5, 6]])
    elif case == "nan":
        points = tmp_path / "p.npy"
        np.save(points, np.array([[0.0, np.nan], [1.0, 1.0]]))
    elif case in ("weights", "preset", "out_is_a_file"):
        _write(points, THREE_CLUSTERS)
        extra = ["--weights", "1,x"] if case == "weights" else []
    preset = "spiral" if case == "preset" else "custom"
    out = target if case == "out_is_a_file" else tmp_path / "o"
    code = main(["pointcloud", preset, "--points", str(points), "--target-points", str(target),
                 "--out", str(out), "--steps", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("raytopo pointcloud: error:") and "\n" not in err and "Traceback" not in err
    expected = {"missing": str(points), "wide": "[N, 2]", "nan": "finite", "weights": "--weights",
                "preset": "preset", "out_is_a_file": "expected a folder"}[case]
    assert expected in err
    if case in ("missing", "wide", "nan"):
        assert str(points) in err
