"""Synthetic "garments": a FashionMNIST-like set of grey images in 10 classes (nothing is downloaded).

Topo-GEN's TopoVAE experiment trains on FashionMNIST (docs/references.md, Topo-GEN A.5), which cannot be
fetched here. This generator stands in for it: every class is a garment silhouette built from a few soft
rectangles and ellipses (a ring is an ellipse minus a smaller one) on a black background, in the order of
FashionMNIST's classes (:data:`GARMENT_CLASSES`). Each image varies its template by

* **shift** (up to 8% of the side), **scale** (0.85-1.1) and **aspect** (+-8%),
* **stroke**: the softness of every edge (how blurred the silhouette is),
* **intensity**: the brightness of the garment (and of each part, a little),

then adds Gaussian pixel noise. Pixels are ``uint8`` in 0..255. Some classes resemble each other on purpose
(pullover / coat / shirt, sandal / sneaker / ankle boot), so the set is not trivially separable: a
nearest-class-mean classifier is far above chance but not perfect (tests/data/test_garments.py).

Image ``i`` is drawn from ``np.random.default_rng((seed, i))`` and its label is ``i % 10`` (balanced classes),
so an image depends only on ``(seed, i)``, never on how many images are generated. A real FashionMNIST export
can be used instead through ``data.source: npy`` (images) with ``data.labels_path`` (labels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from raytopo.errors import InputError

GARMENT_CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
MIN_SIZE = 8
NOISE_STD = 0.04          # pixel noise, in units of the full range [0, 1]

# A part: (kind, centre u, centre v, half width, half height, sign). kind "rect" | "ellipse" | "ring";
# u runs left -> right and v top -> bottom, both in [-1, 1]; sign -1 darkens (e.g. a coat's opening).
Part = tuple[str, float, float, float, float, float]
_TEMPLATES: dict[str, Sequence[Part]] = {
    "t-shirt": (("rect", 0.0, 0.1, 0.42, 0.72, 1), ("rect", -0.52, -0.45, 0.26, 0.17, 1),
                ("rect", 0.52, -0.45, 0.26, 0.17, 1)),
    "trouser": (("rect", -0.2, 0.12, 0.15, 0.78, 1), ("rect", 0.2, 0.12, 0.15, 0.78, 1),
                ("rect", 0.0, -0.72, 0.36, 0.12, 1)),
    "pullover": (("rect", 0.0, 0.05, 0.42, 0.75, 1), ("rect", -0.62, 0.0, 0.13, 0.7, 1),
                 ("rect", 0.62, 0.0, 0.13, 0.7, 1)),
    "dress": (("rect", 0.0, -0.42, 0.22, 0.4, 1), ("ellipse", 0.0, 0.42, 0.55, 0.52, 1)),
    "coat": (("rect", 0.0, 0.05, 0.47, 0.82, 1), ("rect", -0.66, 0.05, 0.13, 0.72, 1),
             ("rect", 0.66, 0.05, 0.13, 0.72, 1), ("rect", 0.0, 0.1, 0.03, 0.75, -0.6)),
    "sandal": (("rect", 0.0, 0.42, 0.82, 0.07, 1), ("rect", -0.35, 0.2, 0.06, 0.22, 1),
               ("rect", 0.15, 0.2, 0.06, 0.22, 1), ("ring", 0.45, 0.15, 0.3, 0.25, 1)),
    "shirt": (("rect", 0.0, 0.05, 0.44, 0.78, 1), ("rect", -0.62, 0.05, 0.12, 0.68, 1),
              ("rect", 0.62, 0.05, 0.12, 0.68, 1), ("ellipse", 0.0, -0.72, 0.2, 0.12, -0.5)),
    "sneaker": (("ellipse", 0.05, 0.25, 0.8, 0.3, 1), ("rect", 0.0, 0.5, 0.85, 0.07, 1)),
    "bag": (("rect", 0.0, 0.25, 0.7, 0.5, 1), ("ring", 0.0, -0.35, 0.35, 0.32, 1)),
    "ankle boot": (("rect", -0.25, -0.2, 0.26, 0.5, 1), ("ellipse", 0.12, 0.35, 0.7, 0.28, 1),
                   ("rect", 0.05, 0.58, 0.75, 0.06, 1)),
}
_RING_WIDTH = 0.35        # a ring's hole is the ellipse scaled by (1 - _RING_WIDTH)


def garment_images(num_images: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``num_images`` garments: uint8 images ``[N, size, size]`` and int64 labels ``[N]`` (``i % 10``).

    Deterministic: image ``i`` depends only on ``(seed, i)``. Raises InputError for ``num_images < 0`` or
    ``size < 8``.
    """
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise InputError(f"garment_images num_images: expected an integer >= 0, got {num_images!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise InputError(f"garment_images size: expected an integer >= {MIN_SIZE}, got {size!r}")
    labels = np.arange(num_images, dtype=np.int64) % len(GARMENT_CLASSES)
    images = np.zeros((num_images, size, size), dtype=np.uint8)
    for index in range(num_images):
        images[index] = garment_image(int(labels[index]), size, np.random.default_rng((seed, index)))
    return images, labels


def garment_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 ``[size, size]`` image of class ``label`` with the variations drawn from ``rng``."""
    scale = rng.uniform(0.85, 1.1)
    aspect = rng.uniform(0.92, 1.08)
    shift_u, shift_v = rng.uniform(-0.08, 0.08, size=2)
    softness = rng.uniform(0.02, 0.07)            # the "stroke": edge width in [-1, 1] units
    intensity = rng.uniform(0.55, 1.0)
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(coords, coords, indexing="ij")
    u = (u - shift_u) / (scale * aspect)
    v = (v - shift_v) / (scale / aspect)
    picture = np.zeros((size, size))
    for part in _TEMPLATES[GARMENT_CLASSES[label]]:
        picture += part[5] * rng.uniform(0.85, 1.0) * _part_mask(part, u, v, softness, rng)
    picture = intensity * np.clip(picture, 0.0, 1.0)
    picture = ndimage.gaussian_filter(picture, sigma=0.5 * size / 28)
    picture += rng.normal(0.0, NOISE_STD, size=picture.shape)
    return np.clip(np.round(picture * 255.0), 0, 255).astype(np.uint8)


def _part_mask(part: Part, u: np.ndarray, v: np.ndarray, softness: float, rng: np.random.Generator) -> np.ndarray:
    """A soft (sigmoid-edged) mask of one part in [0, 1], its size jittered by +-5%."""
    kind, cu, cv, half_w, half_h, _ = part
    half_w, half_h = (half_w, half_h) * rng.uniform(0.95, 1.05, size=2)
    if kind == "rect":
        return _sigmoid((half_w - np.abs(u - cu)) / softness) * _sigmoid((half_h - np.abs(v - cv)) / softness)
    outer = _ellipse(u - cu, v - cv, half_w, half_h, softness)
    if kind == "ellipse":
        return outer
    inner = _ellipse(u - cu, v - cv, half_w * (1 - _RING_WIDTH), half_h * (1 - _RING_WIDTH), softness)
    return np.clip(outer - inner, 0.0, 1.0)


def _ellipse(du: np.ndarray, dv: np.ndarray, half_w: float, half_h: float, softness: float) -> np.ndarray:
    """Soft ellipse: the signed distance is approximated by ``(1 - r) * min(half_w, half_h)``."""
    radius = np.sqrt((du / half_w) ** 2 + (dv / half_h) ** 2)
    return _sigmoid((1.0 - radius) * min(half_w, half_h) / softness)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
