"""Tiny timing helpers shared by the benchmarks: medians of wall-clock time, printed as tables.

Absolute times on a shared 2-core machine drift between runs; the benchmarks therefore always print a
ratio against a baseline measured in the same run, interleaved with the candidate.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def median_ms(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def interleaved_medians(fns: Sequence[Callable[[], object]], repeat: int = 7, warmup: int = 1) -> list[float]:
    """Medians (ms) of several functions timed round-robin (rotating order), so drift hits them all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for round_ in range(repeat):
        # rotate the order each round so no candidate always runs right after the same neighbour
        # (e.g. after gudhi has flushed the caches)
        for index in [(round_ + k) % len(fns) for k in range(len(fns))]:
            start = time.perf_counter()
            fns[index]()
            samples[index].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(bucket) for bucket in samples]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (so figures paste straight into notes)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
