"""Distances between two sets of images that need no downloaded weights: kernel MMD^2 and sliced Wasserstein.

The Group-Diffusion reference scores samples with FID on InceptionV3 features (pytorch-fid), whose weights
would have to be downloaded; raytopo never downloads at run time. Instead, on flattened pixels:

* `mmd2_unbiased`: the unbiased estimator of the squared maximum mean discrepancy (Gretton et al. 2012, JMLR,
  eq. 3 / Lemma 6):

      MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j)

  Its expectation is exactly 0 when both sets come from the same distribution (it can be slightly negative),
  unlike FID, which is biased upwards for small sample sizes. Kernels:

  - ``rbf`` (default): k(a, b) = exp(-||a - b||^2 / (2 h^2)) with the median heuristic: h^2 is half the median of
    the squared distances between all distinct pairs of the pooled set (so k = exp(-d^2 / median d^2)). The
    Gaussian kernel is characteristic (MMD = 0 only for equal distributions); the pooled median makes the
    bandwidth, and hence the value, symmetric in the two sets and invariant to a common rescaling of pixels.
  - ``poly``: KID's cubic kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018), d the pixel count.

* `sliced_wasserstein`: POT's Monte-Carlo sliced 2-Wasserstein distance (``ot.sliced_wasserstein_distance``)
  with a fixed seed, so the projections, and the value, are reproducible.

Why pixel space: it works at the 16-64 px sizes trained here, costs milliseconds, and is *sensitive to
orientation*: a rotated or flipped image set is a different point cloud in pixel space, while features of an
Inception network trained with flip augmentation are partly invariant to exactly the transformations whose
(in)equivariance this family measures. The flip side: pixel distances reward blur less harshly than FID and are
not comparable with published FIDs; compare runs with each other, at the same sample size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from raytopo.errors import InputError

Kernel = Literal["rbf", "poly"]


def _flatten(images: Tensor | np.ndarray, name: str) -> Tensor:
    """Images [N, ...] as float64 rows [N, D]; at least two rows are needed by the unbiased estimator."""
    rows = images.detach().cpu() if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
    if rows.ndim < 2 or rows.shape[0] < 2 or rows[0].numel() < 1:
        raise InputError(f"{name}: expected at least 2 images (an array [N, ...] with N >= 2), got shape "
                         f"{list(rows.shape)}")
    rows = rows.reshape(rows.shape[0], -1).double()
    if not torch.isfinite(rows).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return rows


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """h^2 = median(||a - b||^2 over distinct pairs of the pooled set) / 2 (the median heuristic)."""
    pooled = torch.cat([x, y])
    squared = torch.cdist(pooled, pooled).pow(2)
    distinct = squared[torch.triu(torch.ones_like(squared, dtype=torch.bool), diagonal=1)]
    median = float(distinct.median())
    return median / 2 if median > 0 else 1.0


def _kernel(a: Tensor, b: Tensor, kernel: Kernel, bandwidth2: float) -> Tensor:
    if kernel == "rbf":
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth2))
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: Tensor | np.ndarray, y: Tensor | np.ndarray, kernel: Kernel = "rbf",
                  bandwidth2: float | None = None) -> float:
    """Unbiased MMD^2 between image sets ``x`` [m, ...] and ``y`` [n, ...] (Gretton et al. 2012, Lemma 6).

    ``bandwidth2`` (h^2 of the rbf kernel) defaults to the median heuristic on the pooled set; see the module
    docstring. Symmetric in x and y.
    """
    if kernel not in ("rbf", "poly"):
        raise InputError(f"kernel: expected 'rbf' or 'poly', got {kernel!r}")
    a, b = _flatten(x, "x"), _flatten(y, "y")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"x, y: images must have the same size, got {a.shape[1]} and {b.shape[1]} values each")
    h2 = median_bandwidth(a, b) if bandwidth2 is None and kernel == "rbf" else (bandwidth2 or 1.0)
    m, n = a.shape[0], b.shape[0]
    k_xx, k_yy, k_xy = _kernel(a, a, kernel, h2), _kernel(b, b, kernel, h2), _kernel(a, b, kernel, h2)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def sliced_wasserstein(x: Tensor | np.ndarray, y: Tensor | np.ndarray, projections: int = 256,
                       seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between image sets (POT, ``projections`` random directions, fixed seed)."""
    import ot

    a, b = _flatten(x, "x"), _flatten(y, "y")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"x, y: images must have the same size, got {a.shape[1]} and {b.shape[1]} values each")
    return float(ot.sliced_wasserstein_distance(a.numpy(), b.numpy(), n_projections=projections, seed=seed))


def distribution_distances(x: Tensor | np.ndarray, y: Tensor | np.ndarray, seed: int = 0) -> dict[str, float]:
    """``{"mmd": rbf MMD^2_u, "swd": sliced W2}`` between two image sets (the family's distribution metrics)."""
    return {"mmd": mmd2_unbiased(x, y), "swd": sliced_wasserstein(x, y, seed=seed)}


__all__ = ["mmd2_unbiased", "median_bandwidth", "sliced_wasserstein", "distribution_distances"]
