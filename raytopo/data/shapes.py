"""Synthetic "Shapes" masks whose file-name labels are exact (the TDN generator is unreleased; this is ours).

Every mask is ``uint8`` ``{0, 255}`` (white shapes on black), square ``size x size``.

* ``dim="0"``: ``c`` filled circles, axis-aligned rectangles and triangles (every angle >= 45
  degrees); ``c`` = components. Shape sides scale with ``size`` (about 12-30% of it, at least 7
  pixels). Shapes never overlap or touch: their footprints are at least ``gap + 1`` pixels apart in
  Chebyshev distance, so 4- and 8-connectivity both give ``c``.
* ``dim="1"``: ``c`` hollow outlines; ``c`` = holes. An outline is the footprint minus its erosion by a
  3x3 square, i.e. a closed 4-connected ring whose inside is not even diagonally adjacent to the
  outside, so each outline has exactly one hole under the vertex-construction rule of the evaluation
  (background 8-connected; a ring closed only through a diagonal contact would count 0).
* ``dim="both"``: ``u`` components of which ``v`` are hollow (and ``u - v`` filled); the file name is
  ``u_v_xxx.png`` with ``u`` = components, ``v`` = holes (a hollow outline is also a component, so
  ``v <= u``). ``(u, v)`` is drawn uniformly from ``min_count <= v <= u <= max_count``.
* ``objects=True`` (dims ``"0"`` and ``"1"``): every shape of an image is of one kind drawn from
  :data:`SHAPE_KINDS`, and the file is ``c_kind_xxx.png``.

Each candidate shape is checked with ``scipy.ndimage`` before it is placed (a filled footprint is one
4-connected component without holes; an outline is one 4-connected ring enclosing one 8-connected
region), so digitisation artefacts of small or thin shapes are rejected, not written with a wrong label.
Shapes are placed by rejection sampling inside a 1-pixel border; when ``count`` shapes cannot be placed
after a bounded number of layouts a :class:`~raytopo.errors.ConfigError` names ``max_count`` and ``size``.

A dataset is written all-or-nothing (a temporary directory renamed into place). Image ``i`` of a
dataset is generated from ``np.random.default_rng((seed, i))``, so it does not depend on how many
images are written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from raytopo.config import Checked
from raytopo.errors import ConfigError, InputError
from raytopo.progress import progress

Dim = Literal["0", "1", "both"]
SHAPE_KINDS: tuple[str, ...] = ("circle", "rectangle", "triangle")
MIN_SIZE = 16
MIN_EXTENT = 7
BORDER = 1
TRIES_PER_SHAPE = 60
MAX_LAYOUTS = 40
_PROBE_STREAM = 2**32 - 1  # rng stream of the capacity probe, distinct from image indices
_SQUARE = np.ones((3, 3), dtype=bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ShapesConfig(Checked):
    """How to generate a Shapes dataset.

    Attributes:
        dim: ``"0"`` (components), ``"1"`` (holes) or ``"both"`` (``u_v`` names). Ints 0/1 are accepted.
        size: image side in pixels (>= 16; 32 works with a few shapes).
        max_count: largest count in a label.
        min_count: smallest count in a label (0 allows empty masks).
        objects: one shape kind per image, named in the file (``c_kind_xxx.png``); dims "0" and "1" only.
        seed: base seed; image ``i`` uses ``default_rng((seed, i))``.
        gap: background pixels kept between any two shapes (>= 1).
        line_width: outline thickness in pixels; ``None`` = ``max(1, size // 64)``.
    """

    dim: Dim
    size: int
    max_count: int
    min_count: int = 1
    objects: bool = False
    seed: int = 0
    gap: int = 2
    line_width: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", _as_dim(self.dim))
        _check_int("size", self.size, MIN_SIZE)
        _check_int("min_count", self.min_count, 0)
        _check_int("max_count", self.max_count, self.min_count)
        _check_int("seed", self.seed, 0)
        _check_int("gap", self.gap, 1)
        if self.line_width is not None:
            _check_int("line_width", self.line_width, 1)
        if not isinstance(self.objects, bool):
            raise ConfigError(f"objects: expected a bool, got {self.objects!r}")
        if self.objects and self.dim == "both":
            raise ConfigError("objects: expected False with dim='both' (there is no '<u>_<v>_<object>' name)")

    @property
    def width(self) -> int:
        """Outline thickness in pixels."""
        return self.line_width if self.line_width is not None else max(1, self.size // 64)


def generate_shape_mask(
    counts: int | Sequence[int],
    rng: np.random.Generator,
    size: int,
    dim: Dim,
    kind: str | None = None,
    gap: int = 2,
    line_width: int = 1,
) -> np.ndarray:
    """A ``size x size`` uint8 ``{0, 255}`` mask with exactly the given label.

    Args:
        counts: components (dim "0"), holes (dim "1"), or ``(components, holes)`` with holes <= components.
        rng: random generator.
        size: image side.
        dim: "0", "1" or "both".
        kind: draw only this kind from :data:`SHAPE_KINDS`; ``None`` = a random kind per shape.
        gap: background pixels kept between shapes.
        line_width: outline thickness.

    Raises:
        InputError: counts do not fit ``dim`` or a kind is unknown.
        ConfigError: the shapes cannot be placed (names max_count and size).
    """
    _check_int("size", size, MIN_SIZE)
    _check_int("gap", gap, 1)
    _check_int("line_width", line_width, 1)
    filled, hollow = _filled_and_hollow(counts, _as_dim(dim))
    if kind is not None and kind not in SHAPE_KINDS:
        raise InputError(f"kind: expected one of {', '.join(SHAPE_KINDS)}, got {kind!r}")
    hollows = [False] * filled + [True] * hollow
    for _ in range(MAX_LAYOUTS):
        order = [hollows[i] for i in rng.permutation(len(hollows))]
        mask = _try_layout(order, rng, size, kind, gap, line_width)
        if mask is not None:
            return mask.astype(np.uint8) * 255
    raise ConfigError(
        f"max_count: cannot place {len(hollows)} shapes in a {size}x{size} image (size={size}) after "
        f"{MAX_LAYOUTS} layouts; lower max_count or raise size"
    )


def sample_label(config: ShapesConfig, rng: np.random.Generator) -> tuple[tuple[int, ...], str | None]:
    """Draw the counts (and object kind when ``config.objects``) of one image."""
    lo, hi = config.min_count, config.max_count
    if config.dim == "both":
        pairs = [(u, v) for u in range(lo, hi + 1) for v in range(lo, u + 1)]
        counts: tuple[int, ...] = pairs[int(rng.integers(len(pairs)))]
    else:
        counts = (int(rng.integers(lo, hi + 1)),)
    kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))] if config.objects else None
    return counts, kind


def shape_file_name(counts: Sequence[int], kind: str | None, index: int, width: int = 4) -> str:
    """``c_xxx.png``, ``u_v_xxx.png`` or ``c_kind_xxx.png`` (TDN convention)."""
    fields = [str(int(c)) for c in counts] + ([kind] if kind is not None else [])
    return "_".join(fields + [f"{index:0{width}d}"]) + ".png"


def write_shapes_dataset(config: ShapesConfig, n: int, out_dir: str | Path) -> list[Path]:
    """Write ``n`` masks named by their labels into ``out_dir`` (missing or empty) and return their paths.

    All or nothing: one mask with ``max_count`` shapes is generated first (a count that cannot fit fails
    early with a ConfigError), the files are written into a temporary sibling directory, and that
    directory is renamed to ``out_dir`` only when every file is written.
    """
    _check_int("n", n, 1)
    out = Path(out_dir)
    _check_empty_output_dir(out)
    check_capacity(config)
    width = max(4, len(str(max(n - 1, 0))))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        names = [_write_image(config, index, width, staging) for index in progress(range(n), f"writing {out}", "mask")]
        if out.is_dir():
            out.rmdir()  # empty (checked); fails rather than deleting anything written since
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / name for name in names]


def shape_example(config: ShapesConfig, index: int) -> tuple[np.ndarray, tuple[int, ...], str | None]:
    """Image ``index`` of the dataset ``config`` describes: (uint8 mask, counts, object kind or None).

    Deterministic in (seed, index) alone, so in-memory training data equals the files written for it.
    """
    rng = np.random.default_rng((config.seed, index))
    counts, kind = sample_label(config, rng)
    return generate_shape_mask(counts, rng, config.size, config.dim, kind, config.gap, config.width), counts, kind


def _write_image(config: ShapesConfig, index: int, width: int, directory: Path) -> str:
    """Generate image ``index`` of the dataset into ``directory``; return its file name."""
    mask, counts, kind = shape_example(config, index)
    name = shape_file_name(counts, kind, index, width)
    Image.fromarray(mask).save(directory / name, format="PNG")
    return name


def _try_layout(
    hollows: list[bool], rng: np.random.Generator, size: int, kind: str | None, gap: int, line_width: int
) -> np.ndarray | None:
    """One rejection-sampling pass; None if some shape found no free spot."""
    canvas = np.zeros((size, size), dtype=bool)
    blocked = np.zeros((size + 2 * gap, size + 2 * gap), dtype=bool)
    for hollow in hollows:
        for attempt in range(TRIES_PER_SHAPE):
            shrink = 1.0 - attempt / TRIES_PER_SHAPE
            footprint = _random_footprint(rng, size, kind or SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)))], shrink)
            drawn = _outline(footprint, line_width) if hollow else footprint
            if not _is_valid(footprint, drawn, hollow):
                continue
            spot = _random_spot(rng, footprint, blocked, gap)
            if spot is not None:
                _place(canvas, blocked, footprint, drawn, spot, gap)
                break
        else:
            return None
    return canvas


def _extent_range(size: int) -> tuple[int, int]:
    low = max(MIN_EXTENT, round(size * 0.12))
    return low, max(low + 2, round(size * 0.3))


def _random_footprint(rng: np.random.Generator, size: int, kind: str, shrink: float) -> np.ndarray:
    low, high = _extent_range(size)
    high = max(low, round(low + (high - low) * shrink))
    extent = int(rng.integers(low, high + 1))
    if kind == "circle":
        return _disk(extent)
    if kind == "rectangle":
        other = int(rng.integers(low, extent + 1))
        return np.ones((extent, other) if rng.random() < 0.5 else (other, extent), dtype=bool)
    return _triangle(rng, extent)


def _disk(diameter: int) -> np.ndarray:
    centre = (diameter - 1) / 2
    y, x = np.mgrid[:diameter, :diameter]
    return (y - centre) ** 2 + (x - centre) ** 2 <= (diameter / 2) ** 2


def _triangle(rng: np.random.Generator, extent: int) -> np.ndarray:
    """A filled triangle inscribed in a circle of diameter ``extent``, every angle >= 45 degrees."""
    while True:
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=3))
        arcs = np.diff(np.append(angles, angles[0] + 2 * np.pi))
        if arcs.min() >= np.pi / 2:  # an inscribed angle is half the opposite arc
            break
    radius = (extent - 1) / 2
    vertices = np.stack([radius + radius * np.sin(angles), radius + radius * np.cos(angles)], axis=1)
    return _trim(_convex_polygon(vertices, extent))


def _convex_polygon(vertices: np.ndarray, extent: int) -> np.ndarray:
    """Pixels whose centre lies in the convex polygon (vertices as (row, col), any orientation)."""
    y, x = np.mgrid[:extent, :extent].astype(float)
    signs = []
    for (y0, x0), (y1, x1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        signs.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
    signs = np.stack(signs)
    eps = 1e-9
    return np.all(signs >= -eps, axis=0) | np.all(signs <= eps, axis=0)


def _trim(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return mask[:0, :0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _outline(footprint: np.ndarray, line_width: int) -> np.ndarray:
    """Footprint minus its erosion by a 3x3 square (``line_width`` times): a closed 4-connected ring."""
    inside = ndimage.binary_erosion(footprint, structure=_SQUARE, iterations=line_width, border_value=0)
    return footprint & ~inside


def _is_valid(footprint: np.ndarray, drawn: np.ndarray, hollow: bool) -> bool:
    """One 4-connected component, and exactly one hole if hollow (none if filled)."""
    if footprint.size == 0 or min(footprint.shape) < 3:
        return False
    _, components = ndimage.label(drawn, structure=_CROSS)
    return components == 1 and _enclosed_regions(drawn) == int(hollow)


def _enclosed_regions(drawn: np.ndarray) -> int:
    """8-connected background regions that do not reach the border of a 1-pixel-padded canvas."""
    labels, count = ndimage.label(~np.pad(drawn, 1), structure=_SQUARE)
    outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return count - np.count_nonzero(outside)


def _random_spot(
    rng: np.random.Generator, footprint: np.ndarray, blocked: np.ndarray, gap: int
) -> tuple[int, int] | None:
    """A random top-left corner inside the border where the footprint avoids ``blocked`` (padded by ``gap``)."""
    size = blocked.shape[0] - 2 * gap
    height, width = footprint.shape
    if height > size - 2 * BORDER or width > size - 2 * BORDER:
        return None
    for _ in range(8):
        row = int(rng.integers(BORDER, size - BORDER - height + 1))
        col = int(rng.integers(BORDER, size - BORDER - width + 1))
        if not np.any(blocked[row + gap : row + gap + height, col + gap : col + gap + width] & footprint):
            return row, col
    return None


def _place(
    canvas: np.ndarray, blocked: np.ndarray, footprint: np.ndarray, drawn: np.ndarray, spot: tuple[int, int], gap: int
) -> None:
    """Draw at ``spot`` and block the footprint grown by ``gap`` (``blocked`` is padded by ``gap``)."""
    row, col = spot
    height, width = footprint.shape
    canvas[row : row + height, col : col + width] |= drawn
    halo = ndimage.binary_dilation(np.pad(footprint, gap), structure=_SQUARE, iterations=gap)
    blocked[row : row + height + 2 * gap, col : col + width + 2 * gap] |= halo


def _filled_and_hollow(counts: int | Sequence[int], dim: Dim) -> tuple[int, int]:
    values = (counts,) if isinstance(counts, (int, np.integer)) else tuple(counts)
    expected = 2 if dim == "both" else 1
    if len(values) != expected or any(not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise InputError(f"counts: expected {expected} non-negative int(s) for dim={dim!r}, got {counts!r}")
    if dim == "0":
        return int(values[0]), 0
    if dim == "1":
        return 0, int(values[0])
    components, holes = (int(v) for v in values)
    if holes > components:
        raise InputError(
            f"counts: expected holes <= components for dim='both' (outlines are components), got {counts!r}"
        )
    return components - holes, holes


def check_capacity(config: ShapesConfig) -> None:
    """ConfigError when ``max_count`` shapes cannot be placed on a ``size`` image (tries one such mask)."""
    counts = (config.max_count, config.max_count) if config.dim == "both" else config.max_count
    kind = SHAPE_KINDS[0] if config.objects else None
    rng = np.random.default_rng((config.seed, _PROBE_STREAM))
    generate_shape_mask(counts, rng, config.size, config.dim, kind, config.gap, config.width)


def _check_empty_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: expected a directory for the shapes dataset, found a file")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: expected an empty or missing directory for the shapes dataset")


def _as_dim(dim: object) -> Dim:
    value = str(dim) if isinstance(dim, (str, int)) and not isinstance(dim, bool) else None
    if value not in ("0", "1", "both"):
        raise ConfigError(f"dim: expected one of '0', '1', 'both', got {dim!r}")
    return value  # type: ignore[return-value]


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: expected an int >= {minimum}, got {value!r}")
