"""Benchmark of the sampler library (raytopo.diffusion.samplers).

Run:  python bench/samplers.py [--quick] [--device cpu|cuda] [--n 200000] [--repeat 5]

1. Accuracy per cost. Data x0 ~ N(MU, S^2) has the exact denoiser D(x, sigma) = MU + S^2/(S^2 + sigma^2)(x - MU), so
   the only error left is the sampler's. Every sampler starts from sigma_max * N(0, I) on a Karras grid
   (sigma 0.002..80, rho 7) and the table gives |var(samples) - S^2| against the number of denoiser evaluations
   (NFE: heun and dpm2 use 2 * steps - 1), with the ratio to euler at the same NFE (< 1: more accurate).
   Stochastic samplers carry a statistical error of about S^2 sqrt(2 / n) on top. ddim runs at its default
   eta 0, where it is the Euler step in these variables (so its ratio is exactly 1).
2. Speed. Time per step of library DDIM (DiscreteVPDenoiser over the full 1000-step diffusion, `vp_sigmas` grid)
   against GaussianDiffusion.ddim_sample_loop respaced with "ddimN" on a small ADM UNet, interleaved; the ratio
   should be close to 1 (the network dominates), and the two outputs agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _timing import interleaved_medians, print_table  # noqa: E402

from raytopo.diffusion.denoisers import DiscreteVPDenoiser  # noqa: E402
from raytopo.diffusion.gaussian import DiffusionConfig  # noqa: E402
from raytopo.diffusion.respace import build_diffusion  # noqa: E402
from raytopo.diffusion.samplers import SAMPLERS, denoiser_calls, karras_sigmas, sample, vp_sigmas  # noqa: E402

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact E[x0 | x] for x0 ~ N(MU, S^2)."""
    sigma = sigma.reshape(-1, *([1] * (x.dim() - 1)))
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def steps_for(name: str, nfe: int) -> int | None:
    """The step count whose NFE is closest to ``nfe`` without exceeding it; None where the sampler has no such
    run (onestep is NFE 1 only; at NFE 1 every other sampler is the same single call, so only euler is shown)."""
    if name == "onestep" or nfe == 1:
        return 1 if name in ("onestep", "euler") and nfe == 1 else None
    return (nfe + 1) // 2 if name in ("heun", "dpm2") else nfe


def variance_error(name: str, steps: int, n: int, device: str) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX).to(device)
    x = torch.randn(n, generator=generator, device=device, dtype=torch.float64) * sigmas[0]
    out = sample(name, gaussian_denoiser, x, sigmas.to(torch.float64), generator=generator)
    return abs(out.var().item() - S**2)


def accuracy_table(nfes: list[int], n: int, device: str) -> None:
    rows = []
    for nfe in nfes:
        euler = variance_error("euler", nfe, n, device)
        for name in SAMPLERS:
            steps = steps_for(name, nfe)
            if steps is None:
                continue
            error = euler if name == "euler" else variance_error(name, steps, n, device)
            rows.append([nfe, name, steps, denoiser_calls(name, steps), error, error / euler])
    print_table(f"|var - S^2| of samples of N({MU}, {S}^2) with the exact denoiser (n = {n}, Karras grid)",
                ["target NFE", "sampler", "steps", "NFE", "|var error|", "ratio vs euler"], rows)
    print(f"\n(statistical error of a variance estimate: about {S**2 * (2 / n) ** 0.5:.1e})")


def null_network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A network that costs nothing (eps = 0, variance channels 0): isolates each sampler's own overhead."""
    return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], device=x.device, dtype=x.dtype)


def time_ddim(model, label: str, steps: int, batch: int, size: int, repeat: int, device: str) -> list[list]:
    """[[name, ms / step, ratio]] of the respaced GaussianDiffusion DDIM loop and of library ddim, interleaved."""
    config = DiffusionConfig(steps=1000, schedule="cosine", var_type="learned_range")
    respaced = build_diffusion(config, f"ddim{steps}")
    denoiser = DiscreteVPDenoiser(model, build_diffusion(config), clip=True)
    sigmas = vp_sigmas(build_diffusion(config).alphas_cumprod, steps).to(device=device, dtype=torch.float32)
    noise = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    x_ve = noise * (1 + sigmas[0] ** 2).sqrt()  # the VE state of the same VP prior sample

    def loop() -> torch.Tensor:
        return respaced.ddim_sample_loop(model, noise.shape, noise=noise)

    def library() -> torch.Tensor:
        with torch.no_grad():
            return sample("ddim", denoiser, x_ve, sigmas)

    difference = (loop() - library()).abs().max().item()
    baseline, candidate = interleaved_medians([loop, library], repeat=repeat)
    return [[label, "GaussianDiffusion.ddim_sample_loop", baseline / steps, 1.0, ""],
            [label, "library ddim over DiscreteVPDenoiser", candidate / steps, candidate / baseline,
             f"{difference:.1e}"]]


def speed_table(steps: int, batch: int, size: int, repeat: int, device: str) -> None:
    from raytopo.models.adm.unet import UNetConfig, UNetModel

    torch.manual_seed(0)
    unet = UNetModel(UNetConfig(image_size=size, in_channels=1, model_channels=32, num_res_blocks=1,
                                attention_resolutions=(size // 2,), learn_sigma=True)).to(device).eval()
    rows = time_ddim(unet, "ADM UNet, 32 ch", steps, batch, size, repeat, device)
    rows += time_ddim(null_network, "null network", steps, batch, size, repeat, device)
    print_table(f"DDIM, {steps} steps, batch {batch} x 1 x {size} x {size} ({device})",
                ["network", "sampler", "ms / step", "ratio vs GaussianDiffusion", "max |difference|"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer NFEs, samples and repeats (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=None, help="samples for the accuracy table (default 200000)")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (20_000 if args.quick else 200_000)
    repeat = args.repeat or (3 if args.quick else 7)
    accuracy_table([1, 8, 32] if args.quick else [1, 4, 8, 16, 32, 64, 128], n, args.device)
    speed_table(steps=5 if args.quick else 20, batch=4 if args.quick else 8, size=16 if args.quick else 32,
                repeat=repeat, device=args.device)


if __name__ == "__main__":
    main()
