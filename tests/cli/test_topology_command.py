"""`raytopo topology IMAGE`: Betti numbers and features of a real PNG, JSON output, plot, one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from raytopo.cli import main


@pytest.fixture()
def two_rings_and_a_blob(tmp_path):
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[5:15, 5:15] = 255
    mask[8:12, 8:12] = 0          # ring 1
    mask[5:18, 25:40] = 255
    mask[8:14, 29:36] = 0         # ring 2
    mask[28:34, 10:20] = 255      # blob
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def test_json_report_has_the_known_betti_numbers(two_rings_and_a_blob, capsys):
    assert main(["topology", str(two_rings_and_a_blob), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["betti"] == {"components": 3, "holes": 2}
    h0 = report["features"]["H0"]
    assert h0[0]["death"] is None and h0[0]["persistence"] == float("inf")  # the essential component
    assert [f["persistence"] for f in h0[1:3]] == [1.0, 1.0]                  # two more full-contrast ones
    assert len(report["features"]["H1"]) == 2


def test_plot_is_written_to_out_never_next_to_the_image(two_rings_and_a_blob, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["topology", str(two_rings_and_a_blob), "--dim", "1", "--plot", "--out", str(out)]) == 0
    assert not two_rings_and_a_blob.with_name("mask_diagram.png").exists()
    plot = out / "mask_diagram.png"
    with Image.open(plot) as image:
        assert image.size[0] > 100
    out = capsys.readouterr().out
    assert "3 component(s), 2 hole(s)" in out and "H1" in out and "H0" not in out


@pytest.mark.parametrize("content", [None, b"not a png at all"])
def test_missing_or_corrupt_file_is_a_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    assert main(["topology", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raytopo topology: error:") and str(path) in err and "\n" not in err
