"""A picture of a learned binary tree: nodes by path, each leaf with sample thumbnails and its share of the data.

Paths are strings of '0' (left) / '1' (right) from the root ``""``. Leaves are spaced evenly from left to
right in path order; an inner node sits above the middle of its children, one row per depth. Rendered with
matplotlib's Agg backend to an RGB array (what TensorBoard and a PNG take). No torch, no Ray.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def node_positions(paths: Sequence[str]) -> dict[str, tuple[float, int]]:
    """``path -> (x, depth)``: leaves (paths with no child among ``paths``) at x = 0, 1, ... in path order, every
    other node at the mean x of its children."""
    nodes = set(paths)
    leaves = sorted((p for p in nodes if p + "0" not in nodes and p + "1" not in nodes), key=_in_order)
    positions: dict[str, tuple[float, int]] = {leaf: (float(i), len(leaf)) for i, leaf in enumerate(leaves)}
    for path in sorted(nodes - set(leaves), key=len, reverse=True):
        children = [positions[c][0] for c in (path + "0", path + "1") if c in positions]
        positions[path] = (float(np.mean(children)), len(path))
    return positions


def _in_order(path: str) -> tuple[int, ...]:
    """Left-to-right order of leaves of different depths: '0' before '1', a prefix's subtree contiguous."""
    return tuple(int(c) for c in path)


def tree_picture(paths: Sequence[str], thumbnails: Mapping[str, np.ndarray], shares: Mapping[str, float],
                 title: str = "") -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: the tree's edges and nodes; under each leaf its thumbnails (a ``[H, W]`` or
    ``[H, W, 3]`` image in [0, 1], e.g. a column of samples) and its share of the data in percent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    positions = node_positions(paths)
    leaves = [p for p in positions if p + "0" not in positions and p + "1" not in positions]
    depth = max(d for _, d in positions.values())
    figure, axes = plt.subplots(figsize=(1.3 * max(len(leaves), 2) + 0.5, 1.1 * depth + 3.2), dpi=80)
    axes.set_xlim(-0.6, len(leaves) - 0.4)
    axes.set_ylim(depth + 2.6, -0.6)
    axes.axis("off")
    for path, (x, d) in positions.items():
        if path:
            parent_x, parent_d = positions[path[:-1]]
            axes.plot([parent_x, x], [parent_d, d], color="0.5", linewidth=1.2, zorder=1)
        axes.scatter([x], [d], s=60, color="tab:blue" if path in leaves else "0.3", zorder=2)
    for path in leaves:
        x, _ = positions[path]
        axes.plot([x, x], [positions[path][1], depth + 0.35], color="0.85", linewidth=0.8, zorder=0)
        image = np.clip(np.asarray(thumbnails[path], dtype=np.float32), 0.0, 1.0)
        axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1,
                    extent=(x - 0.45, x + 0.45, depth + 2.2, depth + 0.4), zorder=3)
        axes.text(x, depth + 2.45, f"{path or 'root'}\n{100 * shares.get(path, 0.0):.0f}%", ha="center",
                  va="top", fontsize=8)
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return picture
