"""Run logging on rank 0: TensorBoard scalars/images/figures and a one-line terminal progress display.

Image grids are also written as PNGs to ``<run dir>/samples/<name>_step<NNNNNNN>.png``.

The progress lines also go to ``<log dir>/progress.log``; `follow_progress` prints them on the driver when
Ray does not forward the workers' output (``log_to_driver=False``, as in ``raytopo demo``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch


PROGRESS_FILE = "progress.log"   # the progress lines, also appended here (followed by `follow_progress`)


class RunLogger:
    """TensorBoard writer plus a progress line with step, losses, throughput and ETA (rank 0 only)."""

    def __init__(self, log_dir: Path, total_steps: int, start_step: int, images_per_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._start_time = self._last_time
        self._start_step = start_step
        self.writer = None
        self.progress_path = log_dir / PROGRESS_FILE
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            # A resumed run (a restarted worker, --resume) continues at start_step + 1: purge what an earlier
            # attempt logged after its last checkpoint, so TensorBoard never shows a step twice.
            self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def scalars(self, step: int, metrics: Mapping[str, float], lr: float) -> dict[str, float]:
        """Log losses, learning rate and throughput; print the progress line. Returns the logged values."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (step - self._last_step) * self.images_per_step / elapsed
        self._last_time, self._last_step = now, step
        values = {**metrics, "lr": lr, "images_per_second": rate}
        if not self.enabled:
            return values
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()
        line = self._progress_line(step, metrics, now)
        print(line, flush=True)
        with open(self.progress_path, "a") as progress:
            progress.write(line + "\n")
        return values

    def _progress_line(self, step: int, metrics: Mapping[str, float], now: float) -> str:
        done = step - self._start_step
        per_step = (now - self._start_time) / max(done, 1)
        eta = per_step * (self.total_steps - step)
        terms = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "grad_norm")
        return f"[raytopo] step {step}/{self.total_steps}  {terms}  ETA {_duration(eta)}"

    def images(self, step: int, name: str, images: torch.Tensor, captions: list[str] | None = None) -> None:
        """A grid of images (in [-1, 1]) as ``samples/<name>``, upscaled to at least ``MIN_TILE`` px per image and,
        with captions, one row per caption (e.g. per requested count) labelled on its left; plus the persistence
        diagram of the first image (superlevel filtration)."""
        if not self.enabled:
            return
        grid = labelled_grid(images, captions) if captions else upscale(image_grid(images), images.shape[-1])
        self.writer.add_image(f"samples/{name}", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        self._save_png(grid, f"{name}_step{step:07d}.png")
        self.writer.add_figure(f"persistence_diagram/{name}", _diagram_figure(images[0]), step)
        self.writer.flush()

    def _save_png(self, grid: np.ndarray, name: str) -> None:
        """The grid also as ``<run dir>/samples/<name>`` (what a study or a person opens without TensorBoard)."""
        from PIL import Image

        folder = self.progress_path.parent.parent / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(folder / name)

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> None:
        """The family's evaluation metrics (e.g. count accuracy, F1, MAE) as ``eval/<name>`` scalars."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"eval/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def image_grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one uint8 grid image (HW for 1 channel, HWC for 3) with 1-px gaps."""
    array = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    n, channels, height, width = array.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 128, dtype=np.uint8)
    for index in range(n):
        r, c = divmod(index, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        grid[top:top + height, left:left + width] = array[index].transpose(1, 2, 0)
    return grid[..., 0] if channels == 1 else grid


MIN_TILE = 96   # pixels per image side in TensorBoard grids: a 32 px mask is upscaled 3x (nearest)


def upscale(grid: np.ndarray, tile: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a grid of ``tile``-px images so each is at least ``MIN_TILE`` px."""
    factor = max(1, -(-MIN_TILE // tile))
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def labelled_grid(images: torch.Tensor, captions: list[str], label_width: int | None = None) -> np.ndarray:
    """One row per distinct caption (in order of first appearance) holding its images, the caption written in a
    left margin wide enough for the longest one (PIL's default font, about 6 px a character); upscaled like
    `upscale`. Returns HW (grey) or HWC uint8."""
    from PIL import Image, ImageDraw

    groups: dict[str, list[int]] = {}
    for index, caption in enumerate(captions):
        groups.setdefault(caption, []).append(index)
    columns = max(len(indices) for indices in groups.values())
    # every row is laid out on `columns` tiles, so the rows are equally wide
    rows = [upscale(image_grid(images[indices], columns=columns), images.shape[-1]) for indices in groups.values()]
    body = np.concatenate(rows, axis=0)
    label_width = label_width or max(40, 6 * max(len(caption) for caption in groups) + 10)
    margin = np.full((body.shape[0], label_width) + body.shape[2:], 255, dtype=np.uint8)
    picture = Image.fromarray(np.concatenate([margin, body], axis=1))
    draw = ImageDraw.Draw(picture)
    top = 0
    for caption, row in zip(groups, rows):
        draw.text((4, top + row.shape[0] // 2 - 5), caption, fill=0)
        top += row.shape[0]
    return np.asarray(picture)


def _diagram_figure(image: torch.Tensor):
    from raytopo.eval.plots import diagram_figure
    from raytopo.topology.cubical import cubical_persistence

    diagrams = cubical_persistence(image[0].detach().float().cpu().numpy(), maxdim=1, filtration="superlevel")
    return diagram_figure(diagrams, title="first sample (superlevel)")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextlib.contextmanager
def follow_progress(log_dir: Path, prefix: str = "  ", poll_seconds: float = 2.0):
    """Print the progress lines a run appends to ``log_dir/progress.log`` while the block runs (a driver-side
    thread; only lines written during the block, each once). For runs whose storage this machine sees."""
    path = log_dir / PROGRESS_FILE
    start = path.stat().st_size if path.is_file() else 0
    stop = threading.Event()

    def follow() -> None:
        position = start
        while True:
            finished = stop.wait(poll_seconds)
            if path.is_file():
                with open(path, "rb") as progress:
                    progress.seek(position)
                    complete = progress.read().rpartition(b"\n")[0]   # never half a line being written
                for line in complete.decode(errors="replace").splitlines():
                    print(prefix + line, flush=True)
                position += len(complete) + (1 if complete else 0)
            if finished:
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
