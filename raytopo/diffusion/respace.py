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
from raytopo.diffusion.schedules import named_betas, space_timesteps
from raytopo.errors import ConfigError

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
