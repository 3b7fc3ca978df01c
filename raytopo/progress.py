"""One progress-bar policy for every long loop (sampling, evaluation, data generation, packing, data checks).

A tqdm bar on an interactive terminal (stderr), nothing when the output is a file or a pipe (``disable=None``),
so logs stay free of carriage returns and colour codes.
"""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, unit: str = "image", total: int | None = None) -> Iterable[T]:
    """``items`` wrapped in a terminal-only tqdm bar."""
    from tqdm import tqdm

    return tqdm(items, desc=description, unit=unit, total=total, disable=None, leave=False)
