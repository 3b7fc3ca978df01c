"""Synthetic "glyphs": images whose distribution is invariant under a grid symmetry group, while no single image is.

Each image (``uint8``, black background) holds one chiral pentomino letter (F, L, N, P or Y: the free pentominoes
with no symmetry at all, so no rotation or reflection maps one onto itself) drawn with square cells of random
size at a random position and brightness, and with probability 1/2 a random bright stroke (a 2-3 segment
polyline). The whole image is then transformed by a uniformly random element of the group. Because the element
is uniform and independent of the drawing, ``g.X`` has the same distribution as ``X`` for every ``g`` in the
group, exactly; the un-augmented drawings (``group="trivial"``) are not invariant (the letters have a fixed
handedness and orientation). This is the C4/D4-rotated-MNIST stand-in of the equivariant family (docs/references.md,
Equivariant B.5).

Image ``i`` is drawn from ``np.random.default_rng((seed, i))``: it depends only on ``(seed, i)``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from raytopo.errors import ConfigError
from raytopo.models.equivariant.groups import GroupLike, act, get_group

PENTOMINOES: dict[str, tuple[str, ...]] = {
    "F": (".##", "##.", ".#."),
    "L": ("#.", "#.", "#.", "##"),
    "N": (".#", ".#", "##", "#."),
    "P": ("##", "##", "#."),
    "Y": (".#", "##", ".#", ".#"),
}
"""The chiral letters, rows top to bottom (``#`` = filled cell)."""

MIN_SIZE = 12
STROKE_PROBABILITY = 0.5


def _letter_mask(rows: tuple[str, ...], cell: int) -> np.ndarray:
    """Boolean mask of a letter with ``cell x cell`` pixel cells."""
    grid = np.array([[c == "#" for c in row] for row in rows])
    return np.kron(grid, np.ones((cell, cell), dtype=bool))


def _draw_letter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Paste a random letter at a random position (1-pixel border) into ``canvas``, in place."""
    size = canvas.shape[0]
    low = max(1, size // 16)
    cell = int(rng.integers(low, max(low, size // 8) + 1))
    mask = _letter_mask(PENTOMINOES[rng.choice(sorted(PENTOMINOES))], cell)
    top = int(rng.integers(1, size - mask.shape[0]))
    left = int(rng.integers(1, size - mask.shape[1]))
    region = canvas[top : top + mask.shape[0], left : left + mask.shape[1]]
    region[mask] = np.maximum(region[mask], int(rng.integers(128, 256)))


def _draw_stroke(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a random 2-3 segment polyline into ``canvas``, in place (brightest value wins)."""
    size = canvas.shape[0]
    points = [tuple(int(v) for v in rng.integers(1, size - 1, size=2)) for _ in range(int(rng.integers(3, 5)))]
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).line(points, fill=int(rng.integers(128, 256)), width=max(1, size // 32))
    np.maximum(canvas, np.asarray(layer), out=canvas)


def glyph_image(index: int, size: int, group: GroupLike = "D4", seed: int = 0) -> np.ndarray:
    """Image ``index`` of the dataset (``uint8 [size, size]``); see ``glyph_images``."""
    rng = np.random.default_rng((seed, index))
    canvas = np.zeros((size, size), dtype=np.uint8)
    _draw_letter(canvas, rng)
    if rng.random() < STROKE_PROBABILITY:
        _draw_stroke(canvas, rng)
    elements = get_group(group).elements()
    g = elements[int(rng.integers(len(elements)))]
    return act(g, torch.from_numpy(canvas)).numpy().copy()


def glyph_images(num_images: int, size: int, group: GroupLike = "D4", seed: int = 0) -> np.ndarray:
    """``num_images`` glyph images, ``uint8 [N, size, size]`` in ``0..255``, distributed invariantly under ``group``.

    ``group`` is "trivial" (no augmentation), "Z2", "C4" or "D4". ``size >= 12`` (16, 28, 32, 64 ...).
    Deterministic: image ``i`` depends only on ``(seed, i)``.
    """
    if not isinstance(num_images, int) or num_images < 0:
        raise ConfigError(f"num_images: expected an integer >= 0, got {num_images!r}")
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(f"size: expected an integer >= {MIN_SIZE}, got {size!r}")
    get_group(group)  # an unknown name fails before any drawing
    images = np.zeros((num_images, size, size), dtype=np.uint8)
    for i in range(num_images):
        images[i] = glyph_image(i, size, group, seed)
    return images
