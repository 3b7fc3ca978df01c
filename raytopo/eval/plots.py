"""Figures: persistence diagrams (PNG files and TensorBoard figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from raytopo.topology.diagrams import Diagram

_COLOURS = ("tab:blue", "tab:orange")


def diagram_figure(diagrams: Sequence[Diagram], title: str = ""):
    """A matplotlib figure of persistence diagrams; essential features are drawn on a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite_values = np.concatenate(
        [np.concatenate([d.births, d.deaths[np.isfinite(d.deaths)]]) for d in diagrams] + [np.zeros(0)]
    )
    low, high = (finite_values.min(), finite_values.max()) if finite_values.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    low, high = low - pad, high + pad
    essential_level = low  # superlevel diagrams die downwards; sublevel ones upwards
    if any((d.deaths == np.inf).any() for d in diagrams):
        essential_level = high
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axes.plot([low, high], [low, high], color="grey", linewidth=1)
    axes.axhline(essential_level, color="grey", linestyle="--", linewidth=0.8)
    for diagram in diagrams:
        deaths = np.where(np.isfinite(diagram.deaths), diagram.deaths, essential_level)
        axes.scatter(diagram.births, deaths, s=12, color=_COLOURS[diagram.dim % 2], label=f"H{diagram.dim}")
    axes.set_xlabel("birth")
    axes.set_ylabel("death")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.legend(loc="lower right")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def save_diagram_plot(diagrams: Sequence[Diagram], path: str | Path, title: str = "") -> Path:
    """Write a persistence-diagram PNG and return its path."""
    import matplotlib.pyplot as plt

    figure = diagram_figure(diagrams, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Software": "raytopo topology"})   # what --overwrite may replace
    plt.close(figure)
    return path
