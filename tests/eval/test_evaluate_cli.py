"""`raytopo evaluate` end to end on folders of generated masks whose true counts are known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raytopo.cli import main
from raytopo.commands.evaluate import FLAT_METRICS, evaluate_folder, flat_metrics

SIZE = 64
STEP = 16  # squares of side <= 10 on a 16-pixel grid never touch


def _squares(k: int, side: int = 8) -> np.ndarray:
    """``k`` separated filled squares: k components (4- and 8-connected), 0 holes."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for i in range(k):
        r, c = divmod(i, SIZE // STEP)
        mask[r * STEP + 2 : r * STEP + 2 + side, c * STEP + 2 : c * STEP + 2 + side] = 255
    return mask


def _rings(k: int) -> np.ndarray:
    """``k`` separated square rings: k components and k holes."""
    mask = _squares(k, side=10)
    for i in range(k):
        r, c = divmod(i, SIZE // STEP)
        mask[r * STEP + 5 : r * STEP + 9, c * STEP + 5 : c * STEP + 9] = 0
    return mask


def _save(folder: Path, name: str, pixels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _count_folder(tmp_path: Path) -> Path:
    """8 masks with 1..4 squares; 3 of them carry a wrong label (true count = drawn count except those)."""
    folder = tmp_path / "samples"
    drawn_and_labelled = [(1, 1), (1, 1), (2, 2), (2, 3), (3, 3), (3, 1), (4, 4), (4, 2)]
    for i, (drawn, label) in enumerate(drawn_and_labelled):
        _save(folder, f"{label}_{i:04d}.png", _squares(drawn))
    return folder


def test_dim0_json_gives_the_exact_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["evaluate", str(_count_folder(tmp_path)), "--dim", "0", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 8 and result["convention"] == "count"
    assert set(result["measures"]) == {"dim0_conn4", "dim0_conn8"}
    for measure in result["measures"].values():
        metrics = measure["metrics"]
        assert metrics["accuracy"] == pytest.approx(5 / 8)
        # labels 1 1 2 3 3 1 4 2 vs measured 1 1 2 2 3 3 4 4 -> |errors| 0 0 0 1 0 2 0 2
        assert metrics["mae"] == pytest.approx(5 / 8)
        # class 1: support 3, predicted 2 (both right) -> P 1, R 2/3
        assert metrics["per_class"]["1"]["precision"] == pytest.approx(1.0)
        assert metrics["per_class"]["1"]["recall"] == pytest.approx(2 / 3)
        assert measure["histogram"] == {
            "1": {"true": 3, "pred": 2}, "2": {"true": 2, "pred": 2},
            "3": {"true": 2, "pred": 2}, "4": {"true": 1, "pred": 2},
        }


def test_four_and_eight_connectivity_differ_on_diagonal_contact(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    mask[6:10, 6:10] = 255  # corner contact
    _save(tmp_path, "2_0000.png", mask)
    result = evaluate_folder(tmp_path, (0,))
    assert result["measures"]["dim0_conn4"]["metrics"]["accuracy"] == 1.0
    assert result["measures"]["dim0_conn8"]["metrics"]["accuracy"] == 0.0
    assert result["measures"]["dim0_conn8"]["histogram"] == {1: {"true": 0, "pred": 1}, 2: {"true": 1, "pred": 0}}


def test_dim1_with_rings(tmp_path: Path) -> None:
    for i, (drawn, label) in enumerate([(1, 1), (2, 2), (3, 3), (3, 2)]):
        _save(tmp_path, f"{label}_{i}.png", _rings(drawn))
    _save(tmp_path, "0_9.png", _squares(2))  # filled squares: no holes
    result = evaluate_folder(tmp_path, (1,))
    assert list(result["measures"]) == ["dim1"]
    metrics = result["measures"]["dim1"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["mae"] == pytest.approx(1 / 5)


def test_two_count_names_with_dim_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 2 rings + 4 squares: 6 components, 2 holes
    both = np.maximum(_rings(2), np.roll(_squares(4), 2 * STEP, axis=0))
    rgb = np.stack([both, both, np.zeros_like(both)], axis=-1)  # RGB file, channel 0 is read
    _save(tmp_path, "6_2_a.png", rgb)
    _save(tmp_path, "6_1_b.png", both)  # holes mislabelled
    _save(tmp_path, "2_2_c.png", _rings(2))
    code, out, err = _run(["evaluate", str(tmp_path), "--dim", "both", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["convention"] == "two_counts"
    assert set(result["measures"]) == {"dim0_conn4", "dim0_conn8", "dim1"}
    assert result["measures"]["dim0_conn4"]["metrics"]["accuracy"] == 1.0
    assert result["measures"]["dim1"]["metrics"]["accuracy"] == pytest.approx(2 / 3)
    # --dim 1 on two-count names compares holes with the second count
    assert evaluate_folder(tmp_path, (1,), "two_counts")["measures"]["dim1"]["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_count_object_names_and_explicit_classes(tmp_path: Path) -> None:
    _save(tmp_path, "1_circle_0.png", _squares(1))
    _save(tmp_path, "2_square_1.png", _squares(2))
    result = evaluate_folder(tmp_path, (0,), "count_object", classes=[1, 2, 3])
    metrics = result["measures"]["dim0_conn4"]["metrics"]
    assert list(metrics["per_class"]) == [1, 2, 3]
    assert metrics["accuracy"] == 1.0
    assert metrics["f1"] == pytest.approx(2 / 3)  # the empty class 3 scores 0


def test_table_output_and_atomic_out_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _count_folder(tmp_path)
    out_file = tmp_path / "reports" / "metrics.json"
    code, out, err = _run(["evaluate", str(folder), "--out", str(out_file), "--classes", "1,2,3,4,5"], capsys)
    assert code == 0, err
    assert "dim 0 (components, 4-connectivity)" in out and "dim 0 (components, 8-connectivity)" in out
    assert "accuracy  0.6250 ± " in out
    assert [p.name for p in out_file.parent.iterdir()] == ["metrics.json"]  # no temporary file left
    written = json.loads(out_file.read_text())
    assert written["classes"] == [1, 2, 3, 4, 5]
    assert list(written["measures"]["dim0_conn4"]["metrics"]["per_class"]) == ["1", "2", "3", "4", "5"]
    assert written == json.loads(json.dumps(evaluate_folder(folder, (0,), classes=[1, 2, 3, 4, 5])))


def test_flat_metrics_keys(tmp_path: Path) -> None:
    flat = flat_metrics(evaluate_folder(_count_folder(tmp_path), (0,)))
    expected = {"n"} | {f"{m}_{k}" for m in ("dim0_conn4", "dim0_conn8") for k in FLAT_METRICS}
    assert set(flat) == expected
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["dim0_conn4_accuracy"] == pytest.approx(5 / 8) and flat["n"] == 8.0


def test_jpeg_masks(tmp_path: Path) -> None:
    _save(tmp_path, "3_0.jpg", _squares(3))
    assert evaluate_folder(tmp_path, (0,))["measures"]["dim0_conn4"]["metrics"]["accuracy"] == 1.0


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_bad_filename_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _save(tmp_path, "1_0.png", _squares(1))
    _save(tmp_path, "sample_001.png", _squares(1))
    code, out, err = _run(["evaluate", str(tmp_path), "--dim", "0"], capsys)
    _assert_one_line_error(code, err, "sample_001.png", "<count>_<id>.<ext>")
    assert out == ""


def test_empty_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["evaluate", str(tmp_path)], capsys)
    _assert_one_line_error(code, err, str(tmp_path), "found none")
    code, _, err = _run(["evaluate", str(tmp_path / "missing")], capsys)
    _assert_one_line_error(code, err, "missing")


@pytest.mark.parametrize(
    ("files", "argv", "fragment"),
    [
        ({"2.5_a.png": b""}, ["--dim", "0"], "integer count"),
        ({"2_a.png": b""}, ["--dim", "both", "--convention", "count"], "two_counts"),
        ({"2_a.png": b"not a png"}, ["--dim", "0"], "2_a.png"),
        ({"2_a.png": b""}, ["--classes", "1,x"], "classes"),
    ],
)
def test_user_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, bytes], argv: list[str], fragment: str
) -> None:
    for name, data in files.items():
        if data:
            (tmp_path / name).write_bytes(data)
        else:
            _save(tmp_path, name, _squares(2))
    code, _, err = _run(["evaluate", str(tmp_path), *argv], capsys)
    _assert_one_line_error(code, err, fragment)


def test_sixteen_bit_images_are_scaled_and_float_images_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """16-bit masks are read as training reads them (x / 257, not clipped at 255); 32-bit floats are refused."""
    squares = _squares(1).astype(np.uint16)
    Image.fromarray(squares * 257).save(tmp_path / "1_a.png")      # 255 -> 65535: one square, counted right
    Image.fromarray(squares * 100).save(tmp_path / "1_b.png")      # 255 -> 25500 -> 99 <= 128: background
    code, out, _ = _run(["evaluate", str(tmp_path), "--json"], capsys)
    assert code == 0
    per_class = json.loads(out)["measures"]["dim0_conn4"]["metrics"]
    assert per_class["accuracy"] == 0.5                              # clipping would have counted both
    floats = tmp_path / "floats"
    floats.mkdir()
    Image.fromarray(squares.astype(np.float32)).save(floats / "1_c.tiff")
    code, _, err = _run(["evaluate", str(floats)], capsys)
    _assert_one_line_error(code, err, "8- or 16-bit")
