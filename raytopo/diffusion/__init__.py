"""Gaussian diffusion (improved-diffusion semantics): schedules, training losses, DDPM/DDIM sampling,
timestep respacing and timestep importance sampling; the sampler library over denoisers (samplers.py,
denoisers.py). numpy/torch only; never imports ray."""

from raytopo.diffusion.gaussian import (
    DiffusionConfig,
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from raytopo.diffusion.respace import SpacedDiffusion, build_diffusion, space_timesteps
from raytopo.diffusion.samplers import SAMPLERS, Denoiser, karras_sigmas, sample, vp_sigmas
from raytopo.diffusion.denoisers import DiscreteVPDenoiser
from raytopo.diffusion.schedules import cosine_betas, linear_betas, named_betas
from raytopo.diffusion.timestep_sampler import (
    LossSecondMomentSampler,
    TimestepSampler,
    UniformSampler,
    named_sampler,
)

__all__ = [
    "SAMPLERS",
    "DiffusionConfig",
    "Denoiser",
    "DiscreteVPDenoiser",
    "GaussianDiffusion",
    "LossSecondMomentSampler",
    "SpacedDiffusion",
    "TimestepSampler",
    "UniformSampler",
    "build_diffusion",
    "cosine_betas",
    "discretized_gaussian_log_likelihood",
    "karras_sigmas",
    "linear_betas",
    "mean_flat",
    "named_betas",
    "named_sampler",
    "normal_kl",
    "sample",
    "space_timesteps",
    "vp_sigmas",
]
