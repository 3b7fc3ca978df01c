"""TensorBoard after a restart: the resumed writer purges what the crashed attempt logged after its last
checkpoint, so every step appears once (read back with TensorBoard's own loader)."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from raytopo.train.logging import RunLogger


def _steps_as_tensorboard_shows_them(folder, tag: str) -> list[tuple[int, float]]:
    """What the TensorBoard UI plots: its EventAccumulator over every event file, purges applied."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_a_resumed_logger_never_repeats_steps(tmp_path):
    folder = tmp_path / "tensorboard"
    first = RunLogger(folder, total_steps=40, start_step=0, images_per_step=1, enabled=True)
    for step in (10, 20, 30):                      # crashed after step 30; the last checkpoint was at step 20
        first.scalars(step, {"loss": float(step)}, lr=1e-3)
    first.close()
    resumed = RunLogger(folder, total_steps=40, start_step=20, images_per_step=1, enabled=True)
    for step in (30, 40):
        resumed.scalars(step, {"loss": step + 0.5}, lr=1e-3)
    resumed.close()
    assert _steps_as_tensorboard_shows_them(folder, "train/loss") == [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)]
