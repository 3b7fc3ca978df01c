"""Timestep respacing: sample (or train) with a subset of the steps of a base diffusion.

A respaced process keeps steps S = {s_0 < s_1 < ...} of the base process and defines new betas so that
its cumulative alphas equal the base ones at the kept steps: beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}
(iDDPM section 4, "Improving sampling speed"). The model still sees original timesteps: step index k maps
to s_k through ``GaussianDiffusion.model_timesteps``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from raytopo.diffusion.gaussian import DiffusionConfig, GaussianDiffusion, LossType, MeanType, VarType
from raytopo.diffusion.schedules import named_betas
from raytopo.errors import ConfigError

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


def respaced_betas(betas: Sequence[float] | np.ndarray, use_timesteps: Iterable[int]) -> tuple[np.ndarray, list[int]]:
    """(new betas, kept steps in order) so the new cumulative alphas equal the base ones at the kept steps."""
    base = np.asarray(betas, dtype=np.float64)
    kept = sorted({int(s) for s in use_timesteps})
    if not kept or kept[0] < 0 or kept[-1] >= base.shape[0]:
        raise ConfigError(f"use_timesteps: expected steps in [0, {base.shape[0]}), got {kept[:3]}...{kept[-3:]}")
    alphas_cumprod = np.cumprod(1.0 - base)[kept]
    previous = np.append(1.0, alphas_cumprod[:-1])
    return 1.0 - alphas_cumprod / previous, kept


class SpacedDiffusion(GaussianDiffusion):
    """A ``GaussianDiffusion`` over the kept steps of a base process; the model sees the original timesteps."""

    def __init__(
        self,
        use_timesteps: Iterable[int],
        betas: Sequence[float] | np.ndarray,
        mean_type: MeanType = "epsilon",
        var_type: VarType = "fixed_large",
        loss_type: LossType = "mse",
        rescale_timesteps: bool = False,
    ) -> None:
        new_betas, kept = respaced_betas(betas, use_timesteps)
        super().__init__(
            new_betas,
            mean_type,
            var_type,
            loss_type,
            rescale_timesteps,
            timestep_map=kept,
            original_num_steps=len(betas),
        )


def build_diffusion(config: DiffusionConfig, respacing: str = "") -> GaussianDiffusion:
    """The diffusion described by ``config``; ``respacing`` (e.g. "ddim50" at sampling time) overrides
    ``config.timestep_respacing``. With neither, all ``config.steps`` steps are used."""
    config.validate()
    betas = named_betas(config.schedule, config.steps)
    args = (config.mean_type, config.var_type, config.loss, config.rescale_timesteps)
    spec = respacing or config.timestep_respacing
    if not spec:
        return GaussianDiffusion(betas, *args)
    return SpacedDiffusion(space_timesteps(config.steps, spec), betas, *args)
