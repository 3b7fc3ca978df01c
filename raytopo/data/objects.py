"""Synthetic "objects": RGB textured objects on a textured background, with exact masks and class labels.

It feeds a class-conditional latent diffusion model and a mask-following ControlNet without any download.

* **Geometry**: the objects of image ``i`` are exactly the Shapes mask ``shape_example(config, i)``
  (`raytopo.data.shapes`), so the masks have the distribution a TDN model trained on ``source: shapes`` with
  the same settings generates, and the image's ``counts`` are that mask's Shapes label.
* **Class**: image ``i`` is of class ``i % 4`` (:data:`OBJECT_CLASSES`, balanced); every object of an image
  wears its class's texture: a colour plus a coarse pattern that survives at 32 px: **stripes** (period
  :data:`PERIOD` px), **dots** (on a :data:`PERIOD` px lattice), **checks** (squares of half a period) or
  **plain**. Pattern orientation and phase are random per image; brightness is jittered by +-10%.
* **Background**: a low-contrast neutral grey with a smooth random gradient plus mild noise, far from every
  class colour in RGB, so a small segmenter (even a per-pixel nearest-colour rule) finds the foreground.

Edges are not blurred: the foreground is exactly the mask's white pixels. Pixels are ``uint8``. The textures of
image ``i`` are drawn from ``np.random.default_rng((seed, i, 1))``, a stream distinct from the one
``shape_example`` uses, so an image depends only on ``(seed, i)``, never on how many images are generated.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from raytopo.data.shapes import ShapesConfig, shape_example
from raytopo.errors import InputError

OBJECT_CLASSES: tuple[str, ...] = ("red_stripes", "blue_dots", "green_checks", "yellow_plain")
PERIOD = 4.0              # pattern period in pixels (stripes, dot lattice, two check squares)
SUPERSAMPLE = 4           # pattern samples per pixel side (anti-aliasing)
DOT_RADIUS = 0.3          # dot radius, in periods
NOISE_STD = 0.02          # pixel noise on the objects, in units of the full range [0, 1]
BACKGROUND_NOISE_STD = 0.025
_TEXTURE_STREAM = 1       # rng stream of the textures: default_rng((seed, i, 1))

# class -> (pattern, base colour, pattern colour), RGB in [0, 1]
_STYLES: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "red_stripes": ("stripes", (0.88, 0.16, 0.14), (0.48, 0.05, 0.07)),
    "blue_dots": ("dots", (0.14, 0.24, 0.80), (0.68, 0.82, 1.00)),
    "green_checks": ("checks", (0.16, 0.72, 0.20), (0.04, 0.34, 0.09)),
    "yellow_plain": ("plain", (0.93, 0.85, 0.18), (0.93, 0.85, 0.18)),
}


def object_example(config: ShapesConfig, index: int) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """Image ``index`` of the objects set ``config`` describes: (uint8 RGB ``[S, S, 3]``, uint8 mask ``[S, S]``
    in {0, 255} equal to ``shape_example(config, index)``'s, class label ``index % 4``, Shapes counts).

    Deterministic in ``(config.seed, index)`` alone.
    """
    mask, counts, _ = shape_example(config, index)
    label = index % len(OBJECT_CLASSES)
    rng = np.random.default_rng((config.seed, index, _TEXTURE_STREAM))
    return render_objects(mask, label, rng), mask, label, tuple(int(c) for c in counts)


def object_images(config: ShapesConfig, num_images: int) -> dict[str, np.ndarray]:
    """``num_images`` objects: ``image`` uint8 ``[N, S, S, 3]``, ``mask`` uint8 ``[N, S, S]`` in {0, 255},
    ``label`` int64 ``[N]`` (``i % 4``) and ``counts`` int64 ``[N, k]`` (the Shapes labels).

    Raises InputError for ``num_images < 0``.
    """
    if not isinstance(num_images, (int, np.integer)) or isinstance(num_images, bool) or num_images < 0:
        raise InputError(f"object_images num_images: expected an integer >= 0, got {num_images!r}")
    size, k = config.size, 2 if config.dim == "both" else 1
    out = {"image": np.zeros((num_images, size, size, 3), np.uint8),
           "mask": np.zeros((num_images, size, size), np.uint8),
           "label": np.zeros(num_images, np.int64), "counts": np.zeros((num_images, k), np.int64)}
    for index in range(num_images):
        image, mask, label, counts = object_example(config, index)
        out["image"][index], out["mask"][index], out["label"][index], out["counts"][index] = image, mask, label, counts
    return out


def render_objects(mask: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """Paint the white pixels of ``mask`` (``[S, S]``, nonzero = object) with class ``label``'s texture on a
    neutral background: uint8 RGB ``[S, S, 3]``. Every random choice comes from ``rng``."""
    if not 0 <= label < len(OBJECT_CLASSES):
        raise InputError(f"label: expected a class index in 0..{len(OBJECT_CLASSES) - 1}, got {label!r}")
    size = mask.shape[0]
    background = _background(size, rng)
    foreground = _texture(OBJECT_CLASSES[label], size, rng)
    picture = np.where(np.asarray(mask)[..., None] > 0, foreground, background)
    return np.clip(np.round(picture * 255.0), 0, 255).astype(np.uint8)


def _texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class ``name``'s texture over the whole ``[S, S, 3]`` canvas, values in [0, 1] (float)."""
    pattern_name, base, other = _STYLES[name]
    pattern = _pattern(pattern_name, size, rng)[..., None]
    colour = np.asarray(base) + pattern * (np.asarray(other) - np.asarray(base))
    colour = colour * rng.uniform(0.9, 1.1)   # brightness jitter
    return np.clip(colour + rng.normal(0.0, NOISE_STD, size=colour.shape), 0.0, 1.0)


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[S, S]`` pattern of ``kind`` in [0, 1] with a random orientation and phase (zeros for ``plain``):
    the {0, 1} pattern averaged over :data:`SUPERSAMPLE` x :data:`SUPERSAMPLE` points per pixel (anti-aliased)."""
    angle = rng.uniform(0.0, np.pi)
    phase_u, phase_v = rng.uniform(0.0, PERIOD, size=2)
    if kind == "plain":
        return np.zeros((size, size))
    fine = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    y, x = np.meshgrid(fine, fine, indexing="ij")
    u = x * np.cos(angle) + y * np.sin(angle) + phase_u
    v = -x * np.sin(angle) + y * np.cos(angle) + phase_v
    half = PERIOD / 2
    if kind == "stripes":
        on = np.mod(u, PERIOD) < half
    elif kind == "checks":
        on = np.mod(np.floor(u / half) + np.floor(v / half), 2) == 1
    else:  # dots
        on = (np.mod(u, PERIOD) - half) ** 2 + (np.mod(v, PERIOD) - half) ** 2 <= (DOT_RADIUS * PERIOD) ** 2
    return on.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Neutral grey ``[S, S, 3]`` in [0, 1]: a random level, a linear gradient, a smooth random field, a faint
    tint and pixel noise (contrast about +-0.1, saturation near zero)."""
    level = rng.uniform(0.42, 0.58)
    angle = rng.uniform(0.0, 2 * np.pi)
    y, x = (np.mgrid[:size, :size].astype(float) + 0.5) / size - 0.5
    gradient = rng.uniform(0.0, 0.12) * (x * np.cos(angle) + y * np.sin(angle))
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 6, mode="wrap")
    field *= rng.uniform(0.0, 0.04) / max(float(field.std()), 1e-8)
    grey = (level + gradient + field)[..., None]
    tint = rng.uniform(-0.015, 0.015, size=3)
    return np.clip(grey + tint + rng.normal(0.0, BACKGROUND_NOISE_STD, size=(size, size, 3)), 0.0, 1.0)
