"""`follow_progress`: the driver prints each progress line a run appends while it trains, once, whole."""

from __future__ import annotations

import time

from raytopo.train.logging import PROGRESS_FILE, follow_progress


def test_follows_new_lines_once_and_never_half_a_line(tmp_path, capsys):
    path = tmp_path / PROGRESS_FILE
    path.write_text("old line from an earlier run\n")
    with follow_progress(tmp_path, prefix="> ", poll_seconds=0.01):
        with open(path, "a") as progress:
            progress.write("step 1\n")
            progress.flush()
            time.sleep(0.05)
            progress.write("step 2 (half")          # being written: not printed until complete
            progress.flush()
            time.sleep(0.05)
            progress.write(" done)\n")
    assert capsys.readouterr().out.splitlines() == ["> step 1", "> step 2 (half done)"]


def test_a_run_that_writes_nothing_prints_nothing(tmp_path, capsys):
    with follow_progress(tmp_path / "missing", poll_seconds=0.01):
        time.sleep(0.03)
    assert capsys.readouterr().out == ""
