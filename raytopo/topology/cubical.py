"""Cubical persistence of 2-D images, with the critical pixel of every birth and death.

``cubical_persistence(image)`` returns one :class:`~raytopo.topology.diagrams.Diagram` per homology
dimension ``0..maxdim`` (list index == dimension). It is a thin layer over CubicalRipser (``cripser``,
the default, about 6-7x faster) or gudhi; both give the same diagrams.

Constructions
-------------
* ``"vertex"`` (default, as the TDN reference): pixels are the *vertices* of the cubical complex
  (cripser ``computePH``, gudhi ``CubicalComplex(vertices=...)`` + ``vertices_of_persistence_pairs``).
  A sublevel set is 4-connected; its complement (the background) is 8-connected.
* ``"top"``: pixels are the *top (2-D) cells* (cripser ``computePH_T``, gudhi
  ``CubicalComplex(top_dimensional_cells=...)`` + ``cofaces_of_persistence_pairs``). A sublevel set is
  8-connected (pixels touching at a corner are connected); the background is 4-connected.

Filtrations
-----------
``"sublevel"`` adds pixels from low to high values. ``"superlevel"`` adds them from high to low (it is
the sublevel filtration of ``-image``); births and deaths are still reported in the original image values,
so ``births >= deaths`` and an essential feature dies at ``-inf``. For TDN's masks, the superlevel
filtration of ``p`` equals the reference's sublevel filtration of ``1 - p``.

Conventions (see ``diagrams.py``)
---------------------------------
* Cells are flat row-major pixel indices into ``image`` (``np.ravel_multi_index((row, col), image.shape)``),
  and ``births[i] == image.flat[birth_cells[i]]``, ``deaths[i] == image.flat[death_cells[i]]`` for every
  finite point, exactly (values are gathered from the image).
* Essential features (one dim-0 class per non-empty image; 2-D images have no essential dim-1 class) have
  death ``+inf`` (sublevel) or ``-inf`` (superlevel) and death cell ``-1``.
* **Zero-persistence pairs are dropped** (finite points with ``birth == death``). They carry no
  topology, are not part of the TDN loss or evaluation (both keep ``persistence > 0``), and which of them
  a library emits depends on how it breaks ties (gudhi with ``min_persistence=-1`` emits thousands on
  tie-heavy images, cripser 0.0.37 none). After this rule both backends return the same multiset of
  points. With tied values the *cells* may differ between backends (any pixel of the tied value is a
  valid critical cell); the values never do.

Library quirks handled here
---------------------------
* cripser rows are ``[dim, birth, death, x1, y1, z1, x2, y2, z2]`` with ``x`` = row and ``y`` = column of
  a 2-D array; an essential death is ``DBL_MAX`` with death coordinates ``-1``. cripser needs float64.
* cripser 0.0.37's ``computePH`` (vertex) builds no edges on an image one pixel high or wide (it reports
  every pixel as an essential component). On such an image the vertex and top constructions are the same
  path graph, so ``computePH_T`` is used instead.
* gudhi reports cells as indices of the input in column-major (Fortran) order, whatever the array's
  memory order: they are unravelled with ``order="F"`` (docs/references.md, Design 9).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from raytopo.errors import ConfigError, InputError
from raytopo.topology.diagrams import Diagram

Filtration = Literal["sublevel", "superlevel"]
Construction = Literal["vertex", "top"]
Backend = Literal["cripser", "gudhi"]

MAX_SUPPORTED_DIM = 1


def cubical_persistence(
    image: np.ndarray,
    maxdim: int = 1,
    filtration: Filtration = "sublevel",
    construction: Construction = "vertex",
    backend: Backend = "cripser",
) -> list[Diagram]:
    """Persistence diagrams of dimensions ``0..maxdim`` of a 2-D image, with critical pixels.

    Args:
        image: 2-D array ``[H, W]`` of finite real values (any real or bool dtype).
        maxdim: highest homology dimension, 0 or 1.
        filtration: ``"sublevel"`` (low values first) or ``"superlevel"`` (high values first).
        construction: ``"vertex"`` (pixels are vertices; 4-connected sublevel sets; the TDN reference)
            or ``"top"`` (pixels are squares; 8-connected sublevel sets).
        backend: ``"cripser"`` (default, fastest) or ``"gudhi"``.

    Returns:
        ``[Diagram(dim=0), ..., Diagram(dim=maxdim)]`` following the module's conventions.

    Raises:
        InputError: the image is not a non-empty 2-D array of finite real values, or maxdim is not 0 or 1.
        ConfigError: an unknown filtration, construction or backend name.
    """
    _check_options(maxdim, filtration, construction, backend)
    values = _validated_image(image, "image")
    return _persistence_of_valid_image(values, maxdim, filtration, construction, backend)


def cubical_persistence_batch(
    images: np.ndarray,
    maxdim: int = 1,
    filtration: Filtration = "sublevel",
    construction: Construction = "vertex",
    backend: Backend = "cripser",
) -> list[list[Diagram]]:
    """``cubical_persistence`` of every image of a batch ``[B, H, W]``; one list of diagrams per image."""
    _check_options(maxdim, filtration, construction, backend)
    batch = np.asarray(images)
    if batch.ndim != 3:
        raise InputError(f"images: expected a batch array of shape [B, H, W], got shape {batch.shape}")
    return [
        _persistence_of_valid_image(
            _validated_image(batch[i], f"images[{i}]"), maxdim, filtration, construction, backend
        )
        for i in range(batch.shape[0])
    ]


def _persistence_of_valid_image(
    values: np.ndarray, maxdim: int, filtration: str, construction: str, backend: str
) -> list[Diagram]:
    """Diagrams of a validated float64 image; the filtered array is ``-values`` for superlevel."""
    filtered = values if filtration == "sublevel" else -values
    compute = _cripser_pairs if backend == "cripser" else _gudhi_pairs
    dims, birth_cells, death_cells = compute(filtered, maxdim, construction)
    essential_death = np.inf if filtration == "sublevel" else -np.inf
    return _diagrams_from_cells(values, dims, birth_cells, death_cells, maxdim, essential_death)


def _check_options(maxdim: int, filtration: str, construction: str, backend: str) -> None:
    is_integer = isinstance(maxdim, (int, np.integer)) and not isinstance(maxdim, bool)
    if not is_integer or not 0 <= maxdim <= MAX_SUPPORTED_DIM:
        raise InputError(f"maxdim: expected 0 or 1 for a 2-D image, got {maxdim!r}")
    for name, value, allowed in (
        ("filtration", filtration, get_args(Filtration)),
        ("construction", construction, get_args(Construction)),
        ("backend", backend, get_args(Backend)),
    ):
        if value not in allowed:
            raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


def _validated_image(image: np.ndarray, name: str) -> np.ndarray:
    """The image as a C-contiguous float64 array, or InputError naming ``name``."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array [H, W], got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name}: expected a non-empty 2-D array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise InputError(f"{name}: expected real numeric values, got dtype {array.dtype}")
    values = np.ascontiguousarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{name}: expected finite values, found NaN or inf")
    return values


