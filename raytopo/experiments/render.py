"""Frames of a point-cloud deformation drawn with PIL: the current cloud over the faint target, and a GIF.

Every frame uses the same view (the bounding box of all frames and the target, padded, equal aspect), so the
animation does not jump. Each frame is labelled with its step, which also keeps consecutive frames distinct
(PIL merges identical consecutive GIF frames, which would change the frame count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

FRAME_PATTERN = "frame_{:05d}.png"
FRAME_GLOB = "frame_[0-9][0-9][0-9][0-9][0-9].png"
_BACKGROUND = (255, 255, 255)
_TARGET = (255, 190, 190)
_CLOUD = (30, 90, 200)
_TEXT = (60, 60, 60)


def view_box(clouds: Sequence[np.ndarray], pad: float = 0.06) -> tuple[float, float, float]:
    """``(x_min, y_min, side)``: a square around every point of ``clouds``, padded by ``pad`` of its side."""
    every = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in clouds])
    low, high = every.min(axis=0), every.max(axis=0)
    side = float(max(high - low)) or 1.0
    centre = (low + high) / 2.0
    side *= 1.0 + 2.0 * pad
    return float(centre[0] - side / 2.0), float(centre[1] - side / 2.0), side


def draw_frame(
    cloud: np.ndarray, target: np.ndarray, box: tuple[float, float, float], label: str, size: int = 360
) -> Image.Image:
    """An RGB ``size x size`` scatter of ``cloud`` (blue) over ``target`` (faint, larger), y pointing up."""
    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for points, colour, radius in ((target, _TARGET, 4.0), (cloud, _CLOUD, 2.5)):
        for x, y in _to_pixels(points, box, size):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    draw.text((6, 4), label, fill=_TEXT)
    return image


def _to_pixels(points: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    x_min, y_min, side = box
    unit = (np.asarray(points, dtype=np.float64) - np.array([x_min, y_min])) / side
    return np.stack([unit[:, 0] * (size - 1), (1.0 - unit[:, 1]) * (size - 1)], axis=1)


def write_frames(
    frames: Sequence[tuple[int, np.ndarray]], target: np.ndarray, out: Path, gif_name: str, duration_ms: int = 80
) -> list[Path]:
    """Write ``frame_00000.png, ...`` (one per ``(step, cloud)``) and the animated GIF ``gif_name`` under ``out``.

    Frames left in ``out`` by an earlier run (``frame_NNNNN.png``) are removed first, so the folder holds exactly
    this run's frames; no other file is touched. Returns the PNG paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(FRAME_GLOB):
        stale.unlink()
    box = view_box([target, *(cloud for _, cloud in frames)])
    images, paths = [], []
    for index, (step, cloud) in enumerate(frames):
        image = draw_frame(cloud, target, box, f"step {step}")
        path = out / FRAME_PATTERN.format(index)
        image.save(path)
        images.append(image.quantize(colors=32))
        paths.append(path)
    images[0].save(out / gif_name, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return paths
