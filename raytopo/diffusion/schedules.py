"""Noise schedules: the per-step betas of a discrete Gaussian diffusion.

Plain functions returning float64 numpy arrays of length ``num_steps``; ``betas[t]`` is the variance
added by step ``t`` (0-based: ``t = 0`` is the first, least noisy step).

* ``linear``: Ho et al. 2020, section 4 (beta from 1e-4 to 0.02 at T = 1000), scaled by ``1000 / T`` so
  the schedule stays similar for any number of steps (improved-diffusion's convention).
* ``cosine``: Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0) with
  f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), and betas_t = 1 - alpha_bar(t+1) / alpha_bar(t) clipped to
  ``max_beta`` (0.999) to avoid the singularity at t = T.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from raytopo.errors import ConfigError

SCHEDULES = ("linear", "cosine")


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ConfigError(f"num_steps: expected a positive integer, got {num_steps!r}")


def linear_betas(num_steps: int) -> np.ndarray:
    """Ho et al. 2020 linear schedule, beta_1 = 1e-4 * 1000/T to beta_T = 0.02 * 1000/T.

    Needs ``num_steps > 20`` so that the last beta (``20 / num_steps``) stays below 1.
    """
    _check_num_steps(num_steps)
    scale = 1000.0 / num_steps
    if 0.02 * scale >= 1.0:
        raise ConfigError(
            f"num_steps: the linear schedule needs more than 20 steps (last beta 20/num_steps must be < 1),"
            f" got {num_steps}"
        )
    return np.linspace(1e-4 * scale, 0.02 * scale, num_steps, dtype=np.float64)


def betas_for_alpha_bar(
    num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous alpha_bar(u), u in [0, 1], into betas (Nichol & Dhariwal 2021, eq. 17 context).

    ``betas[i] = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``.
    """
    _check_num_steps(num_steps)
    if not 0.0 < max_beta <= 1.0:
        raise ConfigError(f"max_beta: expected a value in (0, 1], got {max_beta!r}")
    betas = np.empty(num_steps, dtype=np.float64)
    for i in range(num_steps):
        ratio = alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps)
        betas[i] = min(1.0 - ratio, max_beta)
    return betas


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """The unnormalised f(u) = cos^2((u + s) / (1 + s) * pi / 2) of Nichol & Dhariwal 2021, eq. 17."""
    return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021 cosine schedule (eq. 17), betas clipped to ``max_beta``."""
    if not s >= 0.0:
        raise ConfigError(f"s: expected a non-negative offset, got {s!r}")
    return betas_for_alpha_bar(num_steps, lambda u: cosine_alpha_bar(u, s), max_beta)


def named_betas(name: str, num_steps: int) -> np.ndarray:
    """Betas of the schedule called ``name`` ("linear" or "cosine") with ``num_steps`` steps."""
    if name == "linear":
        return linear_betas(num_steps)
    if name == "cosine":
        return cosine_betas(num_steps)
    raise ConfigError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {name!r}")


# --- timestep respacing: which steps of a process to keep (used by respace.py and by configs) ---------------

_FIELD = "timestep_respacing"


def _ddim_steps(num_steps: int, spec: str) -> list[int]:
    """The DDIM paper's striding: ``range(0, num_steps, stride)`` for the integer stride giving exactly N steps."""
    try:
        desired = int(spec[len("ddim"):])
    except ValueError:
        raise ConfigError(f"{_FIELD}: expected 'ddimN' with an integer N, got {spec!r}") from None
    counts = {}
    for stride in range(1, num_steps):
        counts.setdefault(len(range(0, num_steps, stride)), stride)
    if desired in counts:
        return list(range(0, num_steps, counts[desired]))
    below = max((c for c in counts if c < desired), default=None)
    above = min((c for c in counts if c > desired), default=None)
    nearest = ", ".join(f"ddim{c}" for c in (below, above) if c is not None)
    raise ConfigError(
        f"{_FIELD}: no integer stride gives exactly {desired} of {num_steps} steps for {spec!r}"
        + (f"; nearest possible: {nearest}" if nearest else "")
    )


def _parse_sections(spec: str | Sequence[int]) -> list[int]:
    if isinstance(spec, str):
        try:
            counts = [int(part) for part in spec.split(",")]
        except ValueError:
            raise ConfigError(
                f"{_FIELD}: expected comma-separated step counts like '250' or '10,15,20', or 'ddimN', got {spec!r}"
            ) from None
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"{_FIELD}: expected one or more positive step counts, got {spec!r}")
    return counts


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Sorted steps of a ``num_steps`` process to keep.

    ``section_counts`` is "ddimN" (one integer stride giving exactly N steps, starting at 0), or counts per
    equal section: "10,15,20" on 300 steps takes 10 evenly strided steps (rounded, ends included) from steps
    0-99, 15 from 100-199 and 20 from 200-299; "250" is one section. When ``num_steps`` does not divide
    evenly, the first ``num_steps % len(counts)`` sections get one extra step.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {num_steps!r}")
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return _ddim_steps(int(num_steps), section_counts)
    counts = _parse_sections(section_counts)
    size_per, extra = divmod(int(num_steps), len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(
                f"{_FIELD}: cannot take {count} steps from a section of {size} steps in {section_counts!r}"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulate (not k * stride) to round exactly as improved-diffusion does
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))