def _cripser_pairs(
    filtered: np.ndarray, maxdim: int, construction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dims, flat birth cells, flat death cells or -1) from CubicalRipser."""
    import cripser

    one_pixel_wide = min(filtered.shape) == 1  # cripser's computePH builds no edges there; see module doc
    compute = cripser.computePH if construction == "vertex" and not one_pixel_wide else cripser.computePH_T
    rows = np.asarray(compute(filtered, maxdim=maxdim))
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    coords = rows[:, 3:9].astype(np.int64)
    width = filtered.shape[1]
    birth_cells = coords[:, 0] * width + coords[:, 1]
    death_cells = np.where(coords[:, 3] < 0, -1, coords[:, 3] * width + coords[:, 4])
    return rows[:, 0].astype(np.int64), birth_cells, death_cells


def _gudhi_pairs(
    filtered: np.ndarray, maxdim: int, construction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dims, flat row-major birth cells, death cells or -1) from gudhi's cubical complex."""
    import gudhi

    if construction == "vertex":
        complex_ = gudhi.CubicalComplex(vertices=filtered)
        complex_.compute_persistence()
        regular, essential = complex_.vertices_of_persistence_pairs()
    else:
        complex_ = gudhi.CubicalComplex(top_dimensional_cells=filtered)
        complex_.compute_persistence()
        regular, essential = complex_.cofaces_of_persistence_pairs()
    dims, births, deaths = [], [], []
    for dim in range(maxdim + 1):
        pairs = _indices_of_dim(regular, dim).reshape(-1, 2)
        alive = _indices_of_dim(essential, dim).reshape(-1)
        dims.append(np.full(len(pairs) + len(alive), dim, dtype=np.int64))
        births.extend([pairs[:, 0], alive])
        deaths.extend([pairs[:, 1], np.full(len(alive), -1, dtype=np.int64)])
    fortran_births = np.concatenate(births)
    fortran_deaths = np.concatenate(deaths)
    row_major_deaths = _fortran_to_row_major(np.maximum(fortran_deaths, 0), filtered.shape)
    return (
        np.concatenate(dims),
        _fortran_to_row_major(fortran_births, filtered.shape),
        np.where(fortran_deaths < 0, -1, row_major_deaths),
    )


def _indices_of_dim(per_dim: list, dim: int) -> np.ndarray:
    """gudhi's index array for ``dim`` (its lists stop at the highest dimension that has points)."""
    return np.asarray(per_dim[dim] if dim < len(per_dim) else [], dtype=np.int64)


def _fortran_to_row_major(flat_fortran: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Convert gudhi's column-major flat indices to row-major ones for an array of ``shape``."""
    rows, cols = np.unravel_index(flat_fortran, shape, order="F")
    return np.ravel_multi_index((rows, cols), shape).astype(np.int64)


def _diagrams_from_cells(
    values: np.ndarray,
    dims: np.ndarray,
    birth_cells: np.ndarray,
    death_cells: np.ndarray,
    maxdim: int,
    essential_death: float,
) -> list[Diagram]:
    """Gather births/deaths from the image at the cells, drop zero-persistence pairs, split by dim."""
    flat = values.reshape(-1)
    births = flat[birth_cells]
    is_essential = death_cells < 0
    deaths = np.where(is_essential, essential_death, flat[np.maximum(death_cells, 0)])
    keep = is_essential | (births != deaths)
    return [
        Diagram(dim, births[sel], deaths[sel], birth_cells[sel], death_cells[sel])
        for dim in range(maxdim + 1)
        for sel in [keep & (dims == dim)]
    ]
